"""`wondercraft-ctl`: the admin tool. It talks to the REST API of a running service."""

from __future__ import annotations

import sys

import click

from . import VERSION


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="wondercraft-ctl")
def cli() -> None:
    """Administer a WonderCraft service over its REST API."""


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="wondercraft-ctl", standalone_mode=False)
    except click.exceptions.NoArgsIsHelp:
        return 0
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
