"""A learn cycle's inputs by content: each bind source (a file, or a folder packed as a
deterministic tar) is named by its sha256. The service puts each content in Ray's object store
once; a node keeps what it fetched in a cache keyed by that sha256, so nothing crosses the
network twice. Kept free of Ray: the service side and the node side both use it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

FILE, TREE = "file", "tree"
MAX_TREE_ENTRIES = 100_000


@dataclass(frozen=True)
class Content:
    """One bind source: where it lies on the service's host, what it is, its sha256."""

    source: str
    kind: str  # FILE or TREE
    sha256: str
    size: int


def pack(source: Path) -> tuple[str, bytes]:
    """(kind, bytes) of a source: a file as it is, a folder as a tar with sorted names, zero
    times and owners, so the same tree always packs to the same bytes."""
    if source.is_file():
        return FILE, source.read_bytes()
    if not source.is_dir():
        raise ValueError(f"bind source {source} is neither a file nor a folder")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = sorted(p for p in source.rglob("*"))
        if len(entries) > MAX_TREE_ENTRIES:
            raise ValueError(f"bind source {source} holds more than {MAX_TREE_ENTRIES} entries")
        for path in entries:
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue  # only plain files and folders travel
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(source)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_dir():
                tar.addfile(info)
            else:
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
    return TREE, buffer.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class NodeCache:
    """<root>/<sha256> (a file) or <root>/<sha256>.d (a folder): each content written once,
    verified against its name, readable by any sandbox uid (0644/0755), replaced atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, content: Content) -> Path:
        return self.root / (content.sha256 + (".d" if content.kind == TREE else ""))

    def has(self, content: Content) -> bool:
        return self.path(content).exists()

    def store(self, content: Content, data: bytes) -> Path:
        if digest(data) != content.sha256:
            raise ValueError(f"content of {content.source} does not match its sha256 {content.sha256}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        final = self.path(content)
        if final.exists():
            return final
        partial = self.root / f".{content.sha256}.{os.getpid()}.partial"
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
        if content.kind == FILE:
            partial.write_bytes(data)
            partial.chmod(0o644)
        else:
            partial.mkdir(mode=0o755)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
                tar.extractall(partial, filter="data")  # no links out, no devices, no owners
            for path in [partial, *partial.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.rename(partial, final)
        except OSError:  # another worker stored it first
            shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(
                missing_ok=True
            )
        return final
