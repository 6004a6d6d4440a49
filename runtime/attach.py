"""Read-only binds added to a running sandbox's mount namespace (a warm sandbox's inputs).

Each source is cloned as a detached mount tree in the host's namespace (open_tree with
OPEN_TREE_CLONE), made read-only, nosuid and nodev (mount_setattr), and moved onto its
target inside the sandbox (move_mount). The move happens from a short-lived thread of
its own that left the service's filesystem context (unshare CLONE_FS) and joins the
sandbox's mount namespace (setns) for the moves only, then returns to the host's; no other
code of the service ever runs in a sandbox's namespace.

Targets are created as mount points first (a directory, or an empty file for a file
source), as root in the sandbox's root; one that exists as anything else (a symlink
above all) is refused. Call this only before untrusted code runs in the sandbox."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
import queue
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
PR_SET_NAME = 15

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


def _move_all(trees: list[tuple[int, str, bool]]) -> None:
    for fd, target, directory in trees:
        _mount_point(target, directory)
        _check(
            _libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH),
            "move_mount",
        )


class _Attacher:
    """One long-lived thread that alone ever joins a sandbox's mount namespace: its own
    filesystem context (unshare CLONE_FS, once), then per request setns into the sandbox,
    the moves, and setns back to the host's namespace. A thread handoff each way is all a
    request costs (a thread started per request measured 1-5 ms on a loaded host). Should
    the way back ever fail, the thread ends (taking that namespace with it) and the next
    request starts a new one."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, init_pid: int, trees: list[tuple[int, str, bool]]) -> concurrent.futures.Future:
        done: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="wc-attach", daemon=True)
                self._thread.start()
            self._requests.put((init_pid, trees, done))
        return done

    def _serve(self) -> None:
        host = -1
        try:
            _libc.prctl(PR_SET_NAME, b"wc-attach", 0, 0, 0)  # its name in /proc (audits, tests)
            _check(_libc.unshare(CLONE_FS), "unshare")
            host = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            while True:
                init_pid, trees, done = self._requests.get()
                try:
                    namespace = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    done.set_exception(AttachFailed(f"attaching an input failed: {exc.strerror}"))
                    continue
                try:
                    _check(_libc.setns(namespace, CLONE_NEWNS), "setns")
                except BaseException as exc:
                    done.set_exception(exc)
                    continue
                finally:
                    os.close(namespace)
                # In the sandbox now (root and cwd are its namespace's root) until the
                # setns back; nothing but the moves runs here.
                try:
                    _move_all(trees)
                except BaseException as exc:
                    error: BaseException | None = exc
                else:
                    error = None
                if _libc.setns(host, CLONE_NEWNS) < 0:
                    done.set_exception(error or AttachFailed("attaching an input failed at setns back"))
                    return  # this thread's namespace dies with it
                if error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(None)
        except BaseException as exc:  # the set-up failed: fail whatever is queued
            while not self._requests.empty():
                self._requests.get()[2].set_exception(exc)
        finally:
            if host >= 0:
                os.close(host)


_ATTACHER = _Attacher()


def _clone_all(binds: Sequence[Bind]) -> list[tuple[int, str, bool]]:
    for bind in binds:
        if not os.path.isabs(bind.target) or ".." in bind.target.split("/") or bind.target == "/":
            raise AttachFailed(f"a bind target must be an absolute path below /, got {bind.target!r}")
    trees: list[tuple[int, str, bool]] = []
    try:
        for bind in binds:
            trees.append((_clone_read_only(bind.source), bind.target, os.path.isdir(bind.source)))
    except BaseException:
        for fd, _, _ in trees:
            os.close(fd)
        raise
    return trees


def attach_read_only(init_pid: int, binds: Sequence[Bind]) -> None:
    """Bind each source read-only at its target inside the sandbox whose PID 1 is init_pid
    (blocking; from a thread other than the attach thread)."""
    trees = _clone_all(binds)
    try:
        _ATTACHER.submit(init_pid, trees).result()
    finally:
        for fd, _, _ in trees:
            os.close(fd)


async def attach_read_only_async(init_pid: int, binds: Sequence[Bind]) -> None:
    """attach_read_only for the event loop: the clones (a few syscalls in the host's
    namespace, ~0.1 ms) run inline, the moves on the attach thread."""
    trees = _clone_all(binds)
    try:
        await asyncio.wrap_future(_ATTACHER.submit(init_pid, trees))
    finally:
        for fd, _, _ in trees:
            os.close(fd)
