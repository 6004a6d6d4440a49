"""Kernel-level audits. `scan_host` lists every cgroup, mount, network namespace, link and
launcher process on the host that carries the project's names, each tied to the live process
that owns it or marked orphaned; `sandbox_kernel_record` reads back what the kernel enforces
for one running sandbox (cgroup limits, the overlay's tmpfs size), to set beside its caps."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cgroups import PARENT_PREFIX, cgroup_mounts
from .cgroups.files import read_int, read_pids, read_text

NETNS_DIR = "/run/netns"
NETNS_PREFIX = "wc-"
LINK_PREFIX = "wc-"
LAUNCHER = "wc-init"
# Sources wc-init gives the mounts it makes inside a sandbox's private mount namespace.
MOUNT_SOURCES = ("wc-root", "wc-storage", "wc-dev", "wc-shm")
# v1 reports "no limit" as the largest page-aligned signed 64-bit value.
_V1_UNLIMITED = 1 << 62


@dataclass
class Finding:
    kind: str  # cgroup, mount, netns, link, process
    name: str
    state: str  # known or orphaned
    instance: str | None = None
    owner: str | None = None  # who holds it: "this service", "pid N (command)"
    detail: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class _Process:
    pid: int
    ppid: int
    argv: list[str]
    net_ns: tuple[int, int] | None  # (st_dev, st_ino) of /proc/PID/ns/net


def instance_of(state_dir: str | Path) -> str:
    """The instance name a service with this state dir uses (runtime.sandbox.instance_name);
    repeated here so the audit needs none of the sandbox machinery."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]


def _processes() -> dict[int, _Process]:
    found: dict[int, _Process] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
        except OSError:
            continue  # exited while we looked
        try:
            ns = os.stat(f"/proc/{pid}/ns/net")
            net_ns = (ns.st_dev, ns.st_ino)
        except OSError:
            net_ns = None
        # The command name may hold spaces and parentheses; the fields after the last ')' do not.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        found[pid] = _Process(pid, ppid, argv, net_ns)
    return found


def _is_launcher(process: _Process) -> bool:
    return bool(process.argv) and os.path.basename(process.argv[0]) == LAUNCHER


def _describe(process: _Process | None, pid: int) -> str:
    if process is None or not process.argv:
        return f"pid {pid}"
    return f"pid {pid} ({' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(process.argv[:3]))})"


def _services(processes: dict[int, _Process]) -> dict[int, dict]:
    """Running `wondercraft serve` processes: pid -> {pid, instance, stateDir}."""
    services = {}
    for process in processes.values():
        argv = process.argv
        names = [os.path.basename(a) for a in argv]
        if "wondercraft" not in names or "serve" not in argv[names.index("wondercraft") :]:
            continue
        state_dir = "./var"
        for index, arg in enumerate(argv):
            if arg == "--state-dir" and index + 1 < len(argv):
                state_dir = argv[index + 1]
            elif arg.startswith("--state-dir="):
                state_dir = arg.split("=", 1)[1]
        try:
            cwd = os.readlink(f"/proc/{process.pid}/cwd")
        except OSError:
            continue
        path = os.path.normpath(os.path.join(cwd, state_dir))
        services[process.pid] = {"pid": process.pid, "instance": instance_of(path), "stateDir": path}
    return services


def _host_of(pid: int, processes: dict[int, _Process]) -> int | None:
    """The process that started the sandbox `pid` belongs to: the first ancestor above the
    launcher(s) in its chain (the sandbox's own processes sit below its launchers). None when
    there is no launcher in the chain, or above them only PID 1 (they outlived their parent)."""
    seen: set[int] = set()
    below_launcher = False
    while pid in processes and pid not in seen:
        seen.add(pid)
        process = processes[pid]
        if _is_launcher(process):
            below_launcher = True
        elif below_launcher:
            return pid if pid > 1 else None
        pid = process.ppid
    return None


def _cgroup_pids(path: str) -> list[int]:
    pids: list[int] = []
    for dirpath, _dirs, _files in os.walk(path):
        pids += read_pids(os.path.join(dirpath, "cgroup.procs"))
    return sorted(set(pids))


