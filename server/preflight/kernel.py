"""The kernel features a sandbox is made of, tried rather than looked up: overlay over a
size-capped tmpfs and the sandbox namespaces are made in a throwaway child; seccomp filters."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .checks import FAIL, PASS, WARN, Check

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _in_child(action: Callable[[], None], timeout_s: float = 10.0) -> str | None:
    """Runs `action` in a forked child (its namespaces and mounts die with it); None if it
    succeeded, else the error it reported."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any of the parent's clean-up
        os.close(read_end)
        code = 0
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
            os.write(write_end, str(exc).encode()[:4000])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return message or f"the test process ended with status {os.waitstatus_to_exitcode(status)}"


def _call(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    libc = _libc()
    _call(
        libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None, ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {fstype or 'propagation'} on {target}",
    )  # fmt: skip


def _unshare(flags: int, what: str) -> None:
    _call(_libc().unshare(flags), f"unshare({what})")


def check_overlay() -> Check:
    """Overlay over a size-capped tmpfs, as every sandbox root is made, in a private mount namespace."""
    if os.geteuid() != 0:
        return Check("overlay and tmpfs", FAIL, "cannot be tried without root", "run preflight as root")
    scratch = tempfile.mkdtemp(prefix="wondercraft-preflight-")

    def attempt() -> None:
        _unshare(CLONE_NEWNS, "CLONE_NEWNS")
        _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
        _mount("wc-preflight", scratch, "tmpfs", 0, "size=1m,mode=0700")
        for name in ("lower", "upper", "work", "root"):
            os.mkdir(os.path.join(scratch, name))
        root = os.path.join(scratch, "root")
        options = f"lowerdir={scratch}/lower,upperdir={scratch}/upper,workdir={scratch}/work"
        _mount("wc-preflight", root, "overlay", 0, options)
        with open(os.path.join(root, "probe"), "wb") as handle:
            handle.write(b"ok")
        size = os.statvfs(root)
        if size.f_blocks * size.f_frsize > 2 << 20:
            raise OSError(errno.EINVAL, "the overlay does not report its tmpfs upper's 1 MiB size")

    try:
        problem = _in_child(attempt)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if problem is None:
        return Check(
            "overlay and tmpfs", PASS, "overlay over a size-capped tmpfs mounts in a private namespace"
        )
    return Check(
        "overlay and tmpfs", FAIL, problem,
        "load the overlay module (modprobe overlay) and allow tmpfs; outside a container, or in one "
        "allowed to mount",
    )  # fmt: skip


def check_namespaces() -> Check:
    if os.geteuid() != 0:
        return Check("namespaces", FAIL, "cannot be tried without root", "run preflight as root")
    flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
    problem = _in_child(lambda: _unshare(flags, "mount, uts, ipc, pid, net"))
    if problem is not None:
        return Check(
            "namespaces", FAIL, problem,
            "enable CONFIG_{PID,NET,UTS,IPC}_NS; in a container, grant CAP_SYS_ADMIN and no seccomp profile "
            "that blocks unshare",
        )  # fmt: skip
    netns = Path("/run/netns")
    if not netns.is_dir() and not os.access("/run", os.W_OK):
        return Check("namespaces", FAIL, "/run/netns cannot be created", "make /run writable")
    return Check("namespaces", PASS, "mount, uts, ipc, pid and net namespaces can be made")


def check_user_namespaces() -> Check:
    if not os.path.exists("/proc/self/ns/user"):
        return Check(
            "user namespaces", WARN, "the kernel has no user namespaces",
            "none needed: sandboxes run as an unprivileged uid in the host's user namespace",
        )  # fmt: skip
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        limit = None
    return Check(
        "user namespaces", PASS,
        f"supported (max_user_namespaces={limit}); not used by the runtime, and the seccomp filter "
        "refuses them inside sandboxes",
    )  # fmt: skip


def check_seccomp(status_text: str | None = None, actions: str | None = None) -> Check:
    text = Path("/proc/self/status").read_text() if status_text is None else status_text
    if "Seccomp:" not in text:
        return Check(
            "seccomp", FAIL, "the kernel has no seccomp (CONFIG_SECCOMP)", "use a kernel with seccomp"
        )
    if actions is None:
        try:
            actions = Path("/proc/sys/kernel/seccomp/actions_avail").read_text()
        except OSError:
            actions = ""
    needed = ("errno", "allow")
    missing = [a for a in needed if a not in actions.split()]
    if missing:
        return Check(
            "seccomp", FAIL, f"seccomp filters cannot {' or '.join(missing)} (CONFIG_SECCOMP_FILTER?)",
            "use a kernel with CONFIG_SECCOMP_FILTER",
        )  # fmt: skip
    return Check("seccomp", PASS, f"filters available (actions: {' '.join(actions.split())})")
