"""`wondercraft-ctl preflight`: checks that a host can run the service before it serves, each
check a pass, warn or fail with the fix. The kernel features are tried, not just looked up:
overlay over a size-capped tmpfs and the sandbox namespaces are made in a throwaway child."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime import gpu as gpus
from runtime.cgroups import (
    SUPERVISOR_LEAF,
    cgroup_dir,
    cgroup_mounts,
    detect_mode,
    own_cgroups,
    v1_hierarchies,
)

from .config import Settings, load_settings
from .errors import ConfigError

PASS, WARN, FAIL = "pass", "warn", "fail"

# Capabilities the service uses: namespaces and mounts (SYS_ADMIN), network namespaces
# (NET_ADMIN), pivot_root (SYS_CHROOT), the sandbox user (SETUID, SETGID), dropping capabilities
# from the bounding set (SETPCAP), killing sandboxes (KILL) and state owned by others (DAC_OVERRIDE).
REQUIRED_CAPS = {
    "cap_dac_override": 1, "cap_kill": 5, "cap_setgid": 6, "cap_setuid": 7, "cap_setpcap": 8,
    "cap_net_admin": 12, "cap_sys_chroot": 18, "cap_sys_admin": 21,
}  # fmt: skip
V2_CONTROLLERS = ("cpu", "memory", "pids")
V1_REQUIRED = ("cpu", "cpuacct", "memory", "pids")
V1_WANTED = ("blkio", "freezer")
UNIT_CGROUP = "system.slice/wondercraft.service"
MIN_STATE_FREE_BYTES = 1 << 30
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "9p", "fuse", "fuse.sshfs", "ceph", "glusterfs")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18


@dataclass
class Check:
    check: str
    status: str  # pass, warn or fail
    detail: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ helpers --


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


def _caps_of(text: str, field: str) -> int:
    match = re.search(rf"^{field}:\s*([0-9a-f]+)$", text, re.M)
    return int(match.group(1), 16) if match else 0


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(mount point, filesystem type, mount options) of the mount holding `path`."""
    best = ("/", "unknown", "")
    target = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        fields = head.split()
        point = fields[4].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, tail.split()[0], fields[5])
    return best


# ------------------------------------------------------------------- checks --


def check_root() -> Check:
    if os.geteuid() == 0:
        return Check("root", PASS, "running as root (uid 0)")
    return Check(
        "root", FAIL, f"effective uid is {os.geteuid()}; the service must run as root",
        "run it as root: sudo wondercraft-ctl preflight, or the systemd unit (User= unset)",
    )  # fmt: skip


def check_capabilities(status_text: str | None = None) -> Check:
    text = Path("/proc/self/status").read_text() if status_text is None else status_text
    effective, bounding = _caps_of(text, "CapEff"), _caps_of(text, "CapBnd")
    missing = [name for name, bit in REQUIRED_CAPS.items() if not effective >> bit & 1]
    if not missing:
        return Check("capabilities", PASS, f"effective set has {', '.join(REQUIRED_CAPS)}")
    unbounded = [name for name in missing if not bounding >> REQUIRED_CAPS[name] & 1]
    where = " (also missing from the bounding set)" if unbounded else ""
    return Check(
        "capabilities", FAIL, f"missing from the effective set: {', '.join(missing)}{where}",
        "run as root without capability drops; a unit's CapabilityBoundingSet= must keep "
        + ", ".join(missing).upper(),
    )  # fmt: skip


def check_kernel(release: str | None = None) -> Check:
    release = release or os.uname().release
    match = re.match(r"(\d+)\.(\d+)", release)
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if version >= (5, 14):
        return Check("kernel", PASS, f"Linux {release} (cgroup.kill, pidfd)")
    return Check(
        "kernel", WARN, f"Linux {release}: before 5.14 sandboxes are killed by freezing their cgroup "
        "(no cgroup.kill), and before 5.3 without pidfds",
        "upgrade to a 5.14 or later kernel (Debian 12's 6.1 is fine)",
    )  # fmt: skip


def _cgroup_mount_lines() -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return [line for line in lines if " - cgroup" in line]


