"""`status`: the service's health, its instance, what it holds and what it runs."""

from __future__ import annotations

import json

from .context import Ctl, command
from .output import duration, number, pairs


@command()
def status(ctl: Ctl) -> None:
    """Health, cgroup mode, counts and the queue depth."""
    ctl.out(ctl.client.call("GET", "/v1/admin/status"), lambda s: pairs(status_items(s, ctl.url)))


def status_items(s: dict, url: str) -> list[tuple[str, str]]:
    cycles, sandboxes = s["cycles"], s["sandboxes"]
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(cycles["byStatus"].items())) or "none yet"
    models = ", ".join(
        f"{m['modelType']} v{m['currentVersion']} ({m['versions']} versions)" for m in s["models"]
    )
    items = [
        ("service", f"{s['status']} (version {s['version']}, pid {s['pid']}, up {duration(s['uptimeSeconds'])})"),
        ("url", url),
        ("cgroup mode", s["cgroupMode"]),
        ("instance", f"{s['instance']} (state dir {s['stateDir']})"),
        ("sandboxes", f"{sandboxes['running']} running, {sum(sandboxes['byStatus'].values())} recorded"),
        ("queue depth", f"{cycles['queued']} queued, {cycles['running']} running "
                        f"(at most {cycles['maxConcurrent']} at once)"),
        ("cycles", by_status),
        ("models", models or "none yet"),
        ("agents", f"{s['agents']['active']} active, {s['agents']['revoked']} revoked"),
        ("gpus", f"{s['gpus']['free']} free of {s['gpus']['total']}"),
        ("stop grace", f"{s['shutdownGraceSeconds']:g}s"),
    ]  # fmt: skip
    if s.get("admission"):
        items.append(("admission", admission_line(s["admission"])))
    items.append(("warm pool", warm_pool_line(s.get("warmPool"))))
    return items


def warm_pool_line(pool: dict | None) -> str:
    """Per profile: "numpy 2 idle of 2, 1 warming, 14 hits, 3 misses, warm-up p50 850 ms"."""
    if not pool:
        return "off"
    return "; ".join(
        f"{name} {p['idle']} idle of {p['size']}, {p['warming']} warming, {p['hits']} hits, "
        f"{p['misses']} misses, warm-up p50 "
        + (f"{p['warmupMsP50']:.0f} ms" if isinstance(p.get("warmupMsP50"), int | float) else "-")
        for name, p in sorted(pool.items())
    )


def admission_line(admission: dict) -> str:
    """What live sandboxes have committed against the host's budget, per resource, as the
    service reports it (`{"memoryMB": {"committed": 512, "budget": 8192}, ...}`):
    "cpuCores 1.5 of 4, memoryMB 512 of 8192"; a side the service leaves out shows "-"."""
    totals = {name: value for name, value in admission.items() if isinstance(value, dict) and (
        "committed" in value or "budget" in value)}  # fmt: skip
    return (
        ", ".join(
            f"{name} {_amount(totals[name].get('committed'))} of {_amount(totals[name].get('budget'))}"
            for name in sorted(totals)
        )
        or "-"
    )


def _amount(value: object) -> str:
    # Numbers as the other counts are shown; anything else a newer service sends, as it is.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else number(value)
    return "-" if value is None else json.dumps(value, sort_keys=True)
