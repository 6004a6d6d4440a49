"""`audit verify|sandbox|host`: the hash chain, one sandbox's caps against what the kernel
enforces, and every project resource on the host, known or orphaned."""

from __future__ import annotations

import os

import click

from .client import EXIT_AUTH, CtlError, Verdict, quote
from .context import Ctl, command
from .output import human_bytes, number, table


@click.group()
def audit() -> None:
    """Audits: the hash chain, one sandbox against its caps, the whole host."""


@command(audit, "verify")
def audit_verify(ctl: Ctl) -> None:
    """Check the audit log's hash chain end to end (exit 1 if broken)."""
    data = ctl.client.call("GET", "/v1/audit/verify")

    def render(d: dict) -> None:
        if d["ok"]:
            click.echo(f"chain ok: {d['entries']} entries, head #{d['headSeq']} {d['headHash'][:16]}")
        else:
            click.echo(
                f"chain BROKEN at entry {d.get('firstBadSeq')}: {d.get('reason')} ({d['entries']} checked)"
            )

    ctl.out(data, render)
    if not data["ok"]:
        raise Verdict()


SOURCES = {
    "live": "read from the kernel now",
    "final": "the record kept at destroy",
    "lost": "lost: the service stopped without destroying it",
}


@command(audit, "sandbox")
@click.argument("sandbox_id")
def audit_sandbox(ctl: Ctl, sandbox_id: str) -> None:
    """The kernel's record for a sandbox against the caps it had (exit 1 on a mismatch)."""
    data = ctl.client.call("GET", f"/v1/admin/audit/sandbox/{quote(sandbox_id)}")

    def show(value: float | None, unit: str) -> str:
        return human_bytes(value) if unit == "bytes" else number(value)

    def render(d: dict) -> None:
        click.echo(f"{d['sandboxId']} ({d['agentId']}, {d['status']}): {SOURCES[d['source']]}")
        rows = [
            [c["resource"], show(c["cap"], c["unit"]), show(c["enforced"], c["unit"]), show(c["used"], c["unit"]),
             c["verdict"], c["note"]]
            for c in d["checks"]
        ]  # fmt: skip
        table(rows, ["RESOURCE", "CAP", "KERNEL", "USED", "VERDICT", "NOTE"])

    ctl.out(data, render)
    if not data["ok"]:
        raise Verdict()


@command(audit, "host")
@click.option(
    "--offline",
    is_flag=True,
    help="Scan this host directly instead of asking the service (for a service that is down).",
)
def audit_host(ctl: Ctl, offline: bool) -> None:
    """Every cgroup, mount, netns, link and launcher process carrying the project's names,
    each known (held by a live sandbox or service) or orphaned. Exit 1 if any is orphaned."""
    if offline:
        if os.geteuid() != 0:
            raise CtlError("audit host --offline reads every process and cgroup; run it as root", EXIT_AUTH)
        # The runtime's scanner, only for this command: the rest of ctl needs only the API.
        from runtime.hostaudit import scan_host

        data = scan_host()
    else:
        data = ctl.client.call("GET", "/v1/admin/audit/host")

    def render(d: dict) -> None:
        rows = [
            [f["kind"], f["name"], f["state"], f["instance"], f["owner"], _facts(f["detail"])]
            for f in d["findings"]
        ]
        table(rows, ["KIND", "NAME", "STATE", "INSTANCE", "OWNER", "DETAIL"])
        click.echo(f"{d['known']} known, {d['orphans']} orphaned ({d['mode']} scan)")

    ctl.out(data, render)
    if data["orphans"]:
        raise Verdict()


def _facts(detail: dict) -> str:
    facts = []
    if "pids" in detail:
        facts.append(f"pids {','.join(map(str, detail['pids'])) or 'none'}")
    if detail.get("role") == "instance parent":
        facts.append("instance parent")
    if "argv" in detail:
        facts.append(" ".join(detail["argv"]))
    if "source" in detail:
        facts.append(f"{detail['fstype']} {detail['source']}")
    return "; ".join(facts)
