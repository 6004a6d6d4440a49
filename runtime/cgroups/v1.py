"""cgroup v1 backend (v1 and hybrid hosts), driven through cgroupspy nodes and controllers.

A sandbox is one directory per hierarchy (cpu, cpuacct, memory, pids, blkio, freezer),
`<own>/wondercraft-<instance>/<name>` where `<own>` is this process's cgroup in that
hierarchy. Killing freezes the sandbox first so no process can fork past the SIGKILL."""

from __future__ import annotations

import os
import signal
import threading

from cgroupspy.controllers import (
    BlkIOController,
    Controller,
    CpuAcctController,
    CpuController,
    MemoryController,
)
from cgroupspy.nodes import Node

from . import PARENT_PREFIX, V1Hierarchy, check_name, v1_hierarchies
from .base import CgroupBackend, CgroupError, CgroupLimits, CgroupUsage, SandboxCgroup
from .files import (
    child_dirs,
    read_int,
    read_keyed,
    read_pids,
    read_text,
    remove_if_empty,
    remove_tree,
    wait_until,
    write_value,
)

CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel's floor for cpu.cfs_quota_us
KILL_TIMEOUT_S = 10.0
FREEZE_TIMEOUT_S = 1.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Hierarchies where an execution gets a child of the sandbox's cgroup: freezer to end it
# as a whole, memory, pids and cpuacct for its own counters. Elsewhere (blkio) it joins
# the sandbox's cgroup itself.
EXECUTION_CONTROLLERS = ("freezer", "memory", "pids", "cpuacct")


class _Node(Node):
    """A cgroupspy node that knows its path: cgroupspy recomputes it up the whole parent
    chain on every access, which was a third of the cost of creating a sandbox cgroup."""

    def __init__(self, name: bytes | str, parent: Node | None = None) -> None:
        super().__init__(name, parent=parent)
        self._full_path = os.path.join(parent.full_path, self.name) if parent is not None else self.name

    @property
    def full_path(self) -> bytes:
        return self._full_path


def _node_for_dir(path: str) -> Node:
    """A cgroupspy node chain for one known directory, without scanning the hierarchy
    (cgroupspy's trees walk every cgroup, which grows with the host's cgroup count)."""
    node = _Node(b"/")
    for component in path.encode().strip(b"/").split(b"/"):
        node = _Node(component, parent=node)
    return node


def _path(node: Node) -> str:
    return node.full_path.decode()


