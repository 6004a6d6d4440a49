"""`agents add|ls|revoke|reinstate`: the agents allowed to use the service, their tokens, and
their standing in screening (updates excluded, in a row, the last norm, suspensions)."""

from __future__ import annotations

import click

from .client import quote
from .context import Ctl, command
from .output import pairs, table, when


@click.group()
def agents() -> None:
    """Agents and their tokens."""


@command(agents, "add")
@click.argument("agent_id")
def agents_add(ctl: Ctl, agent_id: str) -> None:
    """Register an agent and print its token (shown only this once)."""
    data = ctl.client.call("POST", "/v1/agents", {"agentId": agent_id})
    ctl.out(data, lambda d: pairs([("agent", d["agentId"]), ("token", d["token"])]))


@command(agents, "ls")
def agents_ls(ctl: Ctl) -> None:
    """Every agent, revoked ones included (tokens are never shown again)."""
    ctl.out(ctl.client.call("GET", "/v1/agents"), lambda d: _rows(d["agents"]))


def _rows(listed: list[dict]) -> None:
    rows = []
    for a in listed:
        standing = a.get("standing") or {}
        norm = standing.get("lastNorm")
        rows.append([
            a["agentId"], "active" if a["active"] else "revoked", when(a["createdAt"]), when(a["revokedAt"]),
            f"{standing.get('exclusions', 0)}/{standing.get('updates', 0)}",
            str(standing.get("consecutiveExclusions", 0)), "-" if norm is None else f"{norm:.4g}",
            ",".join(standing.get("suspendedModels", [])) or "-",
        ])  # fmt: skip
    table(rows, ["AGENT", "STATE", "CREATED", "REVOKED", "EXCLUDED", "IN-A-ROW", "LAST-NORM", "SUSPENDED"])


@command(agents, "reinstate")
@click.argument("agent_id")
@click.option("--model", "model", default=None, help="Only this model (default: every one)")
def agents_reinstate(ctl: Ctl, agent_id: str, model: str | None) -> None:
    """Take an agent's jobs again after screening suspended it."""
    body = {"modelType": model} if model else {}
    data = ctl.client.call("POST", f"/v1/agents/{quote(agent_id)}/reinstate", body)
    ctl.out(
        data,
        lambda d: click.echo(f"{d['agentId']} reinstated for {', '.join(d['reinstated']) or 'no model'}"),
    )


@command(agents, "revoke")
@click.argument("agent_id")
def agents_revoke(ctl: Ctl, agent_id: str) -> None:
    """Revoke an agent's token at once (its id is never reused)."""
    data = ctl.client.call("DELETE", f"/v1/agents/{quote(agent_id)}")
    ctl.out(data, lambda d: click.echo(f"{d['agentId']} revoked at {when(d['revokedAt'])}"))
