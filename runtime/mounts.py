"""The sandbox's root filesystem: a read-only lower layer composed from the host's
system directories and the project's venv, plus the read-only binds of a sandbox.
With an image (`make rootfs`: a debootstrap'd Debian), the image replaces the host's
/usr and the skeleton is stacked on top of it as a second lower layer.

The overlay, its tmpfs upper, /dev and /proc are mounted by wc-init inside the
sandbox's private mount namespace, so none of them ever appears on the host."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# Bumped whenever the skeleton's content changes, so old skeletons are rebuilt.
SKELETON_VERSION = 3

# Device nodes every sandbox gets (bound from the host).
DEFAULT_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")

# Directories inside the sandbox: where its data and model are bound (read-only) and
# where it may write (in the tmpfs upper, counted against the storage cap).
DATA_DIR = "/data"
MODEL_DIR = "/model"
WORK_DIR = "/work"
OUT_DIR = "/out"
PROGRAM_DIR = "/opt/wondercraft"

PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files\n"
# Host files a dynamic linker and a Python interpreter need; nothing with secrets.
ETC_COPIES = ("ld.so.cache", "ld.so.conf", "localtime", "os-release", "debian_version", "mime.types")
ETC_TREES = ("ld.so.conf.d", "alternatives")


@dataclass(frozen=True)
class Bind:
    """A host path bound read-only into the sandbox at `target`."""

    source: str
    target: str

    def arg(self) -> str:
        return f"{self.source}:{self.target}"


def _system_dirs() -> list[str]:
    """Host directories bound read-only: /usr and any top-level lib/bin dir that is not a symlink."""
    dirs = ["/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_dir() and not path.is_symlink():
            dirs.append(str(path))
    return dirs


def python_dirs() -> list[str]:
    """The interpreter's install prefix and the venv, so the sandbox runs the same Python and numpy."""
    dirs = [os.path.realpath(sys.base_prefix)]
    venv = os.path.realpath(sys.prefix)
    if venv != dirs[0]:
        dirs.append(venv)
    return dirs


def program_dir() -> str:
    """The learn-cycle program shipped with rootfs/."""
    return str(Path(__file__).resolve().parent.parent / "rootfs")


def system_binds(image: Path | None = None) -> list[Bind]:
    """Read-only binds every sandbox gets: the host's system dirs (unless an image
    provides them), the interpreter and venv, and the learn-cycle program."""
    binds = [] if image else [Bind(d, d) for d in _system_dirs()]
    binds += [Bind(d, d) for d in python_dirs() if image or not d.startswith("/usr/")]
    binds.append(Bind(program_dir(), PROGRAM_DIR))
    return binds


def lower_dirs(skeleton: Path, image: Path | None = None) -> str:
    """The overlay lowerdir option: the skeleton, on top of the image when there is one."""
    return f"{skeleton}:{image}" if image else str(skeleton)


def _skeleton_manifest(image: Path | None) -> dict:
    return {
        "version": SKELETON_VERSION,
        "image": str(image) if image else None,
        "binds": [b.target for b in system_binds(image)],
    }


def build_skeleton(lower: Path, image: Path | None = None) -> Path:
    """Create (or reuse) the lower layer: empty mount points, symlinks, and a minimal /etc.

    Built once per state dir into a temp dir and renamed into place, so a crash
    mid-build never leaves a half skeleton in use."""
    if image is not None and not (image / "etc" / "debian_version").is_file():
        raise FileNotFoundError(f"rootfs image {image} is not a built image (run `make rootfs`)")
    manifest = _skeleton_manifest(image)
    marker = lower / ".wondercraft-skeleton.json"
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == manifest:
                return lower
        except ValueError:
            pass
    staging = lower.with_name(lower.name + f".build-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o755)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            os.symlink(os.readlink(host), staging / name)
    for directory, mode in (
        ("etc", 0o755), ("proc", 0o555), ("dev", 0o755), ("tmp", 0o1777), ("var/tmp", 0o1777),
        ("run", 0o755), ("root", 0o755), ("home", 0o755), ("data", 0o755), ("model", 0o755),
        ("work", 0o755), ("out", 0o755), ("opt/wondercraft", 0o755),
    ):  # fmt: skip
        path = staging / directory
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    for bind in system_binds(image):
        (staging / bind.target.lstrip("/")).mkdir(parents=True, exist_ok=True)
    etc = staging / "etc"
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    (etc / "hosts").write_text(HOSTS)
    (etc / "hostname").write_text("sandbox\n")
    (etc / "nsswitch.conf").write_text(NSSWITCH)
    for name in ETC_COPIES:
        host = Path("/etc") / name
        if host.is_symlink():
            os.symlink(os.readlink(host), etc / name)
        elif host.is_file():
            shutil.copy2(host, etc / name)
    for name in ETC_TREES:
        host = Path("/etc") / name
        if host.is_dir():
            shutil.copytree(host, etc / name, symlinks=True)
    (staging / marker.name).write_text(json.dumps(manifest))
    if lower.exists():
        retired = lower.with_name(lower.name + f".old-{os.getpid()}")
        os.rename(lower, retired)
        shutil.rmtree(retired, ignore_errors=True)
    os.rename(staging, lower)
    return lower
