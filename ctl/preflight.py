"""`preflight`: the host checks, run here (no service needed). The checks live with the service
(server/preflight/) and need the runtime, so they are imported only when this command runs."""

from __future__ import annotations

from pathlib import Path

import click

from .client import Verdict
from .context import Ctl, command

STATUSES = ("pass", "warn", "fail")


@command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The scaling JSON the service will be given (for resourceLimits).",
)
def preflight(ctl: Ctl, config_path: Path | None) -> None:
    """Check this host before it serves: root and capabilities, cgroups, overlay and tmpfs,
    namespaces, seccomp, memory against the caps, GPUs and their device nodes, the state dir.
    Exit 1 if any check fails (warnings pass)."""
    from server import preflight as checks

    results = checks.run(ctl.state_dir, config_path)
    data = {"ok": all(c.status != checks.FAIL for c in results), "checks": [c.to_json() for c in results]}
    ctl.out(data, _report)
    if not data["ok"]:
        raise Verdict()


def _report(d: dict) -> None:
    for c in d["checks"]:
        click.echo(f"{c['status'].upper():<4}  {c['check']:<18}  {c['detail']}")
        if c["fix"] and c["status"] != "pass":
            click.echo(f"{'':<4}  {'':<18}  fix: {c['fix']}")
    counts = {s: sum(1 for c in d["checks"] if c["status"] == s) for s in STATUSES}
    click.echo(f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed")