def check_cgroup_mode(mode: str | None = None) -> Check:
    mode = mode or detect_mode()
    if mode == "v2":
        return Check("cgroup mode", PASS, "pure cgroup v2 (the primary design)")
    if mode in ("v1", "hybrid"):
        # On v1 each sandbox start and execution moves a process into its cgroups; without
        # favordynmods the first move after a quiet spell waits out an RCU grace period.
        favoured = any("favordynmods" in line.split(" - ")[-1] for line in _cgroup_mount_lines())
        moves = (
            ""
            if favoured
            else "; each sandbox start and execution waits ~6-8 ms for its first cgroup move after a quiet spell"
        )
        return Check(
            "cgroup mode", WARN, f"{mode}: sandboxes use the v1 controllers; pure v2 is the primary design{moves}",
            "boot with systemd.unified_cgroup_hierarchy=1 (and without cgroup_no_v1=) for pure v2"
            + ("" if favoured else ", or remount a cgroup hierarchy with -o remount,favordynmods (kernel 6.0+)"),
        )  # fmt: skip
    return Check(
        "cgroup mode", FAIL, "no cgroup filesystem is mounted",
        "mount cgroup2 at /sys/fs/cgroup (systemd does this at boot)",
    )  # fmt: skip


def _service_cgroup_v2() -> tuple[str, str]:
    """(cgroup dir, how it was chosen) where `wondercraft serve` would create sandboxes."""
    mount = next((m for m in cgroup_mounts() if m.fstype == "cgroup2"), None)
    if mount is None:
        raise FileNotFoundError("no cgroup2 mount")
    unit = os.path.join(mount.mount_point, UNIT_CGROUP)
    if os.path.isdir(unit):
        return unit, "the wondercraft.service unit's cgroup"
    own = cgroup_dir(mount, own_cgroups().get("", "/"))
    if os.path.basename(own) == SUPERVISOR_LEAF:
        own = os.path.dirname(own)
    return own, "this shell's cgroup (the service is not installed as a unit)"


def check_cgroup_controllers(mode: str | None = None) -> Check:
    mode = mode or detect_mode()
    if mode == "v2":
        try:
            path, chosen = _service_cgroup_v2()
        except OSError as exc:
            return Check("cgroup controllers", FAIL, f"cannot find the service's cgroup: {exc}")
        available = (Path(path) / "cgroup.controllers").read_text().split()
        missing = [c for c in V2_CONTROLLERS if c not in available]
        if missing:
            return Check(
                "cgroup controllers", FAIL,
                f"{' '.join(missing)} not delegated to {path} ({chosen}); it has: {' '.join(available) or 'none'}",
                "run it as the systemd unit (Delegate=yes; make install-service), or enable "
                f"+{' +'.join(missing)} in the parent's cgroup.subtree_control",
            )  # fmt: skip
        io = "" if "io" in available else "; io is not delegated, so io is not accounted"
        return Check(
            "cgroup controllers", WARN if io else PASS,
            f"{' '.join(c for c in available if c in (*V2_CONTROLLERS, 'io'))} delegated to {path} ({chosen}){io}",
            "enable +io in the parent's cgroup.subtree_control" if io else "",
        )  # fmt: skip
    if mode in ("v1", "hybrid"):
        hierarchies = v1_hierarchies(wanted=(*V1_REQUIRED, *V1_WANTED))
        present = {c: h for h in hierarchies for c in h.controllers}
        missing = [c for c in V1_REQUIRED if c not in present]
        if missing:
            return Check(
                "cgroup controllers", FAIL, f"v1 hierarchies missing: {', '.join(missing)}",
                "mount them under /sys/fs/cgroup/<controller> (systemd does on hybrid hosts)",
            )  # fmt: skip
        unwritable = sorted({h.own_dir for h in hierarchies if not os.access(h.own_dir, os.W_OK)})
        if unwritable:
            return Check(
                "cgroup controllers", FAIL, f"cannot create cgroups in {', '.join(unwritable)}",
                "run as root, with /sys/fs/cgroup mounted read-write",
            )  # fmt: skip
        notes = [f"{c} hierarchy missing" for c in V1_WANTED if c not in present]
        memory_dir = present["memory"].own_dir
        if not os.path.exists(os.path.join(memory_dir, "memory.memsw.limit_in_bytes")):
            notes.append("no swap accounting (memory.memsw), so a sandbox could swap past its cap")
        detail = f"v1 {', '.join(sorted(present))} writable at the service's cgroups"
        if notes:
            return Check(
                "cgroup controllers", WARN, f"{detail}; {'; '.join(notes)}",
                "boot with swapaccount=1, and mount the missing hierarchies",
            )  # fmt: skip
        return Check("cgroup controllers", PASS, detail)
    return Check("cgroup controllers", FAIL, "no cgroup hierarchy to create sandboxes in", "mount cgroup2")


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


def _meminfo() -> dict[str, int]:
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    return values


