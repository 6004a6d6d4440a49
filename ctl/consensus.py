"""`consensus history`: the hash-chained record of rounds, votes and commits."""

from __future__ import annotations

import click

from .context import Ctl, command
from .output import table, when


@click.group()
def consensus() -> None:
    """The consensus history (rounds, votes, commits)."""


@command(consensus, "history")
@click.option("--model", "model_name", help="Only entries about this model.")
@click.option("--kind", help="Only entries of this kind (round_proposal, vote, model_committed...).")
@click.option("--limit", default=50, type=click.IntRange(1, 1000))
def consensus_history(ctl: Ctl, model_name: str | None, kind: str | None, limit: int) -> None:
    """The hash-chained history, newest first."""
    query = {"modelType": model_name, "kind": kind, "limit": limit}
    ctl.out(ctl.client.call("GET", "/v1/consensus/history", query=query), lambda d: _rows(d["entries"]))


def _summary(body: dict) -> str:
    """The entry's plain fields, short enough for one table cell."""
    plain = (
        f"{k}={v}" for k, v in body.items() if isinstance(v, str | int | float | bool) and k != "sandboxId"
    )
    return ", ".join(plain)[:60]


def _rows(entries: list[dict]) -> None:
    rows = [
        [e["seq"], when(e["createdAt"]), e["kind"], e.get("modelName"), e.get("agentId"), e["entryHash"][:12],
         _summary(e.get("body") or {})]
        for e in entries
    ]  # fmt: skip
    table(rows, ["SEQ", "TIME", "KIND", "MODEL", "AGENT", "HASH", "SUMMARY"])
