"""What a failed learn cycle's error says when a cap ended it: which cap, its value and the
peak reached, read from the cycle's resource record; and the smallest memory cap a learn cycle
can start with, which submit checks."""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..vocabulary import FailureReason

# The smallest memory cap (MB) a learn cycle is accepted with. Measured once on the development
# VM (hybrid cgroups, the host's /usr as the base layer, the stock learn cycle) by submitting
# 1-epoch jobs of six samples for linear and mlp:digits with resourceCaps.memory of 96, 48, 32,
# 28, 24, 20, 19, 18, 17 and 16 MB: every cap from 17 MB up completed, with a memory peak of
# 16.5-16.7 MB (Python, numpy and the job); 16 MB ended in memory_limit at a peak of 15.9 MB
# . 20 MB leaves that peak a little room on other hosts.
# tests/test_training_caps.py checks that this value trains and that one below is refused.
LEARN_CYCLE_MEMORY_MB_MIN = 20

MB = 1024 * 1024


def _figure(record: dict, key: str) -> Any:
    """A figure of the learn cycle's own execution, else of its sandbox as a whole."""
    value = (record.get("exec") or {}).get(key)
    if value is None:
        value = ((record.get("sandbox") or {}).get("resourceUsage") or {}).get(key)
    return value


def cap_hit(reason: str, record: dict | None, request: dict, lifetime_s: float | None = None) -> dict | None:
    """{cap, limit, unit, peak} for a cycle a cap ended, None for any other end."""
    record = record or {}
    limits = (record.get("sandbox") or {}).get("limits") or {}
    caps = request.get("resourceCaps") or {}
    if reason == FailureReason.MEMORY_LIMIT:
        peak = _figure(record, "memoryPeakBytes")
        limit = limits.get("memoryMB", caps.get("memory"))
        return {"cap": "memory", "limit": limit, "unit": "MB",
                "peak": None if peak is None else round(peak / MB, 1)}  # fmt: skip
    if reason == FailureReason.PIDS_LIMIT:
        return {"cap": "pids", "limit": limits.get("pids"), "unit": "processes",
                "peak": _figure(record, "pidsPeak")}  # fmt: skip
    if reason == FailureReason.STORAGE_LIMIT:
        # The kernel keeps no peak of a tmpfs; a storage_limit end means the layer filled up.
        limit = limits.get("storageMB")
        return {"cap": "storage", "limit": limit, "unit": "MB", "peak": limit}
    if reason in (FailureReason.TIMEOUT, FailureReason.LIFETIME):
        wall = (record.get("sandbox") or {}).get("wallSeconds") or _figure(record, "wallSeconds")
        return {"cap": "lifetime", "limit": lifetime_s, "unit": "s wall",
                "peak": None if wall is None else round(wall, 3),
                "cpuSeconds": _figure(record, "cpuSeconds")}  # fmt: skip
    return None


def _show(value: Any) -> str:
    return "unknown" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def cycle_error(reason: str, message: str, result: dict | None, request: dict, settings: Settings) -> dict:
    """A failed cycle's error: its reason and message, and for a cap, the cap's figures. A learn
    cycle's execution timeout is its sandbox's lifetime (SANDBOX_MAX_LIFETIME)."""
    record = (result or {}).get("resourceRecord")
    hit = cap_hit(str(reason), record, request, float(settings.sandbox_max_lifetime_s))
    if hit is None:
        return {"reason": str(reason), "message": message}
    sentence = (
        f"the learn cycle hit its {hit['cap']} cap ({reason}): limit {_show(hit['limit'])} {hit['unit']}, "
        f"peak reached {_show(hit['peak'])} {hit['unit']}"
    )
    if hit.get("cpuSeconds") is not None:
        sentence += f", {_show(round(hit['cpuSeconds'], 3))} s of CPU time used"
    return {"reason": str(reason), "message": sentence, "cap": hit}