class V1SandboxCgroup(SandboxCgroup):
    def __init__(
        self, name: str, nodes: dict[tuple[str, ...], Node], joined_elsewhere: tuple[str, ...] = ()
    ) -> None:
        """nodes: the sandbox's node in each hierarchy, keyed by the controllers it carries;
        joined_elsewhere: cgroup.procs files of hierarchies where an execution has no child
        and joins its sandbox's cgroup instead."""
        self.name = name
        self.nodes = nodes
        self.paths = [_path(node) for node in nodes.values()]
        self._freezer = self._node_with("freezer")
        self._joined_elsewhere = joined_elsewhere

    def __repr__(self) -> str:
        return f"<V1SandboxCgroup {self.name} in {len(self.paths)} hierarchies>"

    def _node_with(self, controller: str) -> Node | None:
        for controllers, node in self.nodes.items():
            if controller in controllers:
                return node
        return None

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(path, "cgroup.procs") for path in self.paths] + list(self._joined_elsewhere)

    def create_execution(self, name: str) -> V1SandboxCgroup:
        check_name(name, "execution cgroup name")
        nodes: dict[tuple[str, ...], Node] = {}
        elsewhere = []
        try:
            for key, parent in self.nodes.items():
                if not any(c in EXECUTION_CONTROLLERS for c in key):
                    elsewhere.append(os.path.join(_path(parent), "cgroup.procs"))
                    continue
                node = _Node(name, parent=parent)
                os.mkdir(node.full_path)
                nodes[key] = node
        except FileNotFoundError:
            V1SandboxCgroup(name, nodes).destroy()
            raise CgroupError(f"sandbox cgroup {self.name} no longer exists") from None
        except BaseException:
            V1SandboxCgroup(name, nodes).destroy()
            raise
        return V1SandboxCgroup(name, nodes, tuple(elsewhere))

    def add_pid(self, pid: int) -> None:
        for procs in self.procs_files:
            try:
                write_value(procs, pid)
            except FileNotFoundError:
                raise CgroupError(f"cannot add pid {pid}: {os.path.dirname(procs)} does not exist") from None

    def pids(self) -> list[int]:
        pids: set[int] = set()
        for path in self.paths:
            pids.update(read_pids(os.path.join(path, "cgroup.procs")))
            # v1's cgroup.procs lists only its own members: executions' children too.
            for child in child_dirs(path):
                for dirpath, _dirs, _files in os.walk(os.path.join(path, child)):
                    pids.update(read_pids(os.path.join(dirpath, "cgroup.procs")))
        return sorted(pids)

    def usage(self) -> CgroupUsage:
        if not any(os.path.isdir(path) for path in self.paths):
            raise CgroupError(f"no usage for sandbox cgroup {self.name}: it no longer exists")
        usage = CgroupUsage()
        cpuacct = self._node_with("cpuacct")
        if cpuacct is not None:
            controller = CpuAcctController(cpuacct)
            user_ns = read_int(controller.filepath(b"cpuacct.usage_user").decode())
            system_ns = read_int(controller.filepath(b"cpuacct.usage_sys").decode())
            if user_ns is not None and system_ns is not None:
                usage.cpu_user_s, usage.cpu_system_s = user_ns / 1e9, system_ns / 1e9
            else:
                # Older kernels: only cpuacct.stat, in clock ticks.
                ticks = controller.get_content("acct_stat")
                if ticks:
                    usage.cpu_user_s = ticks.get("user", 0) / _CLOCK_TICKS
                    usage.cpu_system_s = ticks.get("system", 0) / _CLOCK_TICKS
        # The counters read on every execution are plain files, read directly: cgroupspy's
        # per-file parsing cost ~0.1 ms each on the exec path.
        cpu = self._node_with("cpu")
        if cpu is not None:
            stat = read_keyed(os.path.join(_path(cpu), "cpu.stat"))
            if stat:
                usage.cpu_nr_throttled = stat.get("nr_throttled")
                usage.cpu_throttled_s = stat.get("throttled_time", 0) / 1e9
        memory_node = self._node_with("memory")
        if memory_node is not None:
            memory_dir = _path(memory_node)
            usage.memory_current_bytes = read_int(os.path.join(memory_dir, "memory.usage_in_bytes"))
            usage.memory_peak_bytes = read_int(os.path.join(memory_dir, "memory.max_usage_in_bytes"))
            # With memsw set to the same limit, hits are counted on memsw.failcnt.
            failcnts = [
                read_int(os.path.join(memory_dir, f)) for f in ("memory.failcnt", "memory.memsw.failcnt")
            ]
            usage.memory_max_events = sum(n for n in failcnts if n is not None)
            oom_control = read_keyed(os.path.join(memory_dir, "memory.oom_control"))
            if oom_control is not None:
                usage.oom_kills = oom_control.get("oom_kill", 0)
        pids_node = self._node_with("pids")
        if pids_node is not None:
            usage.pids_current = read_int(os.path.join(_path(pids_node), "pids.current"))
            events = read_keyed(os.path.join(_path(pids_node), "pids.events"))
            usage.pids_max_events = (events or {}).get("max", 0)
        blkio = self._node_with("blkio")
        if blkio is not None:
            text = read_text(os.path.join(_path(blkio), "blkio.throttle.io_service_bytes"))
            if text is not None:
                totals = {"Read": 0, "Write": 0}
                for line in text.splitlines():
                    fields = line.split()
                    # "MAJ:MIN Read 4096" per device and operation; the last line is "Total N".
                    if len(fields) == 3 and fields[1] in totals:
                        totals[fields[1]] += int(fields[2])
                usage.io_read_bytes, usage.io_write_bytes = totals["Read"], totals["Write"]
        return usage

    def kill(self, timeout_s: float = KILL_TIMEOUT_S) -> None:
        if not self.pids():
            return  # the common case once an exec has finished
        freezer = Controller(self._freezer) if self._freezer is not None else None
        if not wait_until(lambda: self._kill_round(freezer), timeout_s):
            raise CgroupError(
                f"sandbox cgroup {self.name} still holds pids {self.pids()} {timeout_s:g}s after SIGKILL; "
                "expected it to empty (a process stuck in uninterruptible sleep?)"
            )

    def _kill_round(self, freezer: Controller | None) -> bool:
        """Freeze, SIGKILL everything inside, thaw; True once the cgroup is empty.

        While frozen nothing inside can fork or exit, so the pids read from
        cgroup.procs are all there is and none can have been reused."""
        pids = self.pids()
        if not pids:
            return True
        frozen = False
        if freezer is not None and os.path.isdir(_path(freezer.node)):
            try:
                freezer.set_property(b"freezer.state", "FROZEN")
                frozen = True
                wait_until(lambda: freezer.get_property(b"freezer.state") == "FROZEN", FREEZE_TIMEOUT_S)
                pids = self.pids()
            except OSError:
                pass  # removed meanwhile: kill without the freeze
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if frozen:
            try:
                # Frozen tasks die only once thawed.
                freezer.set_property(b"freezer.state", "THAWED")
            except OSError:
                pass
        return wait_until(lambda: not self.pids(), 0.2)

    def remove_if_empty(self) -> bool:
        return remove_if_empty(self.paths)

    def destroy(self) -> None:
        def destroy_child(parent: str, child: str) -> None:
            key = ("child",)
            V1SandboxCgroup(child, {key: _node_for_dir(os.path.join(parent, child))}).destroy()

        # The first try kills nothing: an execution's cgroup is normally empty by now, and a
        # refused rmdir costs less than listing every hierarchy's members.
        remove_tree(
            self.paths, attempts=5, kill=self.kill, destroy_child=destroy_child,
            pids_of=lambda path: read_pids(path + "/cgroup.procs"), kill_first=False,
        )  # fmt: skip


