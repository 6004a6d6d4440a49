"""`nodes`: the Ray nodes learn cycles run on (executor ray), one line each."""

from __future__ import annotations

import time

import click

from .context import Ctl, command
from .output import table

COLUMNS = ["NODE", "ADDRESS", "ALIVE", "SLOTS", "GPUS", "RUNNING", "LAST HEARTBEAT"]


def _ago(ms: int | None) -> str | None:
    return None if ms is None else f"{max(0.0, time.time() - ms / 1000):.1f}s ago"


def _table(body: dict) -> None:
    rows = [
        [n["name"], n["address"], "yes" if n["alive"] else "no", f"{n['slotsInUse']}/{n['slotsTotal']}",
         n["gpus"], ",".join(n["runningCycles"]) or "-", _ago(n["lastHeartbeat"])]
        for n in body["nodes"]
    ]  # fmt: skip
    if body["executor"] == "local":
        click.echo("executor local: every cycle runs on the service's own host")
        return
    table(rows, COLUMNS)


@command()
def nodes(ctl: Ctl) -> None:
    """Each node: address, slots in use / total, GPUs, running cycles, last heartbeat."""
    ctl.out(ctl.client.call("GET", "/v1/admin/nodes"), _table)