def check_memory(settings: Settings, available_bytes: int | None = None) -> Check:
    available = _meminfo().get("MemAvailable", 0) if available_bytes is None else available_bytes
    largest = settings.resource_limits.memory_mb << 20
    busy = settings.max_concurrent_cycles * (settings.sandbox_default_memory_mb << 20)
    gib = 1 << 30
    detail = (
        f"{available / gib:.1f} GiB available; one sandbox may take {largest / gib:.1f} GiB "
        f"(resourceLimits.memory), {settings.max_concurrent_cycles} cycles at the default cap "
        f"{busy / gib:.1f} GiB"
    )
    if available < largest:
        return Check(
            "memory", FAIL, detail,
            "lower resourceLimits.memory in the scaling JSON, or free memory on the host",
        )  # fmt: skip
    if available < busy:
        return Check(
            "memory", WARN, detail,
            "lower PETALS_MAX_CONCURRENT_CYCLES or SANDBOX_DEFAULT_MEMORY so that busy hours fit",
        )  # fmt: skip
    cores = os.cpu_count() or 1
    if settings.resource_limits.cpu_cores > cores:
        return Check(
            "memory", WARN, f"{detail}; resourceLimits.cpu is {settings.resource_limits.cpu_cores:g} cores "
            f"but the host has {cores}",
            "lower resourceLimits.cpu to the host's core count",
        )  # fmt: skip
    return Check("memory", PASS, detail)


def check_gpus(settings: Settings, dev_dir: Path = Path("/dev"), proc_dir: Path | None = None) -> Check:
    proc_dir = proc_dir or Path("/proc/driver/nvidia/gpus")
    found = gpus.discover(dev_dir, proc_dir)
    wanted = settings.resource_limits.gpu_count
    if not found:
        if wanted:
            return Check(
                "gpus", WARN, f"no GPU device nodes (/dev/nvidia<N>); resourceLimits.gpu is {wanted}, so "
                "sandboxes asking for a GPU will be refused",
                "install the NVIDIA driver (nvidia-smi lists the GPUs; nvidia-modprobe creates the nodes), "
                "or set resourceLimits.gpu to 0",
            )  # fmt: skip
        return Check("gpus", PASS, "no GPUs, and none offered (resourceLimits.gpu is 0)")
    problems = []
    for device in found:
        try:
            mode = os.stat(device.device).st_mode
        except OSError as exc:
            problems.append(f"{device.device}: {exc.strerror}")
            continue
        if not stat.S_ISCHR(mode):
            problems.append(f"{device.device} is not a character device")
        elif not os.access(device.device, os.R_OK | os.W_OK):
            problems.append(f"{device.device} is not readable and writable")
    for control in ("nvidiactl", "nvidia-uvm"):
        node = dev_dir / control
        if not node.exists() or not stat.S_ISCHR(node.stat().st_mode):
            problems.append(f"{node} is missing (CUDA needs it)")
    listing = ", ".join(f"{d.device}" + (f" {d.uuid}" if d.uuid else " (no driver UUID)") for d in found)
    if problems:
        return Check(
            "gpus", FAIL, f"{len(found)} GPU(s): {listing}; {'; '.join(problems)}",
            "load the driver and create the nodes: nvidia-modprobe -u -c=0 (or nvidia-smi once as root)",
        )  # fmt: skip
    if wanted > len(found):
        return Check(
            "gpus", WARN, f"{len(found)} GPU(s): {listing}; resourceLimits.gpu is {wanted}",
            f"set resourceLimits.gpu to at most {len(found)}",
        )  # fmt: skip
    if not any(d.uuid for d in found):
        return Check(
            "gpus", WARN, f"{len(found)} GPU(s): {listing}; the driver reports no UUIDs",
            "load the nvidia kernel module so /proc/driver/nvidia/gpus exists",
        )  # fmt: skip
    return Check("gpus", PASS, f"{len(found)} GPU(s) with device nodes: {listing}")


