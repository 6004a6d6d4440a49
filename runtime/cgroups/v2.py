"""cgroup v2 backend: each sandbox is one directory, `<root>/wondercraft-<instance>/<name>`.

`<root>` is the cgroup the service was started in. The service moves itself into
`<root>/supervisor` first, because v2 lets only cgroups without processes of their
own hand controllers (cpu, memory, pids, io) down to children."""

from __future__ import annotations

import errno
import os
import signal
import threading

from . import PARENT_PREFIX, SUPERVISOR_LEAF, CgroupMount, cgroup_dir, check_name, own_cgroup_v2, v2_mount
from .base import CgroupBackend, CgroupError, CgroupLimits, CgroupUsage, SandboxCgroup
from .files import (
    child_dirs,
    read_int,
    read_keyed,
    read_pids,
    read_psi,
    read_text,
    remove_if_empty,
    remove_tree,
    rmdir,
    wait_until,
    write_value,
)

WANTED_CONTROLLERS = ("cpu", "memory", "pids", "io")
# Enabled below a sandbox for its executions' own counters (memory.peak, oom_kill, pids.peak);
# cpu.stat's usage figures need no controller.
EXECUTION_CONTROLLERS = ("memory", "pids")
INIT_LEAF = "init"
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel's floor for cpu.max
KILL_TIMEOUT_S = 10.0


def _populated(path: str) -> bool | None:
    """cgroup.events' populated flag (this cgroup and descendants); None when gone."""
    events = read_keyed(os.path.join(path, "cgroup.events"))
    return None if events is None else bool(events.get("populated", 0))


class V2SandboxCgroup(SandboxCgroup):
    def __init__(self, name: str, path: str, *, leaves: bool = False, oom_group: bool = False) -> None:
        """leaves: the sandbox's processes live in child cgroups (init and executions);
        oom_group: executions get memory.oom.group (memory is enabled below)."""
        self.name = name
        self.path = path
        self.leaves = leaves
        self._oom_group = oom_group

    def __repr__(self) -> str:
        return f"<V2SandboxCgroup {self.path}>"

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(self.path, "cgroup.procs")]

    @property
    def init_procs_files(self) -> list[str]:
        if self.leaves:
            return [os.path.join(self.path, INIT_LEAF, "cgroup.procs")]
        return self.procs_files

    def add_pid(self, pid: int) -> None:
        try:
            write_value(self.init_procs_files[0], pid)
        except FileNotFoundError:
            raise CgroupError(f"cannot add pid {pid}: sandbox cgroup {self.path} does not exist") from None

    def pids(self) -> list[int]:
        if not self.leaves:
            return read_pids(os.path.join(self.path, "cgroup.procs"))
        return sorted(self._all_pids())

    def create_execution(self, name: str) -> V2SandboxCgroup:
        check_name(name, "execution cgroup name")
        path = os.path.join(self.path, name)
        try:
            os.mkdir(path)
        except FileNotFoundError:
            raise CgroupError(f"sandbox cgroup {self.path} no longer exists") from None
        if self._oom_group:
            # One OOM kill ends this execution's whole tree, and nothing else of the sandbox.
            write_value(os.path.join(path, "memory.oom.group"), "1")
        return V2SandboxCgroup(name, path)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def usage(self) -> CgroupUsage:
        if not os.path.isdir(self.path):
            raise CgroupError(f"no usage for sandbox cgroup {self.path}: it no longer exists")
        usage = CgroupUsage()
        cpu = read_keyed(self._file("cpu.stat"))
        if cpu is not None:
            # user_usec/system_usec are there even without the cpu controller.
            usage.cpu_user_s = cpu.get("user_usec", 0) / 1e6
            usage.cpu_system_s = cpu.get("system_usec", 0) / 1e6
            if "nr_throttled" in cpu:
                usage.cpu_nr_throttled = cpu["nr_throttled"]
                usage.cpu_throttled_s = cpu.get("throttled_usec", 0) / 1e6
        usage.memory_current_bytes = read_int(self._file("memory.current"))
        peak = read_int(self._file("memory.peak"))
        usage.memory_peak_bytes = peak if peak is not None else usage.memory_current_bytes
        memory_events = read_keyed(self._file("memory.events"))
        if memory_events is not None:
            usage.oom_kills = memory_events.get("oom_kill", 0)
            usage.memory_max_events = memory_events.get("max", 0)
        usage.pids_current = read_int(self._file("pids.current"))
        usage.pids_peak = read_int(self._file("pids.peak"))
        pids_events = read_keyed(self._file("pids.events"))
        if pids_events is not None:
            usage.pids_max_events = pids_events.get("max", 0)
        io = read_text(self._file("io.stat"))
        if io is not None:
            read_bytes = write_bytes = 0
            for line in io.splitlines():
                for field in line.split()[1:]:
                    key, _, value = field.partition("=")
                    if key == "rbytes":
                        read_bytes += int(value)
                    elif key == "wbytes":
                        write_bytes += int(value)
            usage.io_read_bytes, usage.io_write_bytes = read_bytes, write_bytes
        psi = {}
        for resource in ("cpu", "memory", "io"):
            pressure = read_psi(self._file(f"{resource}.pressure"))
            if pressure is not None:
                psi[resource] = pressure
        usage.psi = psi or None
        return usage

    def kill(self, timeout_s: float = KILL_TIMEOUT_S) -> None:
        if not _populated(self.path):
            return  # empty or gone: the common case once an exec has finished
        try:
            write_value(self._file("cgroup.kill"), "1")
        except FileNotFoundError:
            if not os.path.isdir(self.path):
                return
            self._freeze_and_kill(timeout_s)  # kernels before 5.14 have no cgroup.kill
            return
        self._wait_empty(timeout_s)

    def _freeze_and_kill(self, timeout_s: float = KILL_TIMEOUT_S) -> None:
        """SIGKILL every process while the cgroup is frozen, so none can fork or
        exit (and have its pid reused) between reading cgroup.procs and the kill."""
        write_value(self._file("cgroup.freeze"), "1")
        wait_until(lambda: (read_keyed(self._file("cgroup.events")) or {}).get("frozen") != 0, timeout_s)
        for pid in self._all_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        write_value(self._file("cgroup.freeze"), "0")
        self._wait_empty(timeout_s)

    def _all_pids(self) -> list[int]:
        pids = []
        for dirpath, _dirs, _files in os.walk(self.path):
            pids += read_pids(os.path.join(dirpath, "cgroup.procs"))
        return pids

    def _wait_empty(self, timeout_s: float) -> None:
        if not wait_until(lambda: not _populated(self.path), timeout_s):
            raise CgroupError(
                f"sandbox cgroup {self.path} still holds pids {self._all_pids()} {timeout_s:g}s after "
                "SIGKILL; expected it to empty (a process stuck in uninterruptible sleep?)"
            )

    def remove_if_empty(self) -> bool:
        return remove_if_empty([self.path])

    def destroy(self) -> None:
        def destroy_child(parent: str, child: str) -> None:
            V2SandboxCgroup(child, os.path.join(parent, child)).destroy()

        # With leaves, the init leaf and the executions still listed are empty after kill().
        remove_tree(
            [self.path], attempts=4, kill=self.kill, destroy_child=destroy_child,
            pids_of=lambda _path: self._all_pids(), children_first=self.leaves,
        )  # fmt: skip


