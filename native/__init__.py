"""Native pieces: `wc-init`, the C program that runs between fork and exec of every
sandbox process (namespaces, mounts, pivot_root, privilege drop, seccomp)."""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "wc-init.c"
LAUNCHER_NAME = "wc-init"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-format-truncation", "-std=gnu11"]


class LauncherRefused(RuntimeError):
    """The launcher is missing or not statically linked: the service will not run it."""


def build_launcher(output: Path, source: Path = SOURCE, cc: str | None = None) -> Path:
    """Compile wc-init atomically into `output` (a temp file renamed into place).

    Always linked statically, or not at all: the launcher runs as root in the host's
    namespaces before it joins a sandbox, and a dynamic one would load whatever a
    loader variable or a library path pointed it at. A toolchain without a static
    libc fails the build, loudly, with the compiler's own words."""
    compiler = cc or os.environ.get("CC", "gcc")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".wc-init-", dir=output.parent)
    os.close(fd)
    try:
        command = [compiler, *CFLAGS, "-static", "-o", tmp, str(source)]
        subprocess.run(command, check=True, capture_output=True, text=True)
        if linkage(Path(tmp)) != "static":
            raise LauncherRefused(f"{compiler} -static produced a dynamically linked {output.name}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"building {output.name} with -static failed (a static libc is required: on Debian, "
            f"libc6-dev provides libc.a):\n{exc.stderr}"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def launcher_path() -> Path:
    """The built launcher next to this file; rebuilt when the source is newer (source checkouts)."""
    binary = SOURCE.with_name(LAUNCHER_NAME)
    if SOURCE.exists() and (not binary.exists() or binary.stat().st_mtime < SOURCE.stat().st_mtime):
        build_launcher(binary)
    return binary


def linkage(binary: Path) -> str:
    """ "static" or "dynamic" (the ELF file asks for a program interpreter), read from its
    program headers; "not an ELF file" for anything else."""
    with open(binary, "rb") as handle:
        header = handle.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
            return "not an ELF file"
        order = "<" if header[5] == 1 else ">"
        (phoff,) = struct.unpack_from(order + "Q", header, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    for index in range(phnum):
        (p_type,) = struct.unpack_from(order + "I", table, index * phentsize)
        if p_type == 3:  # PT_INTERP: a dynamic loader runs first
            return "dynamic"
    return "static"


def checked_launcher(binary: Path | None = None) -> Path:
    """The launcher to run, refused unless it exists and is statically linked."""
    binary = Path(binary) if binary is not None else launcher_path()
    if not os.access(binary, os.X_OK):
        raise LauncherRefused(
            f"the sandbox launcher {binary} is missing or not executable; reinstall to build it"
        )
    kind = linkage(binary)
    if kind != "static":
        raise LauncherRefused(
            f"the sandbox launcher {binary} is {kind}; expected a statically linked build "
            "(it runs as root before joining a sandbox, where a dynamic loader reads the environment)"
        )
    return binary
