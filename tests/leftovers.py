"""What this test run made on the host, and what of it is still there. Every helper that starts
a service, a sandbox manager, a cgroup backend or a guest registers its instance here; the
session-finish check in conftest.py, and the tests that check their own clean-up, then look only
at those names, so other services and test runs on the same host are never counted.

The instance of a state dir is runtime.sandbox.instance_name: its cgroups are
`wondercraft-<instance>`, its netns `wc-<instance>-sb-*`."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from runtime.cgroups import PARENT_PREFIX, SUPERVISOR_LEAF, cgroup_mounts, own_cgroups
from runtime.hostaudit import LAUNCHER, NETNS_DIR, _Process, instance_of
from runtime.hostaudit import _processes as processes_on_host  # the audit's own process table

UML_KERNEL_NAME = "linux.uml"


@dataclass
class Footprint:
    """What one test run may leave on the host: its instances, state dirs and guest folders."""

    instances: set[str] = field(default_factory=set)
    state_dirs: set[Path] = field(default_factory=set)
    guest_dirs: set[Path] = field(default_factory=set)
    # `sleep 1000.<digits>`: a process a test leaves running in a sandbox, recognisable as this
    # run's (GNU sleep takes a fraction; the digits differ per run).
    marker_argv: tuple[str, ...] = field(
        default_factory=lambda: ("sleep", f"1000.{random.SystemRandom().randrange(10**8, 10**9)}")
    )
    pid: int = field(default_factory=os.getpid)

    @property
    def marked_sleep(self) -> str:
        """The shell words of this run's marked process."""
        return " ".join(self.marker_argv)

    def register_state_dir(self, state_dir: str | Path) -> str:
        path = Path(state_dir).resolve()
        self.state_dirs.add(path)
        return self.register_instance(instance_of(path))

    def register_instance(self, instance: str) -> str:
        self.instances.add(instance)
        return instance

    def register_guest(self, run_dir: str | Path) -> None:
        self.guest_dirs.add(Path(run_dir).resolve())

    # ---------------------------------------------------------------- checks --

    def leftovers(self) -> list[str]:
        """Every cgroup, netns, link, mount and process of this run still on the host (for the
        end of the run, when no service of it is left either)."""
        processes = processes_on_host()
        return [
            *self.cgroups(),
            *self.netns(),
            *self.links(),
            *self.mounts(),
            *(f"process {pid} {' '.join(argv)}" for pid, argv in self.launchers(processes)),
            *(f"process {pid} {' '.join(argv)}" for pid, argv in self.marked(processes)),
            *(f"guest {pid} {' '.join(argv[:2])}" for pid, argv in self.guests(processes)),
        ]

    def sandbox_leftovers(self, sandbox_ids: list[str] | None = None) -> list[str]:
        """What remains of this run's sandboxes (only those named, when given) while its services
        may still run: sandbox cgroups, netns and launchers, and any link or host-visible mount."""
        return [
            *self.sandbox_cgroups(sandbox_ids),
            *self.netns(sandbox_ids),
            *self.links(),
            *self.mounts(),
            *(f"process {pid} {' '.join(argv)}" for pid, argv in self.launchers(None, sandbox_ids)),
        ]

    def _parents(self) -> list[tuple[str, str]]:
        """(instance, path) of each of this run's instance cgroups, in every hierarchy."""
        found = []
        for hierarchy_dir in own_cgroup_dirs():
            for instance in sorted(self.instances):
                path = os.path.join(hierarchy_dir, PARENT_PREFIX + instance)
                if os.path.isdir(path):
                    found.append((instance, path))
        return found

    def cgroups(self) -> list[str]:
        return [f"cgroup {path}" for _instance, path in self._parents()]

    def sandbox_cgroups(self, sandbox_ids: list[str] | None = None) -> list[str]:
        found = []
        for _instance, path in self._parents():
            for child in sorted(os.scandir(path), key=lambda e: e.name):
                if child.is_dir() and (sandbox_ids is None or child.name in sandbox_ids):
                    found.append(f"cgroup {child.path}")
        return found

    def netns(self, sandbox_ids: list[str] | None = None) -> list[str]:
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        found = []
        for name in sorted(names):
            for instance in self.instances:
                prefix = f"wc-{instance}-"
                if name.startswith(prefix) and (sandbox_ids is None or name[len(prefix) :] in sandbox_ids):
                    found.append(f"netns {name}")
        return found

    def links(self) -> list[str]:
        names = os.listdir("/sys/class/net")
        return [f"link {n}" for n in sorted(names) if any(n.startswith(f"wc-{i}") for i in self.instances)]

    def mounts(self) -> list[str]:
        """Host-visible mounts below one of this run's state dirs: a sandbox's root and its
        layers (wc-init's wc-root, wc-storage...) belong in its private mount namespace only."""
        found = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            head, _, tail = line.partition(" - ")
            mount_point = Path(head.split()[4])
            if any(mount_point.is_relative_to(d) for d in self.state_dirs):
                found.append(f"mount {mount_point} ({' '.join(tail.split()[:2])})")
        return found

    def launchers(
        self, processes: dict[int, _Process] | None = None, sandbox_ids: list[str] | None = None
    ) -> list[tuple[int, list]]:
        """wc-init processes of this run (in one of its cgroups, naming one of its state dirs or
        cgroups on their command line, or started below this test process); only those of the
        named sandboxes, when given."""
        processes = processes_on_host() if processes is None else processes
        found = []
        for pid, process in sorted(processes.items()):
            argv = process.argv
            if not argv or os.path.basename(argv[0]) != LAUNCHER or not self._owns(pid, argv, processes):
                continue
            if sandbox_ids is None or any(s in f"{' '.join(argv)} {_membership(pid)}" for s in sandbox_ids):
                found.append((pid, argv))
        return found

    def marked(self, processes: dict[int, _Process] | None = None) -> list[tuple[int, list]]:
        """Processes running this run's marked sleep (left behind by a sandbox it made)."""
        processes = processes_on_host() if processes is None else processes
        return [(pid, p.argv) for pid, p in sorted(processes.items()) if tuple(p.argv) == self.marker_argv]

    def guests(self, processes: dict[int, _Process] | None = None) -> list[tuple[int, list]]:
        """User-Mode Linux guests booted from one of this run's guest folders."""
        processes = processes_on_host() if processes is None else processes
        return [
            (pid, p.argv)
            for pid, p in sorted(processes.items())
            if p.argv
            and os.path.basename(p.argv[0]) == UML_KERNEL_NAME
            and any(str(d) in arg for arg in p.argv for d in self.guest_dirs)
        ]

    def _owns(self, pid: int, argv: list[str], processes: dict[int, _Process]) -> bool:
        names = [f"/{PARENT_PREFIX}{i}/" for i in self.instances]
        if any(n in f"{a}/" for a in argv for n in names):
            return True
        if any(str(d) in a for a in argv for d in self.state_dirs):
            return True
        if any(n in f"{line}/" for line in _membership(pid).splitlines() for n in names):
            return True
        return _descends_from(pid, self.pid, processes)


def _membership(pid: int) -> str:
    """/proc/PID/cgroup: the process's cgroup in each hierarchy ("" once it has exited)."""
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""


def _descends_from(pid: int, ancestor: int, processes: dict[int, _Process]) -> bool:
    seen = set()
    while pid in processes and pid not in seen and pid > 1:
        if pid == ancestor:
            return True
        seen.add(pid)
        pid = processes[pid].ppid
    return False


def own_cgroup_dirs() -> list[str]:
    """This process's cgroup directory in every mounted hierarchy (where a run's cgroups go); on
    v2, once a backend has moved the process into its supervisor leaf, the leaf's parent."""
    own = own_cgroups()
    dirs = []
    for mount in cgroup_mounts():
        key = "" if mount.fstype == "cgroup2" else ",".join(mount.controllers)
        if key in own:
            path = os.path.join(mount.mount_point, own[key].lstrip("/"))
            if mount.fstype == "cgroup2" and os.path.basename(path) == SUPERVISOR_LEAF:
                path = os.path.dirname(path)
            dirs.append(os.path.realpath(path))
    return sorted(set(dirs))


# This test run: every helper registers into it.
RUN = Footprint()
