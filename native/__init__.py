"""Native pieces: `wc-init`, the C program that runs between fork and exec of every
sandbox process (namespaces, mounts, pivot_root, privilege drop, seccomp)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "wc-init.c"
LAUNCHER_NAME = "wc-init"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-format-truncation", "-std=gnu11"]


def build_launcher(output: Path, source: Path = SOURCE, cc: str | None = None) -> Path:
    """Compile wc-init atomically into `output` (a temp file renamed into place).

    Linked statically where the toolchain can (no dynamic loader on every sandbox start
    and exec, ~0.2 ms each), dynamically otherwise."""
    compiler = cc or os.environ.get("CC", "gcc")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".wc-init-", dir=output.parent)
    os.close(fd)
    try:
        command = [compiler, *CFLAGS, "-o", tmp, str(source)]
        if subprocess.run([*command, "-static"], capture_output=True).returncode != 0:
            subprocess.run(command, check=True, capture_output=True, text=True)
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"building {output.name} failed:\n{exc.stderr}") from None
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
