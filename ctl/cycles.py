"""`cycles ls|show|watch|logs`: training cycles of every agent."""

from __future__ import annotations

import json
import sys
import time

import click

from .client import EXIT_API, EXIT_VERDICT, CtlError, Verdict, quote
from .context import Ctl, command, seconds_option
from .output import json_line, number, pairs, table, when

CYCLE_STATES = ("queued", "running", "retrying", "completed", "failed", "aggregated")
TERMINAL_CYCLE_STATES = ("completed", "failed", "aggregated")


@click.group()
def cycles() -> None:
    """Training cycles: list them, show one, watch one run, read its logs."""


def _loss(cycle: dict) -> str:
    return number((cycle.get("progress") or {}).get("loss"))


def _epochs(cycle: dict) -> str:
    progress = cycle.get("progress") or {}
    return f"{progress.get('epoch', 0)}/{progress.get('epochs', 0)}"


@command(cycles, "ls")
@click.option("--agent", "agent_id", help="Only this agent's cycles.")
@click.option("--status", "state", type=click.Choice(CYCLE_STATES), help="Only cycles in this state.")
@click.option("--model", "model", help="Only cycles training this model (modelType).")
@click.option("--limit", default=100, type=click.IntRange(1, 1000))
def cycles_ls(ctl: Ctl, agent_id: str | None, state: str | None, model: str | None, limit: int) -> None:
    """List training cycles of every agent, newest first."""
    query = {"agentId": agent_id, "status": state, "modelType": model, "limit": limit}
    ctl.out(ctl.client.call("GET", "/v1/admin/cycles", query=query), lambda d: _rows(d["cycles"]))


def _rows(listed: list[dict]) -> None:
    rows = []
    for c in listed:
        version = f"v{c['baseVersion']}"
        if c.get("resultVersion") is not None:
            version += f" -> v{c['resultVersion']}"
        rows.append(
            [c["cycleId"], c["agentId"], c["modelType"], c["status"], c["attempts"], _epochs(c), _loss(c),
             version, when(c.get("createdAt")), (c.get("error") or {}).get("reason")]
        )  # fmt: skip
    table(
        rows, ["CYCLE", "AGENT", "MODEL", "STATUS", "TRIES", "EPOCH", "LOSS", "VERSION", "CREATED", "ERROR"]
    )


def _show(c: dict) -> None:
    progress = c.get("progress") or {}
    items = [
        ("cycle", c["cycleId"]), ("agent", c["agentId"]), ("model", c["modelType"]), ("status", c["status"]),
        ("attempts", c["attempts"]), ("sandbox", c.get("sandboxId")),
        ("base version", c["baseVersion"]), ("result version", c.get("resultVersion")),
        ("created", when(c.get("createdAt"))),
        ("progress", f"epoch {_epochs(c)}, loss {_loss(c)}, accuracy {number(progress.get('accuracy'))}"),
    ]  # fmt: skip
    result = c.get("result") or {}
    if result.get("metrics"):
        metrics = result["metrics"]
        items.append(("metrics", f"loss {number(metrics.get('loss'))}, accuracy {number(metrics.get('accuracy'))}, "
                                 f"{number(metrics.get('durationSeconds'))} s"))  # fmt: skip
    if result.get("round"):
        items.append(("round", json.dumps(result["round"], sort_keys=True)))
    if c.get("error"):
        items.append(("error", f"{c['error'].get('reason')}: {c['error'].get('message')}"))
    pairs(items)


@command(cycles, "show")
@click.argument("cycle_id")
def cycles_show(ctl: Ctl, cycle_id: str) -> None:
    """One cycle: progress, result, resource record, error."""
    ctl.out(ctl.client.call("GET", f"/v1/petals/status/{quote(cycle_id)}"), _show)


