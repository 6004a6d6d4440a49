"""`stats`: live per-sandbox CPU %, memory, pids and io, as `docker stats` shows them."""

from __future__ import annotations

import sys
import time

import click

from .context import Ctl, command
from .output import human_bytes, json_line, table

COLUMNS = [
    "SANDBOX",
    "AGENT",
    "CYCLE",
    "CPU %",
    "CORES",
    "MEM USAGE / LIMIT",
    "MEM %",
    "PIDS",
    "IO READ / WRITE",
]


def with_cpu_percent(previous: dict[str, dict], samples: list[dict]) -> list[dict]:
    """Each sample with cpuPercent: CPU time over wall time since the previous sample of the
    same sandbox (100 = one core), None for a sandbox seen for the first time."""
    rows = []
    for sample in samples:
        before = previous.get(sample["sandboxId"])
        percent = None
        if before and sample["cpuSeconds"] is not None and before["cpuSeconds"] is not None:
            elapsed = sample["sampledAt"] - before["sampledAt"]
            if elapsed > 0:
                percent = round(max(0.0, sample["cpuSeconds"] - before["cpuSeconds"]) / elapsed * 100, 2)
        rows.append({**sample, "cpuPercent": percent})
    return rows


def _table(rows: list[dict]) -> None:
    lines = []
    for r in rows:
        memory = f"{human_bytes(r['memoryCurrentBytes'])} / {human_bytes(r['memoryLimitBytes'])}"
        share = (
            f"{r['memoryCurrentBytes'] / r['memoryLimitBytes']:.1%}"
            if r["memoryCurrentBytes"] is not None and r["memoryLimitBytes"]
            else None
        )
        io = f"{human_bytes(r['ioReadBytes'])} / {human_bytes(r['ioWriteBytes'])}"
        cpu = f"{r['cpuPercent']:.1f}%" if r["cpuPercent"] is not None else None
        lines.append(
            [r["sandboxId"], r["agentId"], r["cycleId"], cpu, f"{r['cpuCores']:g}", memory, share,
             f"{r['pidsCurrent']}/{r['pidsLimit']}", io]
        )  # fmt: skip
    table(lines, COLUMNS)


@command()
@click.option("--no-stream", is_flag=True, help="Print one table and exit.")
@click.option(
    "--interval",
    "interval_s",
    default=1.0,
    type=click.FloatRange(0.05, 3600),
    help="Seconds between refreshes (and between the two samples CPU % is taken from).",
)
@click.option("--iterations", type=click.IntRange(min=1), help="Stop after this many refreshes.")
def stats(ctl: Ctl, no_stream: bool, interval_s: float, iterations: int | None) -> None:
    """Per-sandbox CPU %, memory used / limit, pids and io, refreshed live.

    CPU % is CPU time over wall time between two samples (100% = one core). With --json,
    each refresh is one JSON object on its own line."""
    if no_stream:
        iterations = 1
    previous = {s["sandboxId"]: s for s in ctl.client.call("GET", "/v1/admin/stats")["sandboxes"]}
    shown = 0
    while iterations is None or shown < iterations:
        time.sleep(interval_s)
        samples = ctl.client.call("GET", "/v1/admin/stats")["sandboxes"]
        rows = with_cpu_percent(previous, samples)
        previous = {s["sandboxId"]: s for s in samples}
        shown += 1
        if ctl.json:
            json_line({"sampledAt": time.time(), "sandboxes": rows})
            continue
        if sys.stdout.isatty() and not no_stream:
            click.echo("\033[H\033[J", nl=False)  # redraw in place, as top does
        _table(rows)
        sys.stdout.flush()