def _cgroup_dirs() -> dict[str, dict[str, list[str]]]:
    """instance -> {"": [its parent dirs], name: [the sandbox cgroup's dirs]} in every hierarchy."""
    found: dict[str, dict[str, list[str]]] = {}
    seen_points: set[str] = set()
    for mount in cgroup_mounts():
        if mount.mount_point in seen_points:
            continue
        seen_points.add(mount.mount_point)
        for dirpath, dirs, _files in os.walk(mount.mount_point):
            for name in list(dirs):
                if not name.startswith(PARENT_PREFIX):
                    continue
                dirs.remove(name)  # what lies below is listed here, not walked again
                instance = name[len(PARENT_PREFIX) :]
                parent = os.path.join(dirpath, name)
                entry = found.setdefault(instance, {})
                entry.setdefault("", []).append(parent)
                try:
                    children = sorted(c.name for c in os.scandir(parent) if c.is_dir())
                except OSError:
                    continue
                for child in children:
                    entry.setdefault(child, []).append(os.path.join(parent, child))
    return found


def _netns_entries() -> list[tuple[str, tuple[int, int] | None]]:
    """(name, (st_dev, st_ino) of the namespace) per /run/netns/wc-* entry; None for a stale file
    (the nsfs bind mount over it is gone, so it names no namespace)."""
    try:
        names = sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(NETNS_PREFIX))
        dir_dev = os.stat(NETNS_DIR).st_dev
    except OSError:
        return []
    entries = []
    for name in names:
        try:
            info = os.stat(os.path.join(NETNS_DIR, name))
        except OSError:
            continue
        entries.append((name, (info.st_dev, info.st_ino) if info.st_dev != dir_dev else None))
    return entries


def _split_netns(name: str) -> tuple[str | None, str | None]:
    """wc-<instance>-sb-<id> -> (instance, sb-<id>)."""
    body = name[len(NETNS_PREFIX) :]
    cut = body.rfind("-sb-")
    if cut <= 0:
        return None, None
    return body[:cut], body[cut + 1 :]


# A sandbox's cgroup and netns are empty only for moments while it is made or removed; one
# still empty this much later, while its host lives, was left behind.
SETTLE_S = 0.25


def scan_host(*, self_instance: str | None = None, live_sandboxes: set[str] | None = None) -> dict:
    """Everything on the host that carries the project's names, each marked known or orphaned.

    Given `self_instance` (a running service asking about itself), that instance's sandbox
    cgroups and netns are known exactly when `live_sandboxes` holds their id. Anything else is
    known while a live process holds it (its sandbox's processes), and orphaned once nothing does:
    an empty one of a live host is looked at again after SETTLE_S before it is called orphaned."""
    report = _scan(self_instance, live_sandboxes or set(), set())
    unsettled = {(f["kind"], f["name"]) for f in report["findings"] if f["detail"].get("unsettled")}
    if unsettled:
        time.sleep(SETTLE_S)
        report = _scan(self_instance, live_sandboxes or set(), unsettled)
    return report


