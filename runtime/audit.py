"""Resource records from the kernel's own accounting: one per exec and one per
sandbox at destroy, stored with the sandbox."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ExecAccounting:
    """What the exec shim's wait4() reported for the process it started."""

    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    max_rss_bytes: int = 0


@dataclass
class ResourceRecord:
    wall_s: float
    exit_code: int | None
    signal: int | None
    termination_reason: str | None
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    max_rss_bytes: int | None = None
    cgroup: dict = field(default_factory=dict)  # CgroupUsage.as_dict() of the execution's own cgroup
    sandbox_cgroup: dict = field(default_factory=dict)  # ...and of the sandbox's, so far
    limits: dict = field(default_factory=dict)

    @property
    def cpu_s(self) -> float | None:
        if self.cpu_user_s is None and self.cpu_system_s is None:
            return None
        return (self.cpu_user_s or 0.0) + (self.cpu_system_s or 0.0)

    def as_dict(self) -> dict:
        record = asdict(self)
        record["cpu_s"] = self.cpu_s
        return record


def parse_exec_status(lines: list[str]) -> dict:
    """Decode wc-init exec's status lines: "pid N", optional "error STAGE: REASON",
    then "exit CODE USER SYS MAXRSS_KB" or "signal SIG USER SYS MAXRSS_KB"."""
    result: dict = {
        "pid": None,
        "exit_code": None,
        "signal": None,
        "error": None,
        "accounting": ExecAccounting(),
    }
    for line in lines:
        kind, _, rest = line.strip().partition(" ")
        if kind == "pid":
            result["pid"] = int(rest)
        elif kind == "error":
            result["error"] = rest
        elif kind in ("exit", "signal"):
            value, user_s, system_s, maxrss_kb = rest.split()
            result["exit_code" if kind == "exit" else "signal"] = int(value)
            result["accounting"] = ExecAccounting(float(user_s), float(system_s), int(maxrss_kb) * 1024)
    return result
