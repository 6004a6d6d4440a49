"""A model's program as uploaded: one .py file, or a .tar.gz or .zip of files, unpacked into a
fresh directory named by the upload's sha256. Members are written one by one, never with
extractall: only plain files and directories with relative names (no '..', no absolute paths),
no links or devices, a bounded count and unpacked size. Files end 0644 (0755 if executable),
directories 0755, so a sandbox user reads them. A refusal leaves nothing on disk."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import secrets
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import BadRequest

DEFAULT_MAX_MEMBERS = 1000
DEFAULT_MAX_UNPACKED_BYTES = 64 << 20
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024
MAX_DEPTH = 32
DEFAULT_SINGLE_FILE = "main.py"
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 1 << 20


class BadProgram(BadRequest):
    """An upload that is not an acceptable program; `member` names the archive entry to blame."""

    code = "bad_program"

    def __init__(self, message: str, *, member: str | None = None) -> None:
        super().__init__(message, details={"member": member} if member is not None else None)
        self.member = member


@dataclass(frozen=True)
class Program:
    sha256: str  # of the uploaded bytes
    root: Path  # STORE/<sha256>, read-only for everyone but its owner
    kind: str  # "py", "tar.gz" or "zip"
    files: tuple[str, ...]  # relative paths, sorted
    size_bytes: int  # uploaded
    unpacked_bytes: int


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS

    @classmethod
    def from_settings(cls, settings) -> Limits:
        """PETALS_PROGRAM_MAX_BYTES and PETALS_PROGRAM_MAX_UNPACKED_BYTES (server.config.Settings)."""
        return cls(
            max_bytes=settings.program_max_bytes, max_unpacked_bytes=settings.program_max_unpacked_bytes
        )


def _show(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:77] + "...")


def safe_member_path(name: str) -> PurePosixPath:
    """`name` as a relative path that stays inside the unpack directory, or BadProgram."""
    if not name or "\0" in name:
        raise BadProgram("an archive member has an empty name or a NUL byte in it", member=name)
    if "\\" in name:
        raise BadProgram(f"member {_show(name)}: backslashes are not allowed in names", member=name)
    if name.startswith("/"):
        raise BadProgram(
            f"member {_show(name)} has an absolute path; only relative paths are allowed", member=name
        )
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise BadProgram(
            f"member {_show(name)} has a '..' component; it would leave the program's directory", member=name
        )
    if not parts:
        raise BadProgram(f"member {_show(name)} names no file", member=name)
    if len(name.encode()) > MAX_PATH_BYTES or len(parts) > MAX_DEPTH:
        raise BadProgram(f"member {_show(name)}: path too long or too deep", member=name)
    if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        raise BadProgram(f"member {_show(name)}: a name is over {MAX_NAME_BYTES} bytes", member=name)
    return PurePosixPath(*parts)


class _Unpacker:
    """Writes members under `root` (a fresh, private directory), counting and bounding them."""

    def __init__(self, root: Path, limits: Limits) -> None:
        self.root = root
        self.limits = limits
        self.members = 0
        self.unpacked = 0
        self.files: dict[PurePosixPath, bool] = {}  # path -> executable
        self.directories: set[PurePosixPath] = set()

    def _count(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise BadProgram(f"the archive holds over {self.limits.max_members} members", member=name)

    def _claim(self, path: PurePosixPath, name: str, *, directory: bool) -> None:
        if path in self.files or (not directory and path in self.directories):
            raise BadProgram(
                f"member {_show(name)} appears twice (or as both a file and a directory)", member=name
            )
        for parent in path.parents:
            if parent in self.files:
                raise BadProgram(
                    f"member {_show(name)} lies under {str(parent)!r}, which is a file", member=name
                )

    def directory(self, name: str) -> None:
        self._count(name)
        path = safe_member_path(name)
        self._claim(path, name, directory=True)
        self._make_parents(path / "_")
        self.directories.add(path)

    def _make_parents(self, path: PurePosixPath) -> None:
        for parent in reversed(path.parents):
            if parent == PurePosixPath(".") or parent in self.directories:
                continue
            os.mkdir(self.root / parent, 0o755)
            self.directories.add(parent)

    def file(self, name: str, declared_size: int, source: io.BufferedIOBase, executable: bool) -> None:
        self._count(name)
        path = safe_member_path(name)
        self._claim(path, name, directory=False)
        self._check_room(name, declared_size)
        self._make_parents(path)
        fd = os.open(
            self.root / path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            written = 0
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                # Declared sizes can lie (or be absent): the bytes really written are bounded too.
                self._check_room(name, written)
                os.write(fd, chunk)
        finally:
            os.close(fd)
        self.unpacked += written
        self.files[path] = executable

    def _check_room(self, name: str, size: int) -> None:
        if self.unpacked + size > self.limits.max_unpacked_bytes:
            raise BadProgram(
                f"member {_show(name)} takes the program over {self.limits.max_unpacked_bytes} unpacked bytes",
                member=name,
            )

    def finish(self) -> None:
        if not any(path.suffix == ".py" for path in self.files):
            raise BadProgram("the program holds no .py file")
        for path, executable in self.files.items():
            os.chmod(self.root / path, 0o755 if executable else 0o644)
        for path in self.directories:
            os.chmod(self.root / path, 0o755)
        os.chmod(self.root, 0o755)


class _BoundedReader(io.RawIOBase):
    """A decompressed stream that refuses to yield more than `limit` bytes (a gzip bomb's tar
    headers and padding are never members, so they must be bounded here)."""

    def __init__(self, inner: io.BufferedIOBase, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._inner.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise BadProgram("the archive decompresses to more than the program's unpacked limit")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def _unpack_tar_gz(data: bytes, unpacker: _Unpacker) -> None:
    limits = unpacker.limits
    # Headers take 512 bytes a member (plus long names); allow for them beyond the file data.
    stream = _BoundedReader(
        gzip.GzipFile(fileobj=io.BytesIO(data)), limits.max_unpacked_bytes + 4096 * (limits.max_members + 2)
    )
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as archive:
            for member in archive:
                if member.isdir():
                    unpacker.directory(member.name)
                elif member.isreg():
                    source = archive.extractfile(member)
                    unpacker.file(member.name, member.size, source, bool(member.mode & 0o111))
                else:
                    raise BadProgram(
                        f"member {_show(member.name)} is {_tar_kind(member)}; only files and directories are allowed",
                        member=member.name,
                    )
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BadProgram(f"not a readable .tar.gz: {exc}") from None


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {_show(member.linkname)})"
    if member.islnk():
        return f"a hard link (to {_show(member.linkname)})"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    return f"of tar type {member.type!r}"


def _zip_kind(info: zipfile.ZipInfo) -> str | None:
    """What a zip entry is when it is neither a plain file nor a directory (from its Unix mode)."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind in (0, stat.S_IFREG, stat.S_IFDIR):
        return None
    if kind == stat.S_IFLNK:
        return "a symbolic link"
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        return "a device file"
    if kind == stat.S_IFIFO:
        return "a FIFO"
    return "a special file"