class V2CgroupBackend(CgroupBackend):
    mode = "v2"

    def __init__(self, instance: str, mount: CgroupMount | None = None) -> None:
        """mount: the cgroup2 mount to work in (default: the one at /sys/fs/cgroup)."""
        self.instance = check_name(instance, "cgroup instance name")
        mount = mount or v2_mount()
        if mount is None:
            raise CgroupError("no cgroup2 mount in /proc/self/mountinfo; expected one at /sys/fs/cgroup")
        self.mount = mount
        own_dir = cgroup_dir(mount, own_cgroup_v2())
        # Already in the supervisor leaf (moved earlier, or systemd's
        # DelegateSubgroup=supervisor): the delegated root is its parent.
        if os.path.basename(own_dir) == SUPERVISOR_LEAF:
            own_dir = os.path.dirname(own_dir)
        self.root_dir = own_dir
        self.supervisor_dir = os.path.join(own_dir, SUPERVISOR_LEAF)
        self.parent_dir = os.path.join(own_dir, PARENT_PREFIX + instance)
        self.controllers: tuple[str, ...] = ()
        self._prepared = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<V2CgroupBackend {self.parent_dir}>"

    def prepare(self) -> None:
        with self._lock:
            if self._prepared:
                return
            os.makedirs(self.supervisor_dir, exist_ok=True)
            if cgroup_dir(self.mount, own_cgroup_v2()) != self.supervisor_dir:
                write_value(os.path.join(self.supervisor_dir, "cgroup.procs"), os.getpid())
            available = (read_text(os.path.join(self.root_dir, "cgroup.controllers")) or "").split()
            self.controllers = tuple(c for c in WANTED_CONTROLLERS if c in available)
            self._enable_controllers(self.root_dir)
            os.makedirs(self.parent_dir, exist_ok=True)
            self._enable_controllers(self.parent_dir)
            self._prepared = True

    def _enable_controllers(self, path: str) -> None:
        subtree_control = os.path.join(path, "cgroup.subtree_control")
        enabled = (read_text(subtree_control) or "").split()
        missing = [c for c in self.controllers if c not in enabled]
        if not missing:
            return
        try:
            write_value(subtree_control, " ".join("+" + c for c in missing))
        except CgroupError as e:
            if isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.EBUSY:
                others = read_pids(os.path.join(path, "cgroup.procs"))
                raise CgroupError(
                    f"cannot enable {' '.join(missing)} in {subtree_control}: processes {others} still "
                    f"live in {path}; expected only the service, which moved into {self.supervisor_dir}"
                ) from e
            raise

    def create(self, name: str, limits: CgroupLimits, *, executions: bool = False) -> V2SandboxCgroup:
        check_name(name)
        if not self._prepared:
            self.prepare()
        path = os.path.join(self.parent_dir, name)
        try:
            os.mkdir(path)
        except FileExistsError:
            raise CgroupError(
                f"sandbox cgroup {path} already exists; expected a fresh name (open() re-attaches)"
            ) from None
        below = tuple(c for c in EXECUTION_CONTROLLERS if c in self.controllers) if executions else ()
        cgroup = V2SandboxCgroup(name, path, leaves=executions, oom_group="memory" in below)
        try:
            self._apply(path, limits, oom_group=not executions)
            if executions:
                os.mkdir(os.path.join(path, INIT_LEAF))
                if below:
                    write_value(
                        os.path.join(path, "cgroup.subtree_control"), " ".join("+" + c for c in below)
                    )
        except BaseException:
            cgroup.destroy()
            raise
        return cgroup

    def retune(self, cgroup: V2SandboxCgroup, limits: CgroupLimits) -> None:
        self._apply(cgroup.path, limits, oom_group=not cgroup.leaves)

    def _require(self, controller: str, what: str) -> None:
        if controller not in self.controllers:
            raise CgroupError(
                f"{what} needs the {controller} controller, which {self.root_dir} does not offer "
                f"(it offers {' '.join(self.controllers) or 'none'}); expected it delegated"
            )

    def _apply(self, path: str, limits: CgroupLimits, *, oom_group: bool = True) -> None:
        if "memory" in self.controllers:
            # One OOM kill takes the whole group down: a half-killed training process
            # tree is worse than a clean memory_limit verdict. With executions, each
            # execution is that group instead of the whole sandbox.
            if oom_group:
                write_value(os.path.join(path, "memory.oom.group"), "1")
            swap_max = os.path.join(path, "memory.swap.max")
            if os.path.exists(swap_max):
                write_value(swap_max, "0")
        if limits.cpu_cores is not None:
            if not limits.cpu_cores > 0:
                raise ValueError(f"cpu_cores must be a positive number of cores, got {limits.cpu_cores!r}")
            self._require("cpu", "a cpu limit")
            quota = max(MIN_CPU_QUOTA_US, round(limits.cpu_cores * CPU_PERIOD_US))
            write_value(os.path.join(path, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
        if limits.memory_mb is not None:
            if not (isinstance(limits.memory_mb, int) and limits.memory_mb > 0):
                raise ValueError(f"memory_mb must be a positive integer, got {limits.memory_mb!r}")
            self._require("memory", "a memory limit")
            write_value(os.path.join(path, "memory.max"), limits.memory_mb << 20)
        if limits.pids_max is not None:
            if not (isinstance(limits.pids_max, int) and limits.pids_max > 0):
                raise ValueError(f"pids_max must be a positive integer, got {limits.pids_max!r}")
            self._require("pids", "a pids limit")
            write_value(os.path.join(path, "pids.max"), limits.pids_max)
        devices = sorted(set(limits.io_read_bps) | set(limits.io_write_bps))
        if devices:
            self._require("io", "an io limit")
        for device in devices:
            fields = [device]
            if device in limits.io_read_bps:
                fields.append(f"rbps={int(limits.io_read_bps[device])}")
            if device in limits.io_write_bps:
                fields.append(f"wbps={int(limits.io_write_bps[device])}")
            write_value(os.path.join(path, "io.max"), " ".join(fields))

    def open(self, name: str) -> V2SandboxCgroup | None:
        check_name(name)
        path = os.path.join(self.parent_dir, name)
        if not os.path.isdir(path):
            return None
        return V2SandboxCgroup(name, path, leaves=bool(child_dirs(path)))

    def protect_service(self, reserve_bytes: int) -> dict:
        done = super().protect_service(reserve_bytes)
        if "memory" in self.controllers and reserve_bytes > 0:
            for name in ("memory.min", "memory.low"):
                try:
                    write_value(os.path.join(self.supervisor_dir, name), reserve_bytes)
                    done[name] = reserve_bytes
                except (CgroupError, OSError):
                    pass  # a parent that does not delegate protection: the oom score still holds
        return done

    def list_names(self) -> list[str]:
        return child_dirs(self.parent_dir)

    def teardown(self) -> None:
        left = self.list_names()
        if left:
            raise CgroupError(
                f"cannot remove {self.parent_dir}: sandbox cgroups {left} still exist; "
                "expected them destroyed first"
            )
        # The supervisor leaf stays: the service itself lives in it.
        rmdir(self.parent_dir)
        with self._lock:
            self._prepared = False
