"""Runs pytest inside a User-Mode Linux guest whose only cgroup mount is cgroup2 (pure v2),
with the host's / as its root through hostfs: the v2 half of `make test`.

Tests marked `v2guest` in files that mention the marker run there; results come back
through a per-run folder on the host, since the guest writes host files as root."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.leftovers import RUN

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
UML_KERNEL = Path("/usr/bin/linux.uml")
UML_MODULES = Path("/usr/lib/uml/modules")
MARKER = "v2guest"
GUEST_ENV = "WONDERCRAFT_TEST_GUEST"  # "v2" inside the guest
IN_GUEST = os.environ.get(GUEST_ENV) == "v2"
# Numpy in sandboxes inside the guest needs room; 256M was the least that worked
# for a 200 MB allocation test.
GUEST_MEMORY_MB = int(os.environ.get("WONDERCRAFT_GUEST_MEMORY_MB", "1024"))
GUEST_DISK_MB = 16
# Guests run side by side (four at once worked here); each has one virtual cpu.
MAX_PARALLEL_GUESTS = int(os.environ.get("WONDERCRAFT_GUESTS", "4"))
GUEST_TIMEOUT_S = float(os.environ.get("WONDERCRAFT_GUEST_TIMEOUT_S", "240"))
# Not /tmp: a run folder there would be written by host and guest alike through hostfs;
# /var/tmp keeps them apart from the tests' own temporary files.
RUN_PARENT = Path(os.environ.get("WONDERCRAFT_GUEST_RUN_DIR", "/var/tmp"))
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_PYTEST_PLUGINS = ("pytest_timeout",)
# finit_module(2) through ctypes, for hosts without kmod's insmod; 313 is its
# number on x86_64, which UML's guest ABI follows there.
LOAD_MODULE = (
    "import ctypes, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
    "libc = ctypes.CDLL(None, use_errno=True); "
    "sys.exit(0 if libc.syscall(313, fd, b'', 0) == 0 else f'finit_module: {os.strerror(ctypes.get_errno())}')"
)

INIT_TEMPLATE = """#!/bin/sh
# PID 1 of the cgroup v2 test guest: mounts, controllers, overlay, then pytest, then power off.
RUN={run}
note() {{ echo "guest-init: $*" >> "$RUN/init.log"; }}
# Scratch space is a tmpfs under the guest's own /run, never over /tmp: a checkout may
# live under the host's /tmp (CI clones into a temporary folder) and must stay visible.
export PATH={path} HOME=/run/scratch TMPDIR=/run/scratch LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 {env_var}=v2
# Third-party pytest plugins (schemathesis, hypothesis) take seconds to import under
# UML; the guest loads only the ones its tests need.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
mount -t proc proc /proc || note "mount proc failed"
mount -t sysfs sysfs /sys || note "mount sysfs failed"
grep -q " /dev devtmpfs " /proc/mounts || mount -t devtmpfs devtmpfs /dev || note "mount /dev failed"
mount -t tmpfs -o mode=755 tmpfs /run || note "mount /run failed"
mkdir -p -m 1777 /run/scratch
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm || note "mount /dev/shm failed"
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts || note "mount /dev/pts failed"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || note "mount cgroup2 failed"
echo "+cpu +memory +pids +io" > /sys/fs/cgroup/cgroup.subtree_control || note "enabling controllers failed"
{load_overlay} || note "loading overlay.ko failed"
ip link set lo up 2>/dev/null || note "loopback not up"
hostname wondercraft-guest
cd {repo} || note "cd {repo} failed"
cut -d' ' -f1 /proc/uptime > "$RUN/boot_s"
{command} > "$RUN/output.txt" 2>&1
echo $? > "$RUN/rc.partial" && mv "$RUN/rc.partial" "$RUN/rc"
sync
echo o > /proc/sysrq-trigger
poweroff -f
"""


@dataclass
class GuestRun:
    """One guest's result; returncode is the inner pytest's, None if it never finished."""

    label: str
    returncode: int | None
    output: str
    console: str
    init_log: str
    wall_s: float
    boot_s: float | None
    timed_out: bool

    def report(self) -> str:
        state = "timed out" if self.timed_out else f"inner pytest exit code {self.returncode}"
        parts = [f"guest {self.label}: {state} after {self.wall_s:.1f}s (boot {self.boot_s}s)"]
        if self.init_log:
            parts.append("init log:\n" + self.init_log)
        parts.append("inner pytest output:\n" + (self.output or "(none)"))
        if self.returncode is None:
            parts.append("guest console (last 4000 characters):\n" + self.console[-4000:])
        return "\n".join(parts)


def overlay_module() -> Path:
    """overlay.ko from the user-mode-linux package, for the UML kernel's version."""
    found = sorted(UML_MODULES.glob("*/kernel/fs/overlayfs/overlay.ko"))
    if not found:
        raise FileNotFoundError(
            f"no overlay.ko under {UML_MODULES}/<version>/kernel/fs/overlayfs; expected the "
            "user-mode-linux package (make install installs it)"
        )
    return found[-1]


def guest_test_files(tests_dir: Path = TESTS) -> list[Path]:
    """Test files that mention the v2guest marker: the only ones the guest collects,
    so that it does not import (slowly, under UML) the rest of the suite."""
    files = []
    for path in sorted(tests_dir.glob("test_*.py")):
        if path.name != "test_v2_guest.py" and MARKER in path.read_text():
            files.append(path)
    return files


