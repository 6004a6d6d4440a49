"""Read-only binds added to a running sandbox's mount namespace (a warm sandbox's inputs).

Each source is cloned as a detached mount tree in the host's namespace (open_tree with
OPEN_TREE_CLONE), made read-only, nosuid and nodev (mount_setattr), and moved onto its
target inside the sandbox (move_mount). The move happens from a short-lived thread of
its own that leaves the service's filesystem context (unshare CLONE_FS) and joins the
sandbox's mount namespace (setns); the thread ends with the work, so no other code of the
service ever runs in that namespace.

Targets are created as mount points first (a directory, or an empty file for a file
source), as root in the sandbox's root; one that exists as anything else (a symlink
above all) is refused. Call this only before untrusted code runs in the sandbox."""

from __future__ import annotations

import ctypes
import os
import stat
import threading
from collections.abc import Sequence

from .errors import SandboxError
from .mounts import Bind

# x86_64 and aarch64 share the numbers of these newer, unified syscalls.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
CLONE_FS = 0x200
CLONE_NEWNS = 0x20000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class AttachFailed(SandboxError):
    """An input could not be attached to a warm sandbox."""


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, step: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        # The step and the errno only: messages travel to callers, host paths must not.
        raise AttachFailed(f"attaching an input failed at {step}: {os.strerror(err)}")
    return result


def _clone_read_only(source: str) -> int:
    """A detached, recursive, read-only clone of `source` (a host path), as an fd."""
    fd = _check(
        _libc.syscall(
            SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source), OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE
        ),
        "open_tree",
    )
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    try:
        _check(
            _libc.syscall(
                SYS_MOUNT_SETATTR,
                fd,
                b"",
                AT_EMPTY_PATH | AT_RECURSIVE,
                ctypes.byref(attr),
                ctypes.sizeof(attr),
            ),  # fmt: skip
            "mount_setattr",
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mount_point(target: str, directory: bool) -> None:
    """Create `target` (in the current mount namespace) as a directory or an empty file,
    or accept one that already is that; anything else is refused."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        parent = os.path.dirname(target)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if directory:
            os.mkdir(target, 0o755)
        else:
            os.close(
                os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            )
        return
    if directory and not stat.S_ISDIR(info.st_mode) or not directory and not stat.S_ISREG(info.st_mode):
        raise AttachFailed("attaching an input failed: its mount point is not a plain directory or file")


def _attach_in_thread(init_pid: int, trees: list[tuple[int, str, bool]], errors: list[BaseException]) -> None:
    try:
        namespace = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.unshare(CLONE_FS), "unshare")
            _check(_libc.setns(namespace, CLONE_NEWNS), "setns")
        finally:
            os.close(namespace)
        # From here on this thread resolves paths in the sandbox (its root and cwd are
        # the namespace's root); it ends right after.
        for fd, target, directory in trees:
            _mount_point(target, directory)
            _check(
                _libc.syscall(
                    SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH
                ),
                "move_mount",
            )
    except BaseException as exc:  # handed to the caller's thread
        errors.append(exc)


def attach_read_only(init_pid: int, binds: Sequence[Bind]) -> None:
    """Bind each source read-only at its target inside the sandbox whose PID 1 is init_pid.
    Blocking (a few syscalls, ~0.1 ms per bind plus a thread start): call it from a worker
    thread or accept the short stall."""
    for bind in binds:
        if not os.path.isabs(bind.target) or ".." in bind.target.split("/") or bind.target == "/":
            raise AttachFailed(f"a bind target must be an absolute path below /, got {bind.target!r}")
    trees: list[tuple[int, str, bool]] = []
    try:
        for bind in binds:
            directory = os.path.isdir(bind.source)
            trees.append((_clone_read_only(bind.source), bind.target, directory))
        errors: list[BaseException] = []
        worker = threading.Thread(target=_attach_in_thread, args=(init_pid, trees, errors), name="wc-attach")
        worker.start()
        worker.join()
        if errors:
            raise errors[0]
    finally:
        for fd, _, _ in trees:
            os.close(fd)
