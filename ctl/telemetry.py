"""`telemetry tail [-f]`: training telemetry, the latest events and then, live, new ones."""

from __future__ import annotations

import json

import click

from .context import Ctl, command
from .output import json_line, number, when

TELEMETRY_EVENTS = ("training_cycle_completed", "training_cycle_failed")


@click.group()
def telemetry() -> None:
    """Training telemetry."""


def event_line(event: dict) -> str:
    metrics = event.get("metrics") or {}
    parts = [when(event.get("timestamp")), f"#{event['seq']}", event["event"], event["agentId"],
             event.get("cycleId") or "-"]  # fmt: skip
    if metrics:
        parts.append(f"loss={number(metrics.get('loss'))} accuracy={number(metrics.get('accuracy'))}")
    if event.get("error"):
        parts.append(f"error={event['error']}")
    return "  ".join(str(p) for p in parts)


@command(telemetry, "tail")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they come.")
@click.option(
    "-n",
    "--lines",
    "count",
    default=20,
    type=click.IntRange(0, 1000),
    help="How many recent events to print first.",
)
@click.option("--agent", "agent_id", help="Only this agent's events.")
@click.option("--event", "kind", type=click.Choice(TELEMETRY_EVENTS))
def telemetry_tail(ctl: Ctl, follow: bool, count: int, agent_id: str | None, kind: str | None) -> None:
    """The latest events, oldest first; with -f, then new ones live. --json: one event per line."""
    filters = {"agentId": agent_id, "event": kind}

    def show(event: dict) -> None:
        if ctl.json:
            json_line(event)
        else:
            click.echo(event_line(event))

    latest = ctl.client.call("GET", "/v1/telemetry/training", query={**filters, "limit": count or 1})[
        "events"
    ]
    last_seq = max((e["seq"] for e in latest), default=0)
    if count:
        for event in reversed(latest):
            show(event)
    while follow:
        # Resuming from the last seq printed: nothing is missed across a reconnect.
        for event_kind, data in ctl.client.stream("/v1/telemetry/training/stream", filters, last_seq):
            if event_kind == "overflow":
                break  # we read too slowly: reconnect from the last seq printed
            event = json.loads(data)
            if event["seq"] > last_seq:
                show(event)
                last_seq = event["seq"]
        else:
            click.echo("wondercraft-ctl: the service ended the stream (shutting down?)", err=True)
            return
