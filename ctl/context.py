"""What every command receives: the service's URL and token, the output mode, and the client
made on first use. `command` declares a command with the shared `--json` option."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from .client import Client, token_from_state_dir
from .output import json_document


@dataclass
class Ctl:
    url: str
    token: str | None
    state_dir: Path
    timeout_s: float
    json: bool = False
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            token, problem = self.token, ""
            if not token:
                token, problem = token_from_state_dir(self.state_dir)
            self._client = Client(self.url, token, problem, self.timeout_s)
        return self._client

    def out(self, data: Any, render: Callable[[Any], None]) -> None:
        """The answer as JSON with --json, else as `render` draws it."""
        if self.json:
            json_document(data)
        else:
            render(data)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Ctl).json = True


pass_ctl = click.make_pass_decorator(Ctl)


def command(group: click.Group | None = None, name: str | None = None, **settings: Any) -> Callable:
    """A command of `group` (a top-level one without), whose function receives the Ctl first,
    with `--json` accepted after the command as well as before it."""

    def decorate(function: Callable) -> click.Command:
        function = pass_ctl(function)
        function = click.option(
            "--json", "as_json", is_flag=True, expose_value=False, callback=_set_json,
            help="Print JSON for scripts instead of a table.",
        )(function)  # fmt: skip
        make = group.command if group is not None else click.command
        return make(name, **settings)(function)

    return decorate


def seconds_option(
    name: str, dest: str, default: float, help: str, low: float = 0.1, high: float | None = None
):
    """An option that takes a number of seconds, at least `low` (and at most `high`)."""
    return click.option(name, dest, default=default, type=click.FloatRange(low, high), help=help)