def _bar(cycle: dict, width: int = 30) -> str:
    progress = cycle.get("progress") or {}
    epoch, epochs = progress.get("epoch", 0), progress.get("epochs", 0)
    filled = int(width * epoch / epochs) if epochs else 0
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _outcome(cycle: dict) -> str:
    """The last line of `watch`: why it failed, or what it gave."""
    if cycle["status"] == "failed":
        error = cycle.get("error") or {}
        return f"failed: {error.get('reason')}: {error.get('message')}"
    result = cycle.get("result") or {}
    metrics = result.get("metrics") or {}
    line = (
        f"{cycle['status']}: loss {number(metrics.get('loss'))}, accuracy {number(metrics.get('accuracy'))}"
    )
    outcome = (result.get("round") or {}).get("outcome")
    if outcome:
        line += f", round {outcome}"
    if cycle.get("resultVersion") is not None:
        line += f", model version {cycle['resultVersion']}"
    return line


@command(cycles, "watch")
@click.argument("cycle_id")
@seconds_option("--interval", "interval_s", 0.5, "Seconds between two looks at the cycle.", 0.05, 60)
@seconds_option("--wait", "wait_s", 3600.0, "Give up after this many seconds (exit 1).")
def cycles_watch(ctl: Ctl, cycle_id: str, interval_s: float, wait_s: float) -> None:
    """Follow a cycle: a progress bar of epochs with the current loss, ending with the result.

    Exit 0 when it completed (or was aggregated), 1 when it failed. With --json, one JSON
    status per change, the last one final."""
    follow(ctl, cycle_id, interval_s, wait_s)


def follow(ctl: Ctl, cycle_id: str, interval_s: float, wait_s: float) -> dict:
    """Draws the cycle's progress until it ends (`cycles watch`, `train --watch`); a failed
    cycle raises Verdict (exit 1)."""
    tty = sys.stdout.isatty() and not ctl.json
    deadline = time.monotonic() + wait_s
    last = None
    while True:
        cycle = ctl.client.call("GET", f"/v1/petals/status/{quote(cycle_id)}")
        state = (cycle["status"], cycle["attempts"], _epochs(cycle), _loss(cycle))
        if state != last:
            last = state
            if ctl.json:
                json_line(cycle)
            else:
                line = f"{_bar(cycle)} epoch {_epochs(cycle)} loss {_loss(cycle)} {cycle['status']} (attempt {cycle['attempts']})"
                click.echo(f"\r\033[K{line}" if tty else line, nl=not tty)
                sys.stdout.flush()
        if cycle["status"] in TERMINAL_CYCLE_STATES:
            break
        if time.monotonic() >= deadline:
            if tty:
                click.echo()
            raise CtlError(f"cycle {cycle_id} is still {cycle['status']} after {wait_s:g}s", EXIT_VERDICT)
        time.sleep(interval_s)
    if not ctl.json:
        if tty:
            click.echo()
        click.echo(_outcome(cycle))
    if cycle["status"] == "failed":
        raise Verdict()
    return cycle


def _log_line(entry) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        text = entry.get("line", entry.get("message"))
        if isinstance(text, str):
            return text
    return json.dumps(entry, sort_keys=True)


@command(cycles, "logs")
@click.argument("cycle_id")
def cycles_logs(ctl: Ctl, cycle_id: str) -> None:
    """The log lines of a cycle's learn program (its record's `logs`), oldest first."""
    cycle = ctl.client.call("GET", f"/v1/petals/status/{quote(cycle_id)}")
    if "logs" not in cycle:
        raise CtlError(
            f"cycle {cycle_id}'s record has no logs: this service does not keep learn-cycle logs "
            "(a release that reports them is needed); `cycles show` has its error and result",
            EXIT_API,
        )
    logs = cycle["logs"]
    lines = logs.splitlines() if isinstance(logs, str) else [_log_line(e) for e in logs or []]
    ctl.out({"cycleId": cycle_id, "logs": logs}, lambda _: [click.echo(line) for line in lines])