def _scan(self_instance: str | None, live_sandboxes: set[str], settled: set[tuple[str, str]]) -> dict:
    processes = _processes()
    services = _services(processes)
    self_pid = os.getpid() if self_instance is not None else None
    # instance -> the processes that host it: its `wondercraft serve`, or whoever runs its sandboxes.
    hosts: dict[str, set[int]] = {}
    for service in services.values():
        hosts.setdefault(service["instance"], set()).add(service["pid"])
    if self_instance is not None:
        hosts.setdefault(self_instance, set()).add(os.getpid())
    findings: list[Finding] = []

    def owner_name(pid: int) -> str:
        return "this service" if pid == self_pid else _describe(processes.get(pid), pid)

    # ---- cgroups ----
    cgroups = _cgroup_dirs()
    sandbox_pids: dict[tuple[str, str], list[int]] = {}
    for instance, entries in cgroups.items():
        for name, paths in entries.items():
            if name:
                pids = sorted({p for path in paths for p in _cgroup_pids(path)})
                sandbox_pids[(instance, name)] = pids
                for pid in pids:
                    host = _host_of(pid, processes)
                    if host is not None:
                        hosts.setdefault(instance, set()).add(host)
    for instance, entries in sorted(cgroups.items()):
        for name, paths in sorted(entries.items()):
            if not name:
                owners = hosts.get(instance)
                findings.append(
                    Finding(
                        "cgroup", f"{PARENT_PREFIX}{instance}", "known" if owners else "orphaned", instance,
                        ", ".join(owner_name(p) for p in sorted(owners)) if owners else None,
                        {"paths": paths, "role": "instance parent"},
                    )
                )  # fmt: skip
                continue
            pids = sandbox_pids[(instance, name)]
            finding = Finding("cgroup", name, "known", instance, None,
                              {"paths": paths, "pids": pids, "populated": bool(pids), "role": "sandbox"})  # fmt: skip
            _judge(finding, name, pids, processes, hosts, self_instance, live_sandboxes, settled, owner_name)
            findings.append(finding)

    # ---- mounts: a sandbox's own mounts live in its private namespace, never on the host ----
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        fields = tail.split()
        if len(fields) >= 2 and fields[1] in MOUNT_SOURCES:
            mount_point = head.split()[4]
            findings.append(
                Finding(
                    "mount", mount_point, "orphaned", None, None, {"source": fields[1], "fstype": fields[0]}
                )
            )

    # ---- network namespaces ----
    by_netns: dict[tuple[int, int], list[int]] = {}
    for process in processes.values():
        if process.net_ns is not None:
            by_netns.setdefault(process.net_ns, []).append(process.pid)
    for name, namespace in _netns_entries():
        instance, sandbox_id = _split_netns(name)
        pids = sorted(by_netns.get(namespace, [])) if namespace else []
        if instance is None:
            findings.append(
                Finding("netns", name, "orphaned", None, None, {"pids": pids, "mounted": bool(namespace)})
            )
            continue
        finding = Finding("netns", name, "known", instance, None,
                          {"sandboxId": sandbox_id, "pids": pids, "mounted": bool(namespace)})  # fmt: skip
        _judge(
            finding, sandbox_id, pids, processes, hosts, self_instance, live_sandboxes, settled, owner_name
        )
        findings.append(finding)

    # ---- links: isolated sandboxes have loopback only, so none belongs in the host's namespace ----
    try:
        links = sorted(n for n in os.listdir("/sys/class/net") if n.startswith(LINK_PREFIX))
    except OSError:
        links = []
    for link in links:
        findings.append(Finding("link", link, "orphaned", None, None, {}))

    # ---- launcher processes ----
    for process in sorted(processes.values(), key=lambda p: p.pid):
        if not _is_launcher(process):
            continue
        host = _host_of(process.pid, processes)
        findings.append(
            Finding(
                "process", str(process.pid), "known" if host else "orphaned", None,
                owner_name(host) if host else None,
                {"argv": process.argv[:3], "ppid": process.ppid},
            )
        )  # fmt: skip

    orphans = sum(1 for f in findings if f.state == "orphaned")
    return {
        "mode": "online" if self_instance is not None else "offline",
        "instance": self_instance,
        "services": sorted(services.values(), key=lambda s: s["pid"]),
        "findings": [f.to_json() for f in findings],
        "orphans": orphans,
        "known": len(findings) - orphans,
    }


def _judge(finding, sandbox_id, pids, processes, hosts, self_instance, live, settled, owner_name) -> None:
    """Sets the owner and state of one sandbox's cgroup or netns."""
    instance = finding.instance
    if instance == self_instance:
        finding.state = "known" if sandbox_id in live else "orphaned"
        finding.owner = "this service" if sandbox_id in live else None
        return
    for pid in pids:
        host = _host_of(pid, processes)
        if host is not None:
            finding.state, finding.owner = "known", owner_name(host)
            return
    owners = hosts.get(instance)
    if pids or not owners:
        # Processes whose launcher's parent is gone, or nothing at all: nothing will clean it up.
        finding.state = "orphaned"
        return
    finding.owner = ", ".join(owner_name(p) for p in sorted(owners))
    if (finding.kind, finding.name) in settled:
        finding.state = "orphaned"
        finding.detail["note"] = f"empty for {SETTLE_S:g}s while its host lives: left behind"
    else:
        finding.detail["unsettled"] = True  # being made or removed right now, or left behind


