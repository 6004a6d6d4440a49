"""Uploaded programs are unpacked safely: a .py file, a .tar.gz or a .zip becomes a directory
named by the upload's sha256 with readable modes; every hostile archive kind is refused with
a BadProgram naming its member, and a refusal leaves nothing on disk."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile

import pytest

from server.artifacts.programs import BadProgram, Limits, unpack_program

LIMITS = Limits(max_bytes=1 << 20, max_unpacked_bytes=1 << 20, max_members=50)
TRAIN = b"import wondercraft_learn\nprint('training')\n"


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def zip_of(*entries: tuple[str | zipfile.ZipInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


def store_is_empty(store) -> bool:
    return not store.exists() or not list(store.iterdir())


def refused(tmp_path, data: bytes, match: str, limits: Limits = LIMITS, **kwargs) -> BadProgram:
    store = tmp_path / "programs"
    with pytest.raises(BadProgram, match=match) as caught:
        unpack_program(data, store, limits, **kwargs)
    assert caught.value.status == 400 and caught.value.code == "bad_program"
    assert store_is_empty(store), list(store.iterdir())
    return caught.value


# ---- accepted ----


def test_a_single_py_file_becomes_a_readable_program(tmp_path):
    program = unpack_program(TRAIN, tmp_path / "programs", LIMITS, filename="train.py")
    assert program.sha256 == hashlib.sha256(TRAIN).hexdigest()
    assert program.root == tmp_path / "programs" / program.sha256
    assert program.kind == "py" and program.files == ("train.py",)
    assert (program.root / "train.py").read_bytes() == TRAIN
    assert stat.S_IMODE(os.stat(program.root).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(program.root / "train.py").st_mode) == 0o644


def test_a_tar_gz_is_unpacked_with_sandbox_readable_modes(tmp_path):
    data = tar_gz(
        (member("pkg", tarfile.DIRTYPE, 0o700), None),
        (member("pkg/model.py", mode=0o600), b"x = 1\n"),
        (member("train.py", mode=0o700), TRAIN),
        (member("nested/deeper/conf.json"), b"{}"),
    )
    program = unpack_program(data, tmp_path / "programs", LIMITS)
    assert program.kind == "tar.gz"
    assert program.files == ("nested/deeper/conf.json", "pkg/model.py", "train.py")
    assert program.unpacked_bytes == len(TRAIN) + 6 + 2
    modes = {
        p.relative_to(program.root).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in program.root.rglob("*")
    }
    assert modes == {
        "pkg": 0o755,
        "pkg/model.py": 0o644,
        "train.py": 0o755,
        "nested": 0o755,
        "nested/deeper": 0o755,
        "nested/deeper/conf.json": 0o644,
    }


def test_a_zip_is_unpacked(tmp_path):
    data = zip_of(("train.py", TRAIN), ("lib/", b""), ("lib/util.py", b"y = 2\n"))
    program = unpack_program(data, tmp_path / "programs", LIMITS)
    assert program.kind == "zip" and program.files == ("lib/util.py", "train.py")
    assert (program.root / "lib" / "util.py").read_bytes() == b"y = 2\n"


def test_the_same_bytes_twice_are_one_program(tmp_path):
    first = unpack_program(TRAIN, tmp_path / "programs", LIMITS)
    second = unpack_program(TRAIN, tmp_path / "programs", LIMITS)
    assert first == second
    assert [p.name for p in (tmp_path / "programs").iterdir()] == [first.sha256]


# ---- refused ----


@pytest.mark.parametrize("name", ["../escape.py", "pkg/../../escape.py", "./../x.py"])
def test_dot_dot_in_a_tar_is_refused(tmp_path, name):
    error = refused(
        tmp_path,
        tar_gz((member(name), TRAIN)),
        r"'\.\.' component",
    )
    assert error.member == name
    assert not (tmp_path / "escape.py").exists()


def test_dot_dot_in_a_zip_is_refused(tmp_path):
    refused(tmp_path, zip_of(("../../escape.py", TRAIN)), r"'\.\.' component")


def test_absolute_paths_are_refused(tmp_path):
    refused(tmp_path, tar_gz((member("/etc/cron.d/evil"), TRAIN)), "absolute path")
    refused(tmp_path, zip_of((zip_entry("/tmp/evil.py", 0o100644), TRAIN)), "absolute path")


def test_symlinks_are_refused(tmp_path):
    link = member("data", tarfile.SYMTYPE, linkname="/etc")
    error = refused(tmp_path, tar_gz((link, None), (member("train.py"), TRAIN)), "symbolic link")
    assert "'/etc'" in error.message
    # Even one pointing inside: a later member could write through it.
    refused(
        tmp_path,
        tar_gz((member("train.py"), TRAIN), (member("alias.py", tarfile.SYMTYPE, linkname="train.py"), None)),
        "symbolic link",
    )
    refused(
        tmp_path,
        zip_of((zip_entry("evil", stat.S_IFLNK | 0o777), b"/etc/passwd"), ("train.py", TRAIN)),
        "symbolic link",
    )


def test_hard_links_are_refused(tmp_path):
    refused(
        tmp_path,
        tar_gz((member("train.py"), TRAIN), (member("h.py", tarfile.LNKTYPE, linkname="/etc/shadow"), None)),
        "hard link",
    )


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.CHRTYPE, "device file"), (tarfile.BLKTYPE, "device file"), (tarfile.FIFOTYPE, "FIFO")],
)
def test_devices_and_fifos_are_refused(tmp_path, kind, what):
    refused(
        tmp_path,
        tar_gz((member("train.py"), TRAIN), (member("dev", kind, devmajor=1, devminor=3), None)),
        what,
    )


def test_zip_device_entries_are_refused(tmp_path):
    refused(
        tmp_path, zip_of(("train.py", TRAIN), (zip_entry("null", stat.S_IFCHR | 0o666), b"")), "device file"
    )


def test_too_many_members_are_refused(tmp_path):
    many = [(member(f"m{i}.py"), b"") for i in range(LIMITS.max_members + 1)]
    refused(tmp_path, tar_gz(*many), "over 50 members")
    refused(tmp_path, zip_of(*[(f"m{i}.py", b"") for i in range(LIMITS.max_members + 1)]), "51 members")


def test_a_zip_bomb_is_refused_by_its_declared_size(tmp_path):
    bomb = zip_of(("train.py", TRAIN), ("zeros.bin", b"\0" * (LIMITS.max_unpacked_bytes + 1)))
    assert len(bomb) < 10_000
    refused(tmp_path, bomb, "declares .* unpacked bytes")


def test_a_tar_gz_bomb_is_refused_while_unpacking(tmp_path):
    bomb = tar_gz((member("train.py"), TRAIN), (member("zeros.bin"), b"\0" * (LIMITS.max_unpacked_bytes + 1)))
    assert len(bomb) < 10_000
    error = refused(tmp_path, bomb, "unpacked")
    assert error.member == "zeros.bin"


def test_a_gzip_of_padding_is_bounded(tmp_path):
    import gzip

    # Not a tar at all past its first member: endless zero blocks decompressing from a few KB.
    padding = gzip.compress(b"\0" * (8 << 20))
    limits = Limits(max_bytes=1 << 20, max_unpacked_bytes=1 << 20, max_members=10)
    refused(tmp_path, padding, "holds no .py file|unpacked limit", limits)


def test_an_oversized_upload_is_refused(tmp_path):
    refused(tmp_path, TRAIN + b"#" * LIMITS.max_bytes, "bytes; at most")


def test_duplicate_members_are_refused(tmp_path):
    refused(tmp_path, tar_gz((member("train.py"), TRAIN), (member("train.py"), b"evil")), "appears twice")


def test_a_file_used_as_a_directory_is_refused(tmp_path):
    refused(tmp_path, tar_gz((member("train.py"), TRAIN), (member("train.py/x.py"), b"")), "which is a file")


def test_an_archive_without_python_is_refused(tmp_path):
    refused(tmp_path, tar_gz((member("README.md"), b"hello")), "no .py file")


def test_corrupt_and_truncated_archives_are_refused(tmp_path):
    good_tar = tar_gz((member("train.py"), TRAIN))
    refused(tmp_path, good_tar[: len(good_tar) // 2], "not a readable .tar.gz")
    good_zip = zip_of(("train.py", TRAIN))
    refused(tmp_path, good_zip[:-30], "not a readable .zip")
    corrupt = bytearray(good_zip)
    corrupt[40] ^= 0xFF  # inside the compressed data: the CRC check fails
    refused(tmp_path, bytes(corrupt), "cannot be read|not a readable")


def test_binary_or_empty_single_files_are_refused(tmp_path):
    refused(tmp_path, b"\xff\xfe\x00garbage", "UTF-8")
    refused(tmp_path, b"", "empty")
    refused(tmp_path, TRAIN, "ending in .py", filename="../evil.py")


def test_a_refusal_midway_leaves_nothing_behind(tmp_path):
    # Several good members are written before the bad one is met.
    good = [(member(f"pkg/m{i}.py"), b"ok\n") for i in range(5)]
    refused(tmp_path, tar_gz(*good, (member("../x.py"), b"")), r"'\.\.'")


def test_limits_come_from_the_settings():
    from server.config import load_settings

    settings = load_settings(
        None, {"PETALS_PROGRAM_MAX_BYTES": "4096", "PETALS_PROGRAM_MAX_UNPACKED_BYTES": "8192"}
    )
    assert Limits.from_settings(settings) == Limits(max_bytes=4096, max_unpacked_bytes=8192)
