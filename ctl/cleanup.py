"""`cleanup`: the supervisor's pass, now: expired and dead sandboxes, this instance's orphans."""

from __future__ import annotations

import click

from .context import Ctl, command
from .output import table


@command()
def cleanup(ctl: Ctl) -> None:
    """Run the orphan sweep now (and reap expired or dead sandboxes); list what it removed."""
    ctl.out(ctl.client.call("POST", "/v1/admin/cleanup"), _removed)


def _removed(d: dict) -> None:
    rows = [["sandbox", s, "past its lifetime"] for s in d["expired"]]
    rows += [["sandbox", s, "its init had died"] for s in d["dead"]]
    rows += [["cgroup", c, "orphaned"] for c in d["orphans"]["cgroups"]]
    rows += [["netns", n, "orphaned"] for n in d["orphans"]["netns"]]
    if rows:
        table(rows, ["KIND", "NAME", "WHY"])
    click.echo(f"removed {d['removed']}" if d["removed"] else "nothing to remove")
