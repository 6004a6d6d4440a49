"""What the admin tool asks of a running service beyond the seed's API: a status summary,
the list of training cycles, live per-sandbox resource samples, an orphan sweep on demand,
and kernel-level audits of one sandbox and of the whole host. Nothing here knows HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import time

from runtime import hostaudit
from runtime.sandbox import SandboxManager, UnknownSandbox
from runtime.supervisor import supervise_once

from . import VERSION
from .errors import NotFound, ServiceUnavailable
from .services import Services
from .storage import cycles as cycle_rows
from .storage import sandboxes as sandbox_rows
from .vocabulary import RUNNING_STATUSES

ACTIVE_CYCLE_STATUSES = RUNNING_STATUSES


async def status(services: Services) -> dict:
    """Health, where the service lives, and counts: sandboxes, cycles by status, models, agents, GPUs."""

    def counts() -> dict:
        store = services.store
        return {
            "sandboxes": sandbox_rows.count_by_status(store),
            "cycles": cycle_rows.count_by_status(store),
            "models": services.petals.models.summaries(),
        }

    stored = await asyncio.to_thread(counts)
    runtime = services.runtime
    agents = services.agents.list()
    settings = services.settings
    return {
        "status": "ok",
        "version": VERSION,
        "cgroupMode": services.cgroup_mode,
        "uptimeSeconds": round(time.monotonic() - services.started_monotonic, 3),
        "pid": os.getpid(),
        "instance": runtime.instance,
        "stateDir": str(runtime.state_dir),
        "sandboxes": {
            "running": sum(1 for s in runtime.list() if s.status == "running"),
            "byStatus": stored["sandboxes"],
        },
        "cycles": {
            "queued": stored["cycles"].get("queued", 0),
            "running": sum(stored["cycles"].get(s, 0) for s in ACTIVE_CYCLE_STATUSES),
            "maxConcurrent": settings.max_concurrent_cycles,
            "slotsInUse": services.petals.slots()["slotsInUse"],
            "byStatus": stored["cycles"],
        },
        "models": stored["models"],
        "agents": {
            "active": sum(1 for a in agents if a.active),
            "revoked": sum(1 for a in agents if not a.active),
        },
        "gpus": {"total": runtime.gpus.total, "free": runtime.gpus.free()},
        # Committed against the host budget and per-agent quotas (runtime/admission.py).
        "admission": runtime.admission.totals() if runtime.admission is not None else None,
        "shutdownGraceSeconds": settings.shutdown_grace_s,
        # Per profile: size, idle, warming, hits, misses, warm-up p50 (runtime/pool.py); null: off.
        "warmPool": services.pool.status() if services.pool is not None else None,
    }


async def cycle_keys(
    services: Services, *, agent_id: str | None, status_: str | None, model: str | None
) -> list[tuple[float, str]]:
    """(created_at, cycle_id) of the matching training cycles, for paging."""
    return await asyncio.to_thread(
        cycle_rows.list_keys, services.store, agent_id=agent_id, status=status_, model=model
    )


async def cycles(services: Services, cycle_ids: list[str]) -> list[dict]:
    """These training cycles, in this order; live ones with their current progress."""
    return await asyncio.to_thread(lambda: [services.petals.get(cycle_id) for cycle_id in cycle_ids])


def _sample(runtime: SandboxManager, sandbox) -> dict:
    usage = runtime.usage(sandbox.id)
    caps = sandbox.spec.caps
    cpu = None
    if usage.cpu_user_s is not None or usage.cpu_system_s is not None:
        cpu = round((usage.cpu_user_s or 0.0) + (usage.cpu_system_s or 0.0), 6)
    pids = usage.pids_current
    if pids is None and sandbox.cgroup is not None:
        pids = len(sandbox.cgroup.pids())  # v1 has no pids.current per sandbox
    return {
        "sandboxId": sandbox.id,
        "agentId": sandbox.spec.agent_id,
        "cycleId": sandbox.spec.env.get("WONDERCRAFT_CYCLE_ID"),
        "cpuCores": caps.cpu_cores,
        "cpuSeconds": cpu,
        "memoryCurrentBytes": usage.memory_current_bytes,
        "memoryPeakBytes": usage.memory_peak_bytes,
        "memoryLimitBytes": caps.memory_mb << 20,
        "pidsCurrent": pids,
        "pidsLimit": caps.pids,
        "ioReadBytes": usage.io_read_bytes,
        "ioWriteBytes": usage.io_write_bytes,
        "oomKills": usage.oom_kills,
        # Wall time of this sample, so a client turns two samples into a CPU percentage.
        "sampledAt": round(time.time(), 6),
    }


async def stats(services: Services) -> list[dict]:
    """One resource sample per running sandbox (API and learn-cycle sandboxes alike)."""
    running = [s for s in services.runtime.list() if s.status == "running"]
    return await asyncio.to_thread(lambda: [_sample(services.runtime, s) for s in running])


async def cleanup(services: Services) -> dict:
    """The supervisor's pass, now: reap expired and dead sandboxes, sweep this instance's orphans."""
    try:
        report = await supervise_once(services.runtime)
    except Exception as exc:
        raise ServiceUnavailable(f"the orphan sweep failed: {exc}; see the service log") from None
    orphans = {
        "cgroups": list(report.orphans.get("cgroups", [])),
        "netns": list(report.orphans.get("netns", [])),
    }
    return {
        "expired": report.expired,
        "dead": report.dead,
        "orphans": orphans,
        "removed": len(report.expired) + len(report.dead) + len(orphans["cgroups"]) + len(orphans["netns"]),
    }


async def host_audit(services: Services) -> dict:
    runtime = services.runtime
    live = {s.id for s in runtime.list() if s.status != "destroyed"}
    return await asyncio.to_thread(hostaudit.scan_host, self_instance=runtime.instance, live_sandboxes=live)


# ------------------------------------------------------------ sandbox audit --


def _check(resource: str, unit: str, cap, enforced, used, verdict: str, note: str) -> dict:
    return {"resource": resource, "unit": unit, "cap": cap, "enforced": enforced, "used": used,
            "verdict": verdict, "note": note}  # fmt: skip


def _cpu_quota_us(cores: float) -> int:
    # As both cgroup backends compute it: a 100 ms period, and the kernel's 1 ms floor.
    return max(1_000, round(cores * 100_000))


def _checks(caps: dict, usage: dict, kernel: dict | None, gpus: int | None) -> list[dict]:
    """Each cap beside what the kernel enforced (live sandboxes only) and what was used."""
    checks = []
    limits = (kernel or {}).get("limits", {})
    live = kernel is not None

    memory_cap = int(caps["memory"]) << 20
    enforced = limits.get("memoryMaxBytes") if live else None
    peak, ooms = usage.get("memoryPeakBytes"), usage.get("oomKills") or 0
    if live and enforced != memory_cap:
        verdict, note = "mismatch", f"the kernel holds {enforced} bytes, the cap is {memory_cap}"
    elif ooms:
        verdict, note = "hit", f"{ooms} OOM kill(s): the cap was reached and enforced"
    elif peak is None:
        verdict, note = "unknown", "no memory accounting recorded"
    else:
        verdict, note = "within", f"peak {peak / memory_cap:.1%} of the cap"
    checks.append(_check("memory", "bytes", memory_cap, enforced, peak, verdict, note))

    quota = limits.get("cpuQuotaUs") if live else None
    period = limits.get("cpuPeriodUs") if live else None
    enforced_cores = quota / period if quota and period else None
    throttled = usage.get("cpuThrottledCount")
    if live and (quota != _cpu_quota_us(float(caps["cpu"])) or period != 100_000):
        verdict, note = "mismatch", f"the kernel holds quota {quota} per period {period} us"
    elif throttled:
        verdict, note = "throttled", f"held to the cap in {throttled} period(s)"
    elif usage.get("cpuSeconds") is None:
        verdict, note = "unknown", "no cpu accounting recorded"
    else:
        verdict, note = "within", "never throttled"
    checks.append(_check("cpu", "cores", caps["cpu"], enforced_cores, usage.get("cpuSeconds"), verdict, note))

    pids_cap = caps.get("pids")
    enforced = limits.get("pidsMax") if live else None
    hits = usage.get("pidsLimitHits") or 0
    if live and pids_cap is not None and enforced != pids_cap:
        verdict, note = "mismatch", f"the kernel holds pids.max {enforced}"
    elif hits:
        verdict, note = "hit", f"{hits} fork(s) refused at the cap"
    else:
        verdict, note = "within", "no fork refused"
    used = usage.get("pidsPeak") if usage.get("pidsPeak") is not None else usage.get("pidsCurrent")
    checks.append(_check("pids", "processes", pids_cap, enforced, used, verdict, note))

    storage_cap = int(caps.get("storageMB") or 0) << 20
    storage = (kernel or {}).get("storage")
    if live and storage is not None:
        enforced, used = storage["sizeBytes"], storage["usedBytes"]
        # tmpfs rounds its size to whole pages.
        if abs(enforced - storage_cap) > 4096:
            verdict, note = "mismatch", f"the root's tmpfs holds {enforced} bytes"
        elif storage["full"]:
            verdict, note = "full", "the writable layer is full"
        else:
            verdict, note = "within", f"{used / storage_cap:.1%} of the writable layer used"
    else:
        enforced = used = None
        verdict, note = "unknown", "only measured while the sandbox runs"
    checks.append(_check("storage", "bytes", storage_cap or None, enforced, used, verdict, note))

    gpu_cap = int(caps.get("gpu") or 0)
    if gpus is not None and gpus != gpu_cap:
        verdict, note = "mismatch", f"{gpus} device(s) granted"
    else:
        verdict, note = "within", "devices granted as asked" if gpus is not None else "granted at create"
    checks.append(_check("gpu", "devices", gpu_cap, gpus, None, verdict, note))
    return checks


async def sandbox_audit(services: Services, sandbox_id: str) -> dict:
    """The kernel's record for one sandbox against the caps it was given: read back from its
    cgroup while it runs, from its final record once destroyed."""
    try:
        sandbox = services.runtime.get(sandbox_id)
    except UnknownSandbox:
        sandbox = None
    view = await services.sandboxes.status(sandbox_id)  # NotFound for unknown ids
    caps = view.get("resourceCaps") or {}
    if sandbox is not None and sandbox.status == "running":
        kernel = await asyncio.to_thread(hostaudit.sandbox_kernel_record, sandbox)
        usage = dict(view.get("resourceUsage") or {})
        usage["pidsCurrent"] = kernel.get("pidsCurrent")
        source, reason = "live", None
        gpus = len(sandbox.gpus)
    else:
        kernel = None
        final = view.get("finalResourceRecord") or {}
        usage = final.get("resourceUsage") or {}
        reason = final.get("terminationReason")
        source = "lost" if reason == "lost" else "final"
        gpus = None
    if not caps:
        raise NotFound(f"sandbox {sandbox_id} has no recorded caps")
    checks = _checks(caps, usage, kernel, gpus)
    return {
        "sandboxId": sandbox_id,
        "agentId": view["agentId"],
        "status": view["status"],
        "source": source,
        "terminationReason": reason,
        "caps": caps,
        "enforced": (kernel or {}).get("limits"),
        "usage": json.loads(json.dumps(usage, allow_nan=False)),
        "checks": checks,
        "ok": all(c["verdict"] != "mismatch" for c in checks),
    }