# ---------------------------------------------------------------- one sandbox --


def _v1_limit(value: int | None) -> int | None:
    return None if value is None or value >= _V1_UNLIMITED or value < 0 else value


def enforced_limits(cgroup) -> dict:
    """The limits the kernel holds for a sandbox cgroup (v2 or v1), as numbers; None where a
    file is missing or says "no limit"."""
    from .cgroups.v2 import V2SandboxCgroup

    limits: dict = {"memoryMaxBytes": None, "swapMaxBytes": None, "cpuQuotaUs": None,
                    "cpuPeriodUs": None, "pidsMax": None, "memoryOomGroup": None}  # fmt: skip
    if isinstance(cgroup, V2SandboxCgroup):
        path = cgroup.path
        limits["paths"] = [path]
        limits["memoryMaxBytes"] = read_int(os.path.join(path, "memory.max"))
        limits["swapMaxBytes"] = read_int(os.path.join(path, "memory.swap.max"))
        limits["memoryOomGroup"] = read_int(os.path.join(path, "memory.oom.group"))
        cpu = (read_text(os.path.join(path, "cpu.max")) or "").split()
        if len(cpu) == 2:
            limits["cpuQuotaUs"] = None if cpu[0] == "max" else int(cpu[0])
            limits["cpuPeriodUs"] = int(cpu[1])
        limits["pidsMax"] = read_int(os.path.join(path, "pids.max"))
        return limits
    nodes = {controller: node.full_path.decode() for key, node in cgroup.nodes.items() for controller in key}
    limits["paths"] = sorted(set(nodes.values()))
    if "memory" in nodes:
        memory = nodes["memory"]
        limits["memoryMaxBytes"] = _v1_limit(read_int(os.path.join(memory, "memory.limit_in_bytes")))
        memsw = _v1_limit(read_int(os.path.join(memory, "memory.memsw.limit_in_bytes")))
        if memsw is not None and limits["memoryMaxBytes"] is not None:
            limits["swapMaxBytes"] = memsw - limits["memoryMaxBytes"]
    if "cpu" in nodes:
        quota = read_int(os.path.join(nodes["cpu"], "cpu.cfs_quota_us"))
        limits["cpuQuotaUs"] = None if quota is None or quota < 0 else quota
        limits["cpuPeriodUs"] = read_int(os.path.join(nodes["cpu"], "cpu.cfs_period_us"))
    if "pids" in nodes:
        limits["pidsMax"] = read_int(os.path.join(nodes["pids"], "pids.max"))
    return limits


def storage_of(init_pid: int) -> dict | None:
    """The sandbox root's upper layer as the kernel sees it: statfs on an overlay reports its
    upper filesystem, the size-capped tmpfs."""
    try:
        stats = os.statvfs(f"/proc/{init_pid}/root/")
    except OSError:
        return None
    return {
        "sizeBytes": stats.f_blocks * stats.f_frsize,
        "usedBytes": (stats.f_blocks - stats.f_bfree) * stats.f_frsize,
        "full": stats.f_blocks > 0 and stats.f_bavail == 0,
    }


def sandbox_kernel_record(sandbox) -> dict:
    """What the kernel enforces for a running sandbox, and its counters now (blocking)."""
    cgroup = sandbox.cgroup
    record: dict = {"limits": enforced_limits(cgroup) if cgroup is not None else {}}
    record["storage"] = storage_of(sandbox.init_pid) if sandbox.init_pid else None
    record["pidsCurrent"] = len(cgroup.pids()) if cgroup is not None else None
    return record
