"""How the /v1/sandbox service shows sandboxes: the views, the kernel's resource records in the
API's camelCase, the caps a request may ask for, and admission refusals as API errors."""

from __future__ import annotations

from runtime.admission import AdmissionRefused
from runtime.sandbox import Execution, InvalidSpec, ResourceCaps, Sandbox

from .config import Settings
from .errors import BadRequest, Conflict, TooManyRequests
from .vocabulary import camel_keys


def _iso_ms(timestamp: float) -> int:
    return int(timestamp * 1000)


def resource_usage(usage: dict) -> dict:
    """The kernel's record in the API's camelCase: an execution's own figures, with the
    sandbox's so far under "sandbox" when the record has them."""
    cgroup = usage.get("cgroup", {})
    figures = _figures(usage, cgroup)
    if usage.get("sandbox_cgroup"):
        figures["sandbox"] = _figures({}, usage["sandbox_cgroup"])
    return figures


def over_budget(exc: AdmissionRefused) -> Conflict | TooManyRequests:
    """An admission refusal as the API answers it: 429 with Retry-After while the host is
    full, 409 for an agent's own quota (with Retry-After) or a request that never fits."""
    details = exc.details()
    if exc.transient and not exc.budget.startswith("agent_"):
        return TooManyRequests(str(exc), retry_after_s=exc.retry_after_s, details=details)
    error = Conflict(str(exc), details=details)
    error.code = "over_budget"
    if exc.transient:
        error.retry_after_s = exc.retry_after_s
    return error


def _figures(usage: dict, cgroup: dict) -> dict:
    return {
        "cpuSeconds": usage.get("cpu_s", _sum(cgroup.get("cpu_user_s"), cgroup.get("cpu_system_s"))),
        "cpuUserSeconds": usage.get("cpu_user_s", cgroup.get("cpu_user_s")),
        "cpuSystemSeconds": usage.get("cpu_system_s", cgroup.get("cpu_system_s")),
        "maxRssBytes": usage.get("max_rss_bytes"),
        "memoryPeakBytes": cgroup.get("memory_peak_bytes"),
        "memoryCurrentBytes": cgroup.get("memory_current_bytes"),
        "oomKills": cgroup.get("oom_kills", 0),
        "pidsPeak": cgroup.get("pids_peak"),
        "pidsCurrent": cgroup.get("pids_current"),
        "pidsLimitHits": cgroup.get("pids_max_events", 0),
        "cpuThrottledCount": cgroup.get("cpu_nr_throttled"),
        "cpuThrottledSeconds": cgroup.get("cpu_throttled_s"),
        "ioReadBytes": cgroup.get("io_read_bytes"),
        "ioWriteBytes": cgroup.get("io_write_bytes"),
        "psi": cgroup.get("psi"),
        "wallSeconds": usage.get("wall_s"),
    }


def final_record(record: dict) -> dict:
    """The runtime's record of a destroyed sandbox in the API's camelCase."""
    return {
        "terminationReason": record.get("termination_reason"),
        "wallSeconds": record.get("wall_s"),
        "executions": record.get("executions"),
        "resourceUsage": resource_usage({"cgroup": record.get("cgroup", {})}),
        "limits": camel_keys(record.get("limits") or {}),
    }


def caps_within_limits(settings: Settings, requested: dict, storage_mb: int | None = None) -> ResourceCaps:
    """Caps from a request's resourceCaps (defaults: SANDBOX_DEFAULT_*), refused above resourceLimits."""
    limits = settings.resource_limits
    cpu = requested.get("cpu", settings.sandbox_default_cpu_cores)
    memory = requested.get("memory", settings.sandbox_default_memory_mb)
    gpu = requested.get("gpu", 0)
    for name, value, limit, unit in (
        ("resourceCaps.cpu", cpu, limits.cpu_cores, "cores"),
        ("resourceCaps.memory", memory, limits.memory_mb, "MB"),
        ("resourceCaps.gpu", gpu, limits.gpu_count, "GPUs"),
    ):
        if value > limit:
            raise BadRequest(f"{name} is {value:g} {unit}, above this host's resourceLimits of {limit:g}")
    caps = ResourceCaps(
        cpu_cores=float(cpu), memory_mb=int(memory), pids=settings.sandbox_default_pids,
        storage_mb=int(storage_mb or settings.sandbox_default_storage_mb), gpu_count=int(gpu),
    )  # fmt: skip
    try:
        caps.validate()
    except InvalidSpec as exc:
        raise BadRequest(f"resourceCaps: {exc}") from None
    return caps


def background_view(execution: Execution) -> dict:
    view = {
        "executionId": execution.id,
        "command": execution.argv,
        "startedAt": _iso_ms(execution.started_at),
        "status": "running" if execution.running else "ended",
    }
    if execution.result is not None:
        view["exitCode"] = execution.result.exit_code
        view["terminationReason"] = execution.result.termination_reason
    return view


def _sum(*values):
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def sandbox_view(sandbox: Sandbox, training: dict | None = None) -> dict:
    """A sandbox as the API shows it; `training` is the trainingConfig it was made with."""
    caps = sandbox.spec.caps
    view = {
        "sandboxId": sandbox.id,
        "agentId": sandbox.spec.agent_id,
        "status": sandbox.status,
        "resourceCaps": {
            "cpu": caps.cpu_cores,
            "memory": caps.memory_mb,
            "gpu": caps.gpu_count,
            "pids": caps.pids,
            "storageMB": caps.storage_mb,
        },  # fmt: skip
        "network": sandbox.spec.network,
        "createdAt": _iso_ms(sandbox.created_at),
        "expiresAt": _iso_ms(sandbox.expires_at),
        "executions": sandbox.executions,
    }
    if sandbox.gpus:
        view["gpus"] = [g.index for g in sandbox.gpus]
    if sandbox.background:
        view["backgroundExecutions"] = [background_view(e) for e in sandbox.background.values()]
    if training is not None:
        view["trainingConfig"] = training
    if sandbox.final_record is not None:
        view["finalResourceRecord"] = final_record(sandbox.final_record)
    return view
