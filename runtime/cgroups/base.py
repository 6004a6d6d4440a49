"""The one cgroup interface the sandbox uses; `v2.py` and `v1.py` implement it.

Every cgroup the runtime creates lives beneath the cgroup the service itself runs
in (per hierarchy, from /proc/self/cgroup), inside a parent named after the
service instance, so a crashed instance's leftovers are recognisable by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

# The service's oom_score_adj; sandbox processes get +500 from the launcher.
SERVICE_OOM_SCORE_ADJ = -500


class CgroupError(RuntimeError):
    """A cgroup operation the kernel refused, or a host that lacks what a limit needs."""


@dataclass(frozen=True)
class CgroupLimits:
    cpu_cores: float | None = None  # -> cpu.max / cfs_quota_us over a 100 ms period
    memory_mb: int | None = None  # -> memory.max with swap 0 / limit_in_bytes (+ memsw)
    pids_max: int | None = None  # -> pids.max
    # io limits where the hierarchy allows: "MAJ:MIN" -> bytes per second
    io_read_bps: dict[str, int] = field(default_factory=dict)
    io_write_bps: dict[str, int] = field(default_factory=dict)


@dataclass
class CgroupUsage:
    """The kernel's own accounting for one sandbox cgroup; None where not exposed."""

    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    cpu_nr_throttled: int | None = None
    cpu_throttled_s: float | None = None
    memory_current_bytes: int | None = None
    memory_peak_bytes: int | None = None
    oom_kills: int = 0
    memory_max_events: int | None = None
    pids_current: int | None = None
    pids_peak: int | None = None
    pids_max_events: int = 0  # times a fork failed against pids.max
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    psi: dict[str, dict[str, float]] | None = None  # {"cpu": {"some_avg10":..., "some_total_us":...}, ...}

    def as_dict(self) -> dict:
        return dict(vars(self))


class SandboxCgroup(ABC):
    """One sandbox's cgroup (one directory per v1 hierarchy, one in v2)."""

    name: str

    @property
    @abstractmethod
    def procs_files(self) -> list[str]:
        """cgroup.procs paths a new process writes its pid to, to join the sandbox's cgroup."""

    @property
    def init_procs_files(self) -> list[str]:
        """Where the sandbox's PID 1 goes: on v2 an `init` leaf once executions have
        their own cgroups (the no-internal-process rule), else procs_files."""
        return self.procs_files

    @abstractmethod
    def add_pid(self, pid: int) -> None:
        """Move a running process (all its threads) into the sandbox's cgroup (its init leaf)."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Processes inside now, child cgroups included (every hierarchy in v1); [] once removed."""

    @abstractmethod
    def create_execution(self, name: str) -> SandboxCgroup:
        """A child cgroup for one execution: its processes are counted there and beside
        it in the sandbox's totals, and kill() on it ends them all, whatever sessions or
        process groups they made. Limits stay the sandbox's."""

    @abstractmethod
    def usage(self) -> CgroupUsage:
        """The kernel's accounting now; call kill() first for the final figures."""

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL every process inside and wait until the cgroup is empty."""

    @abstractmethod
    def destroy(self) -> None:
        """kill(), then remove the directories. Idempotent; works half-created or
        already removed."""

    @abstractmethod
    def remove_if_empty(self) -> bool:
        """Remove the directories (child cgroups first) if nothing is inside, without
        killing or waiting; True once gone, False if something still is."""


class CgroupBackend(ABC):
    mode: str  # "v2" or "v1"

    @abstractmethod
    def prepare(self) -> None:
        """Create the instance's parent cgroup(s); v2 moves the service into a
        `supervisor` leaf first (no-internal-process rule) and enables controllers."""

    @abstractmethod
    def create(self, name: str, limits: CgroupLimits, *, executions: bool = False) -> SandboxCgroup:
        """A sandbox cgroup with its limits. executions=True readies it for per-execution
        children (v2: an `init` leaf, memory and pids enabled below, the OOM group moved
        from the sandbox to each execution, so one OOM ends one execution)."""

    @abstractmethod
    def retune(self, cgroup: SandboxCgroup, limits: CgroupLimits) -> None:
        """Write `limits` (cpu, memory, pids) to a live sandbox cgroup: a warm sandbox taken by a
        cycle that asks for less than its profile. Only ever tightens (the caller checks), so the
        order v1 needs when lowering (limit_in_bytes before memsw) is the order create writes."""

    def protect_service(self, reserve_bytes: int) -> dict:
        """Keep the kernel from picking the service over a sandbox: v2 sets memory.min and
        memory.low on the supervisor leaf (effective where the delegating parent protects
        as much); every mode lowers the service's oom_score_adj. Returns what was set."""
        done = {}
        try:
            with open("/proc/self/oom_score_adj", "w") as handle:
                handle.write(str(SERVICE_OOM_SCORE_ADJ))
            done["oom_score_adj"] = SERVICE_OOM_SCORE_ADJ
        except OSError:
            pass
        return done

    @abstractmethod
    def open(self, name: str) -> SandboxCgroup | None:
        """An existing sandbox cgroup by name (start-up recovery), or None."""

    @abstractmethod
    def list_names(self) -> list[str]:
        """Names of the sandbox cgroups that exist under this instance's parent."""

    @abstractmethod
    def teardown(self) -> None:
        """Remove the instance's (empty) parent cgroup(s); sandboxes must be destroyed first."""