class V1CgroupBackend(CgroupBackend):
    mode = "v1"

    def __init__(self, instance: str, hierarchies: list[V1Hierarchy] | None = None) -> None:
        """hierarchies: where to work (default: every mounted one carrying a sandbox controller)."""
        self.instance = check_name(instance, "cgroup instance name")
        self.hierarchies = v1_hierarchies() if hierarchies is None else hierarchies
        if not self.hierarchies:
            raise CgroupError(
                "no v1 cgroup hierarchy to work in; expected /sys/fs/cgroup/<controller> mounts"
            )
        self.own_nodes = {h.controllers: _node_for_dir(h.own_dir) for h in self.hierarchies}
        self.parent_nodes = {
            key: _Node(PARENT_PREFIX + instance, parent=node) for key, node in self.own_nodes.items()
        }
        self.controllers = tuple(c for h in self.hierarchies for c in h.controllers)
        self._prepared = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<V1CgroupBackend {PARENT_PREFIX}{self.instance} in {', '.join(self.controllers)}>"

    @property
    def parent_dirs(self) -> list[str]:
        return [_path(node) for node in self.parent_nodes.values()]

    def prepare(self) -> None:
        with self._lock:
            if self._prepared:
                return
            for key, own in self.own_nodes.items():
                # cgroupspy's create_cgroup tolerates an existing directory, which
                # is what a restarted service finds.
                own.create_cgroup(PARENT_PREFIX + self.instance)
                self.parent_nodes[key] = _Node(PARENT_PREFIX + self.instance, parent=own)
            self._prepared = True

    def create(self, name: str, limits: CgroupLimits, *, executions: bool = False) -> V1SandboxCgroup:
        check_name(name)
        if not self._prepared:
            self.prepare()
        nodes: dict[tuple[str, ...], Node] = {}
        try:
            for key, parent in self.parent_nodes.items():
                node = _Node(name, parent=parent)
                try:
                    os.mkdir(node.full_path)
                except FileExistsError:
                    raise CgroupError(
                        f"sandbox cgroup {_path(node)} already exists; expected a fresh name (open() re-attaches)"
                    ) from None
                nodes[key] = node
            cgroup = V1SandboxCgroup(name, nodes)
            self._apply(cgroup, limits)
        except BaseException:
            # Remove only what this call made: an existing name is someone's sandbox.
            V1SandboxCgroup(name, nodes).destroy()
            raise
        return cgroup

    def retune(self, cgroup: V1SandboxCgroup, limits: CgroupLimits) -> None:
        self._apply(cgroup, limits)

    def _require(self, cgroup: V1SandboxCgroup, controller: str, what: str) -> Node:
        node = cgroup._node_with(controller)
        if node is None:
            raise CgroupError(
                f"{what} needs the v1 {controller} hierarchy, which is not mounted here "
                f"(found {', '.join(self.controllers)}); expected /sys/fs/cgroup/{controller}"
            )
        return node

    def _apply(self, cgroup: V1SandboxCgroup, limits: CgroupLimits) -> None:
        memory_node = cgroup._node_with("memory")
        if memory_node is not None:
            # No swap for sandboxes: a memory cap that spills into swap is no cap.
            MemoryController(memory_node).swappiness = 0
        if limits.cpu_cores is not None:
            if not limits.cpu_cores > 0:
                raise ValueError(f"cpu_cores must be a positive number of cores, got {limits.cpu_cores!r}")
            cpu = CpuController(self._require(cgroup, "cpu", "a cpu limit"))
            cpu.cfs_period_us = CPU_PERIOD_US
            cpu.cfs_quota_us = max(MIN_CPU_QUOTA_US, round(limits.cpu_cores * CPU_PERIOD_US))
        if limits.memory_mb is not None:
            if not (isinstance(limits.memory_mb, int) and limits.memory_mb > 0):
                raise ValueError(f"memory_mb must be a positive integer, got {limits.memory_mb!r}")
            memory = MemoryController(self._require(cgroup, "memory", "a memory limit"))
            limit_bytes = limits.memory_mb << 20
            # limit_in_bytes first: memsw may never be below it.
            memory.limit_in_bytes = limit_bytes
            if os.path.exists(memory.filepath(b"memory.memsw.limit_in_bytes")):
                memory.memsw_limit_in_bytes = limit_bytes
        if limits.pids_max is not None:
            if not (isinstance(limits.pids_max, int) and limits.pids_max > 0):
                raise ValueError(f"pids_max must be a positive integer, got {limits.pids_max!r}")
            pids = Controller(self._require(cgroup, "pids", "a pids limit"))
            pids.set_property(b"pids.max", limits.pids_max)
        if limits.io_read_bps or limits.io_write_bps:
            blkio = BlkIOController(self._require(cgroup, "blkio", "an io limit"))
            # cgroupspy's write_bps_device name carries a stray space, so both
            # files are written by name.
            for filename, per_device in (
                (b"blkio.throttle.read_bps_device", limits.io_read_bps),
                (b"blkio.throttle.write_bps_device", limits.io_write_bps),
            ):
                for device, bps in per_device.items():
                    blkio.set_property(filename, f"{device} {int(bps)}")

    def _nodes_for(self, name: str) -> dict[tuple[str, ...], Node]:
        return {key: _Node(name, parent=parent) for key, parent in self.parent_nodes.items()}

    def open(self, name: str) -> V1SandboxCgroup | None:
        check_name(name)
        nodes = self._nodes_for(name)
        # Half-created sandboxes count too, so that recovery can destroy them.
        if not any(os.path.isdir(node.full_path) for node in nodes.values()):
            return None
        return V1SandboxCgroup(name, nodes)

    def list_names(self) -> list[str]:
        names: set[str] = set()
        for path in self.parent_dirs:
            names.update(child_dirs(path))
        return sorted(names)

    def teardown(self) -> None:
        left = self.list_names()
        if left:
            raise CgroupError(
                f"cannot remove {PARENT_PREFIX}{self.instance}: sandbox cgroups {left} still exist; "
                "expected them destroyed first"
            )
        for own in self.own_nodes.values():
            own.delete_cgroup(PARENT_PREFIX + self.instance)
        with self._lock:
            self._prepared = False
