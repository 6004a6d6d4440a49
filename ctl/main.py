"""The root of `wondercraft-ctl`: global options, the command groups, and `main`, which turns
every outcome into one exit status (see client.EXIT_*)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from . import (
    VERSION,
    agents,
    audit,
    cleanup,
    consensus,
    cycles,
    datasets,
    model,
    nodes,
    preflight,
    sandbox,
    stats,
    status,
    telemetry,
    train,
)
from .client import (
    DEFAULT_URL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    SERVICE_STATE_DIR,
    Verdict,
    default_state_dir,
    url_from_state_dir,
)
from .context import Ctl, seconds_option


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100, "show_default": True}
)
@click.version_option(VERSION, prog_name="wondercraft-ctl")
@click.option(
    "--url",
    envvar="WONDERCRAFT_URL",
    help="The service's base URL (env WONDERCRAFT_URL; default: the URL a local service wrote to "
    f"STATE_DIR/service.json, else {DEFAULT_URL}).",
)
@click.option(
    "--token",
    envvar="WONDERCRAFT_ADMIN_TOKEN",
    help="The admin token (env WONDERCRAFT_ADMIN_TOKEN; default: STATE_DIR/admin.token).",
)
@click.option(
    "--state-dir",
    envvar="WONDERCRAFT_STATE_DIR",
    # Not checked with access(2), which ignores capabilities: reading it says what is wrong.
    type=click.Path(path_type=Path, readable=False),
    help="A local service's state dir, for its admin.token (env WONDERCRAFT_STATE_DIR; default ./var, "
    f"else the unit's {SERVICE_STATE_DIR} when only it has a token).",
)
@seconds_option("--timeout", "timeout_s", 30.0, "Seconds to wait for each answer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")
@click.pass_context
def cli(
    ctx: click.Context,
    url: str | None,
    token: str | None,
    state_dir: Path | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Administer a WonderCraft service over its REST API.

    \b
    Exit status: 0 done; 1 the answer is "no" (orphans found, chain broken,
    a check or a cycle failed); 2 bad usage; 3 service unreachable;
    4 no token or token refused; 5 not found; 6 other API error.
    """  # fmt: skip
    state_dir = state_dir or default_state_dir()
    url = url or url_from_state_dir(state_dir) or DEFAULT_URL
    ctx.obj = Ctl(url=url, token=token, state_dir=state_dir, timeout_s=timeout_s, json=as_json)


for _command in (
    status.status, sandbox.sandbox, stats.stats, cycles.cycles, model.model, telemetry.telemetry,
    consensus.consensus, audit.audit, agents.agents, cleanup.cleanup, preflight.preflight, nodes.nodes,
    train.train, datasets.datasets,
):  # fmt: skip
    cli.add_command(_command)
cli.add_command(model.model, name="models")  # `models create` reads as the issue and the API name it


def main(argv: list[str] | None = None) -> int:
    # A closed pipe (| head) ends output quietly; Ctrl-C ends follow modes with 130.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        result = cli.main(args=argv, prog_name="wondercraft-ctl", standalone_mode=False)
    except click.ClickException as exc:  # CtlError included: one line, its own exit status
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    except Verdict as verdict:
        return verdict.exit_code
    # Without standalone mode, click returns --help's and --version's exit status.
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