def _unpack_zip(data: bytes, unpacker: _Unpacker) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadProgram(f"not a readable .zip: {exc}") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > unpacker.limits.max_members:
            raise BadProgram(
                f"the archive holds {len(entries)} members; at most {unpacker.limits.max_members} are accepted"
            )
        declared = sum(info.file_size for info in entries)
        if declared > unpacker.limits.max_unpacked_bytes:
            raise BadProgram(
                f"the archive declares {declared} unpacked bytes; at most {unpacker.limits.max_unpacked_bytes} are accepted"
            )
        for info in entries:
            kind = _zip_kind(info)
            if kind is not None:
                raise BadProgram(
                    f"member {_show(info.filename)} is {kind}; only files and directories are allowed",
                    member=info.filename,
                )
            if info.flag_bits & 0x1:
                raise BadProgram(f"member {_show(info.filename)} is encrypted", member=info.filename)
            if info.is_dir():
                unpacker.directory(info.filename)
                continue
            try:
                with archive.open(info) as source:
                    unpacker.file(
                        info.filename, info.file_size, source, bool((info.external_attr >> 16) & 0o111)
                    )
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as exc:
                raise BadProgram(
                    f"member {_show(info.filename)} cannot be read: {exc}", member=info.filename
                ) from None


def _unpack_single(data: bytes, filename: str, unpacker: _Unpacker) -> None:
    name = filename or DEFAULT_SINGLE_FILE
    if "/" in name or not name.endswith(".py"):
        raise BadProgram(f"a single-file program must be a name ending in .py with no '/', got {_show(name)}")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadProgram("a single-file program must be UTF-8 Python source (or a .tar.gz or .zip)") from None
    if b"\0" in data:
        raise BadProgram("a single-file program must be Python source; it holds NUL bytes")
    unpacker.file(name, len(data), io.BytesIO(data), executable=False)


def kind_of(data: bytes) -> str:
    """The upload's kind from its first bytes, not from a name the client chose."""
    if data.startswith(_GZIP_MAGIC):
        return "tar.gz"
    if data.startswith(_ZIP_MAGIC):
        return "zip"
    return "py"


def unpack_program(
    data: bytes, store: Path, limits: Limits, *, filename: str = DEFAULT_SINGLE_FILE
) -> Program:
    """Unpacks `data` into `store`/<sha256> and describes it. The same bytes twice are the same
    program (the existing directory is kept). `filename` names a single-file program."""
    if len(data) > limits.max_bytes:
        raise BadProgram(f"the program is {len(data)} bytes; at most {limits.max_bytes} are accepted")
    if not data:
        raise BadProgram("the program is empty")
    digest = hashlib.sha256(data).hexdigest()
    kind = kind_of(data)
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    os.chmod(store, 0o755)
    final = store / digest
    staging = store / f".unpack-{secrets.token_hex(8)}"
    os.mkdir(staging, 0o700)  # private until every member is in and checked
    try:
        unpacker = _Unpacker(staging, limits)
        if kind == "tar.gz":
            _unpack_tar_gz(data, unpacker)
        elif kind == "zip":
            _unpack_zip(data, unpacker)
        else:
            _unpack_single(data, filename, unpacker)
        unpacker.finish()
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(staging)  # the same bytes were unpacked before: keep that copy
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Program(
        sha256=digest,
        root=final,
        kind=kind,
        files=tuple(sorted(str(path) for path in unpacker.files)),
        size_bytes=len(data),
        unpacked_bytes=unpacker.unpacked,
    )