def check_state_dir(state_dir: Path) -> Check:
    path = state_dir.resolve()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return Check(
            "state dir",
            FAIL,
            f"{probe} is not a directory",
            f"choose a directory for --state-dir, not {probe}",
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        return Check(
            "state dir", FAIL, f"{probe} is not writable", f"chown root {probe}, or pick another --state-dir"
        )
    point, fstype, options = _mount_of(probe)
    detail = f"{path} on {fstype} ({point})"
    if "ro" in options.split(","):
        return Check("state dir", FAIL, f"{detail} is mounted read-only", "choose a read-write filesystem")
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse"):
        return Check(
            "state dir", WARN, f"{detail}: SQLite's WAL needs a local filesystem",
            "put the state dir on a local disk (the unit's default is /var/lib/wondercraft)",
        )  # fmt: skip
    if fstype == "tmpfs":
        return Check(
            "state dir", WARN, f"{detail}: models and state are lost at reboot",
            "put the state dir on a disk (the unit's default is /var/lib/wondercraft)",
        )  # fmt: skip
    free = shutil.disk_usage(probe).free
    if free < MIN_STATE_FREE_BYTES:
        return Check(
            "state dir",
            WARN,
            f"{detail}: only {free >> 20} MiB free",
            "free space: models are kept per version",
        )
    if path.exists() and path.stat().st_mode & 0o077:
        return Check(
            "state dir", WARN, f"{detail} is readable by others (mode {path.stat().st_mode & 0o777:04o})",
            f"chmod 700 {path}",
        )  # fmt: skip
    return Check("state dir", PASS, f"{detail}, {free >> 30} GiB free")


def check_launcher(binary: Path | None = None) -> Check:
    """The launcher is built, current, and statically linked: a dynamic one is refused (it
    runs as root in the host's namespaces, where a dynamic loader reads its environment)."""
    import native

    binary = binary or native.SOURCE.with_name(native.LAUNCHER_NAME)
    if not binary.exists() or not os.access(binary, os.X_OK):
        return Check(
            "launcher",
            FAIL,
            f"{binary} is not built",
            "reinstall the package (pip install -e .) to build wc-init",
        )
    linkage = native.linkage(binary)
    if linkage != "static":
        return Check(
            "launcher", FAIL, f"{binary} is {linkage}: refused, the service runs only a statically linked launcher",
            "install a static libc (Debian: libc6-dev) and reinstall; the build fails rather than link dynamically",
        )  # fmt: skip
    if native.SOURCE.exists() and binary.stat().st_mtime < native.SOURCE.stat().st_mtime:
        return Check(
            "launcher", WARN, f"{binary} (static) is older than its source", "rebuild: pip install -e ."
        )
    return Check("launcher", PASS, f"{binary} is built and statically linked")


def check_sandbox_uids(
    settings: Settings, passwd: Path = Path("/etc/passwd"), group: Path = Path("/etc/group")
) -> Check:
    """The sandbox uid range: no host account or group in it, no process running as one."""
    from runtime import uids

    uid_range = uids.UidRange.parse(settings.sandbox_uid_range)
    detail = f"range {uid_range} ({uid_range.size} uids, one per live sandbox)"
    accounts = uids.accounts_in_range(uid_range, passwd, group)
    if accounts:
        return Check(
            "sandbox uids", FAIL, f"{detail} holds host accounts: {', '.join(accounts[:5])}",
            "set SANDBOX_UID_RANGE to a range no account or group uses",
        )  # fmt: skip
    running = uids.running_uids(uid_range)
    if running:
        return Check(
            "sandbox uids", WARN, f"{detail}: processes run as {', '.join(map(str, sorted(running)[:5]))}; "
            "those uids stay unused",
            "stop them (a previous run's sandboxes?) or pick another SANDBOX_UID_RANGE",
        )  # fmt: skip
    return Check("sandbox uids", PASS, f"{detail}; no host account uses it, no process runs as it")


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """A check that cannot be carried out is a failure to report, never a crash of the report."""
    try:
        return check()
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return Check(
            name, FAIL, f"could not be checked: {exc.strerror or exc}{where}", "run preflight as root"
        )
    except Exception as exc:  # noqa: BLE001 - the operator gets a line, not a traceback
        return Check(name, FAIL, f"could not be checked: {exc}", "report this with the detail above")


def run(state_dir: Path, config_path: Path | None = None) -> list[Check]:
    """Every check, in the order an operator fixes them."""
    mode = detect_mode()
    checks = [
        _guarded("root", check_root),
        _guarded("capabilities", check_capabilities),
        _guarded("kernel", check_kernel),
        _guarded("cgroup mode", lambda: check_cgroup_mode(mode)),
        _guarded("cgroup controllers", lambda: check_cgroup_controllers(mode)),
        _guarded("overlay and tmpfs", check_overlay),
        _guarded("namespaces", check_namespaces),
        _guarded("user namespaces", check_user_namespaces),
        _guarded("seccomp", check_seccomp),
    ]
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        checks.append(
            Check("configuration", FAIL, exc.message, "fix the variable or the scaling JSON it names")
        )
        settings = Settings()
    checks += [
        _guarded("memory", lambda: check_memory(settings)),
        _guarded("gpus", lambda: check_gpus(settings)),
        _guarded("state dir", lambda: check_state_dir(state_dir)),
        _guarded("launcher", check_launcher),
        _guarded("sandbox uids", lambda: check_sandbox_uids(settings)),
    ]
    return checks
