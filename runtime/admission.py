"""Admission control: what sandboxes may be promised on this host, and to each agent.

The host budget: memory committed to sandboxes (the sum of their memory caps) at most a
share of MemTotal minus a reserve for the service, CPU (the sum of their cpu caps) at
most an overcommit of the cores, GPUs never shared. Per agent: a number of sandboxes,
and optionally memory and GPUs. The SandboxManager asks `admit` before it makes
anything and `release`s after destroy; a refusal is a typed `AdmissionRefused` that
names the budget, its limit, what is in use and when to try again, so that the API can
answer 409/429 and a learn cycle can wait in its queue."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CapacityExhausted

DEFAULT_MEMORY_SHARE = 0.80
DEFAULT_SERVICE_RESERVE_MB = 1024
DEFAULT_CPU_OVERCOMMIT = 16.0
DEFAULT_AGENT_MAX_SANDBOXES = 64
MAX_RETRY_AFTER_S = 30

# Budget names, as the API and /metrics show them.
HOST_MEMORY, HOST_CPU, HOST_GPUS = "host_memory", "host_cpu", "host_gpus"
AGENT_SANDBOXES, AGENT_MEMORY, AGENT_GPUS = "agent_sandboxes", "agent_memory", "agent_gpus"
UNITS = {
    HOST_MEMORY: "MB", AGENT_MEMORY: "MB", HOST_CPU: "cores", HOST_GPUS: "GPUs", AGENT_GPUS: "GPUs",
    AGENT_SANDBOXES: "sandboxes",
}  # fmt: skip


class AdmissionRefused(CapacityExhausted):
    """A sandbox that would take a budget past its limit.

    retry_after_s is a hint (the soonest a reservation holding the budget expires, capped),
    or None when the request can never fit as configured (it alone exceeds the limit)."""

    code = "over_budget"

    def __init__(self, budget: str, limit: float, in_use: float, requested: float, retry_after_s: int | None):
        self.budget = budget
        self.limit = limit
        self.in_use = in_use
        self.requested = requested
        self.retry_after_s = retry_after_s
        self.unit = UNITS[budget]
        if retry_after_s is None:
            message = (
                f"{budget} budget refused: {requested:g} {self.unit} asked, more than the whole budget of "
                f"{limit:g} {self.unit}"
            )
        else:
            message = (
                f"{budget} budget refused: {requested:g} {self.unit} asked, {in_use:g} of {limit:g} "
                f"{self.unit} in use; retry in {retry_after_s} s"
            )
        super().__init__(message)

    @property
    def transient(self) -> bool:
        return self.retry_after_s is not None

    def details(self) -> dict:
        return {
            "budget": self.budget, "limit": self.limit, "inUse": self.in_use, "requested": self.requested,
            "unit": self.unit, "retryAfterSeconds": self.retry_after_s,
        }  # fmt: skip


@dataclass(frozen=True)
class HostBudget:
    memory_mb: int
    cpu_cores: float
    gpus: int

    @classmethod
    def from_host(
        cls,
        *,
        memory_share: float = DEFAULT_MEMORY_SHARE,
        service_reserve_mb: int = DEFAULT_SERVICE_RESERVE_MB,
        cpu_overcommit: float = DEFAULT_CPU_OVERCOMMIT,
        gpus: int = 0,
        mem_total_mb: int | None = None,
        cores: int | None = None,
    ) -> HostBudget:
        total = host_memory_mb() if mem_total_mb is None else mem_total_mb
        memory = max(0, int(total * memory_share) - service_reserve_mb)
        return cls(
            memory_mb=memory, cpu_cores=round((cores or os.cpu_count() or 1) * cpu_overcommit, 3), gpus=gpus
        )


@dataclass(frozen=True)
class AgentQuota:
    """Per agent; None: only the host budget applies."""

    max_sandboxes: int | None = DEFAULT_AGENT_MAX_SANDBOXES
    memory_mb: int | None = None
    gpus: int | None = None


@dataclass
class _Reservation:
    agent_id: str
    memory_mb: int
    cpu_cores: float
    gpus: int
    expires_at: float


@dataclass
class Admission:
    host: HostBudget
    quota: AgentQuota = field(default_factory=AgentQuota)
    _held: dict[str, _Reservation] = field(default_factory=dict)

    def admit(
        self,
        key: str,
        agent_id: str,
        *,
        memory_mb: int,
        cpu_cores: float,
        gpus: int = 0,
        expires_at: float | None = None,
    ) -> None:
        """Reserve, or raise AdmissionRefused naming the first budget it would break."""
        if key in self._held:
            return
        mine = [r for r in self._held.values() if r.agent_id == agent_id]
        checks = (
            (AGENT_SANDBOXES, self.quota.max_sandboxes, len(mine), 1, mine),
            (AGENT_MEMORY, self.quota.memory_mb, sum(r.memory_mb for r in mine), memory_mb, mine),
            (AGENT_GPUS, self.quota.gpus, sum(r.gpus for r in mine), gpus, mine),
            (HOST_MEMORY, self.host.memory_mb, self.committed_memory_mb, memory_mb, None),
            (HOST_CPU, self.host.cpu_cores, self.committed_cpu_cores, cpu_cores, None),
            (HOST_GPUS, self.host.gpus, self.committed_gpus, gpus, None),
        )
        for budget, limit, in_use, requested, holders in checks:
            if limit is None or requested == 0 or in_use + requested <= limit + 1e-9:
                continue
            if requested > limit:
                raise AdmissionRefused(budget, limit, round(in_use, 3), requested, None)
            raise AdmissionRefused(budget, limit, round(in_use, 3), requested, self._retry_hint(holders))
        self._held[key] = _Reservation(
            agent_id, memory_mb, cpu_cores, gpus, expires_at if expires_at is not None else time.time() + 3600
        )

    def release(self, key: str) -> None:
        self._held.pop(key, None)

    def _retry_hint(self, holders: list[_Reservation] | None) -> int:
        pool = holders if holders is not None else list(self._held.values())
        soonest = min((r.expires_at for r in pool), default=time.time() + 1)
        return int(min(MAX_RETRY_AFTER_S, max(1, soonest - time.time())))

    @property
    def committed_memory_mb(self) -> int:
        return sum(r.memory_mb for r in self._held.values())

    @property
    def committed_cpu_cores(self) -> float:
        return round(sum(r.cpu_cores for r in self._held.values()), 3)

    @property
    def committed_gpus(self) -> int:
        return sum(r.gpus for r in self._held.values())

    def totals(self) -> dict:
        """Committed against the budget, for /metrics and the admin status."""
        agents: dict[str, dict] = {}
        for reservation in self._held.values():
            agent = agents.setdefault(reservation.agent_id, {"sandboxes": 0, "memoryMB": 0, "gpus": 0})
            agent["sandboxes"] += 1
            agent["memoryMB"] += reservation.memory_mb
            agent["gpus"] += reservation.gpus
        return {
            "memoryMB": {"committed": self.committed_memory_mb, "budget": self.host.memory_mb},
            "cpuCores": {"committed": self.committed_cpu_cores, "budget": self.host.cpu_cores},
            "gpus": {"committed": self.committed_gpus, "budget": self.host.gpus},
            "sandboxes": len(self._held),
            "agentQuota": {
                "sandboxes": self.quota.max_sandboxes,
                "memoryMB": self.quota.memory_mb,
                "gpus": self.quota.gpus,
            },  # fmt: skip
            "agents": agents,
        }


def host_memory_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"{meminfo} has no MemTotal line")
