"""`agents add|ls|revoke`: the agents allowed to use the service, and their tokens."""

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
    rows = [
        [a["agentId"], "active" if a["active"] else "revoked", when(a["createdAt"]), when(a["revokedAt"])]
        for a in listed
    ]
    table(rows, ["AGENT", "STATE", "CREATED", "REVOKED"])


@command(agents, "revoke")
@click.argument("agent_id")
def agents_revoke(ctl: Ctl, agent_id: str) -> None:
    """Revoke an agent's token at once (its id is never reused)."""
    data = ctl.client.call("DELETE", f"/v1/agents/{quote(agent_id)}")
    ctl.out(data, lambda d: click.echo(f"{d['agentId']} revoked at {when(d['revokedAt'])}"))