class Guest:
    """One booting or running guest; start() returns at once, wait() collects the result."""

    def __init__(self, pytest_args: list[str], label: str = "v2", memory_mb: int = GUEST_MEMORY_MB) -> None:
        self.label = label
        self.pytest_args = [str(a) for a in pytest_args]
        self.memory_mb = memory_mb
        self.run_dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.result: GuestRun | None = None

    def start(self) -> Guest:
        if not UML_KERNEL.exists():
            raise FileNotFoundError(
                f"{UML_KERNEL} is missing; expected Debian's user-mode-linux package (make install installs it)"
            )
        overlay = shlex.quote(str(overlay_module()))
        RUN_PARENT.mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"wondercraft-guest-{self.label}-", dir=RUN_PARENT))
        RUN.register_guest(self.run_dir)
        try:
            self._boot(overlay)
        except BaseException:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        return self

    def _boot(self, overlay: str) -> None:
        assert self.run_dir is not None
        python = REPO / ".venv" / "bin" / "python"
        if not python.exists():
            python = Path(sys.executable)
        plugins = [arg for name in GUEST_PYTEST_PLUGINS for arg in ("-p", name)]
        command = shlex.join(
            [str(python), "-m", "pytest", *plugins, "-p", "no:cacheprovider", "--rootdir", str(REPO)]
            + self.pytest_args
        )
        if shutil.which("insmod"):
            load_overlay = f'insmod {overlay} 2>>"$RUN/init.log"'
        else:
            load_overlay = (
                shlex.join([str(python), "-I", "-S", "-c", LOAD_MODULE]) + f' {overlay} 2>>"$RUN/init.log"'
            )
        init = self.run_dir / "init.sh"
        init.write_text(
            INIT_TEMPLATE.format(
                run=shlex.quote(str(self.run_dir)),
                path=GUEST_PATH,
                env_var=GUEST_ENV,
                load_overlay=load_overlay,
                repo=shlex.quote(str(REPO)),
                command=command,
            )
        )
        init.chmod(0o755)
        (self.run_dir / "uml").mkdir()
        # A small sparse disk (/dev/ubda inside) gives io.max and io.stat a real block device.
        with open(self.run_dir / "disk.img", "wb") as disk:
            disk.truncate(GUEST_DISK_MB << 20)
        argv = [
            str(UML_KERNEL),
            f"mem={self.memory_mb}M",
            "root=/dev/root",
            "rootfstype=hostfs",
            "rootflags=/",
            "rw",
            f"init={init}",
            f"uml_dir={self.run_dir / 'uml'}",
            f"ubd0={self.run_dir / 'disk.img'}",
            "con0=fd:0,fd:1",
            "con=null",
        ]
        # TMPDIR: UML backs guest memory with a file there; /dev/shm keeps it in RAM.
        env = {"PATH": os.environ.get("PATH", GUEST_PATH), "TMPDIR": "/dev/shm"}
        self.started = time.monotonic()
        with open(self.run_dir / "console.log", "wb") as console:
            # A session of its own, so that a hung guest and all its host
            # processes can be killed as one process group.
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip

    def wait(self, timeout_s: float = GUEST_TIMEOUT_S, keep: bool = False) -> GuestRun:
        assert self.proc is not None and self.run_dir is not None, "start() first"
        if self.result is not None:
            return self.result
        timed_out = False
        try:
            # WNOWAIT: see that the kernel process ended without reaping it yet.
            while os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
                if time.monotonic() > self.started + timeout_s:
                    timed_out = True
                    break
                time.sleep(0.05)
        finally:
            self._stop()
        run_dir = self.run_dir

        def read(name: str) -> str:
            path = run_dir / name
            return path.read_text(errors="replace") if path.exists() else ""

        rc_text, boot_text = read("rc").strip(), read("boot_s").strip()
        result = GuestRun(
            label=self.label,
            returncode=int(rc_text) if rc_text else None,
            output=read("output.txt"),
            console=read("console.log"),
            init_log=read("init.log"),
            wall_s=time.monotonic() - self.started,
            boot_s=float(boot_text) if boot_text else None,
            timed_out=timed_out,
        )
        if not keep and os.environ.get("WONDERCRAFT_GUEST_KEEP") != "1":
            shutil.rmtree(run_dir, ignore_errors=True)
        self.result = result
        return result

    def _stop(self) -> None:
        """Kill whatever is left of the guest's process group (UML runs each guest
        process as a host process) before reaping the kernel process, whose pid
        keeps the group id from being reused until then."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def run_pytest_in_guest(
    pytest_args: list[str],
    *,
    label: str = "v2",
    memory_mb: int = GUEST_MEMORY_MB,
    timeout_s: float = GUEST_TIMEOUT_S,
) -> GuestRun:
    """Boot a guest, run `pytest <pytest_args>` in it (cwd: the repo), power it off."""
    return Guest(pytest_args, label=label, memory_mb=memory_mb).start().wait(timeout_s)


def split_among_guests(files: list[Path], max_guests: int = MAX_PARALLEL_GUESTS) -> dict[str, list[Path]]:
    """Test files dealt round-robin to at most max_guests guests, labelled by their first file."""
    shares: list[list[Path]] = [[] for _ in range(max(1, min(max_guests, len(files))))]
    for i, path in enumerate(files):
        shares[i % len(shares)].append(path)
    return {share[0].stem.removeprefix("test_"): share for share in shares if share}
