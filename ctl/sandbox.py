"""`sandbox ls|inspect|exec|kill`: the service's sandboxes."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .client import EXIT_VERDICT, Verdict, quote
from .context import Ctl, command
from .output import human_bytes, number, pairs, seconds, table, when

SANDBOX_STATES = ("running", "destroyed")


@click.group()
def sandbox() -> None:
    """Sandboxes: list, inspect, run a command in one, kill one."""


def _final(s: dict) -> tuple[dict, dict]:
    """(the final resource record, its resource use) of a destroyed sandbox; empty while it runs."""
    final = s.get("finalResourceRecord") or {}
    return final, final.get("resourceUsage") or {}


def _usage_items(usage: dict) -> list[tuple[str, Any]]:
    return [
        ("cpu used", seconds(usage.get("cpuSeconds"))),
        ("memory peak", human_bytes(usage.get("memoryPeakBytes"))),
    ]


def ended_at_ms(s: dict) -> float | None:
    """When a destroyed sandbox ended: the service's own time where it gives one, else its
    creation plus the wall time of its final record."""
    for key in ("endedAt", "destroyedAt"):
        if s.get(key) is not None:
            return s[key]
    final, _ = _final(s)
    if final.get("wallSeconds") is None or s.get("createdAt") is None:
        return None
    return s["createdAt"] + final["wallSeconds"] * 1000


def _rows(sandboxes: list[dict]) -> None:
    rows = []
    for s in sandboxes:
        caps = s.get("resourceCaps") or {}
        final, _ = _final(s)
        rows.append(
            [
                s["sandboxId"], s["agentId"], s["status"], number(caps.get("cpu")),
                human_bytes((caps.get("memory") or 0) << 20), s.get("executions"), when(s.get("createdAt")),
                when(ended_at_ms(s)), final.get("terminationReason") or s.get("terminationReason"),
            ]
        )  # fmt: skip
    table(rows, ["SANDBOX", "AGENT", "STATUS", "CPU", "MEMORY", "EXECS", "CREATED", "ENDED", "REASON"])


@command(sandbox, "ls")
@click.option("--agent", "agent_id", help="Only this agent's sandboxes.")
@click.option("--status", "state", type=click.Choice(SANDBOX_STATES), help="Only sandboxes in this state.")
@click.option("--limit", default=100, type=click.IntRange(1, 1000))
def sandbox_ls(ctl: Ctl, agent_id: str | None, state: str | None, limit: int) -> None:
    """List sandboxes, newest first."""
    data = ctl.client.call("GET", "/v1/sandbox", query={"agentId": agent_id, "status": state, "limit": limit})
    ctl.out(data, lambda d: _rows(d["sandboxes"]))


@command(sandbox, "inspect")
@click.argument("sandbox_id")
def sandbox_inspect(ctl: Ctl, sandbox_id: str) -> None:
    """A sandbox's state, caps and resource use."""
    ctl.out(ctl.client.call("GET", f"/v1/sandbox/status/{quote(sandbox_id)}"), _inspect)


def _inspect(s: dict) -> None:
    caps = s.get("resourceCaps") or {}
    final, final_usage = _final(s)
    usage = s.get("resourceUsage") or final_usage
    items = [
        ("sandbox", s["sandboxId"]), ("agent", s["agentId"]), ("status", s["status"]),
        ("caps", f"cpu {number(caps.get('cpu'))}, memory {caps.get('memory')} MB, pids {caps.get('pids')}, "
                 f"storage {caps.get('storageMB')} MB, gpu {caps.get('gpu')}"),
        ("network", s.get("network")), ("created", when(s.get("createdAt"))),
        ("expires", when(s.get("expiresAt"))), ("executions", s.get("executions")),
        *_usage_items(usage),
        ("oom kills", usage.get("oomKills")),
    ]  # fmt: skip
    if s.get("trainingConfig"):
        items.append(("training", json.dumps(s["trainingConfig"])))
    if final:
        items.append(("ended", final.get("terminationReason")))
    pairs(items)


@command(sandbox, "exec", context_settings={"ignore_unknown_options": True})
@click.argument("sandbox_id")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED, metavar="COMMAND...")
@click.option("--timeout", "timeout_s", default=60.0, type=click.FloatRange(0.001, 86400))
@click.option(
    "--env", "env", multiple=True, metavar="NAME=VALUE", help="An environment variable (repeatable)."
)
@click.option(
    "--stdin",
    "stdin_file",
    type=click.File("r"),
    help="A file whose text is the command's stdin ('-': ours).",
)
def sandbox_exec(ctl: Ctl, sandbox_id: str, argv: tuple[str, ...], timeout_s: float, env: tuple[str, ...],
                 stdin_file) -> None:  # fmt: skip
    """Run COMMAND (argv, no shell) in a sandbox: `sandbox exec ID -- CMD ARGS...`.

    Its stdout and stderr are printed as they were, and its exit status becomes ours
    (128+N when signal N ended it)."""
    body: dict[str, Any] = {"sandboxId": sandbox_id, "command": list(argv), "timeoutSeconds": timeout_s}
    variables = _variables(env)
    if variables:
        body["env"] = variables
    if stdin_file is not None:
        body["stdin"] = stdin_file.read()
    result = ctl.client.call("POST", "/v1/sandbox/execute", body, timeout_s=timeout_s + ctl.timeout_s)
    ctl.out(result, _replay)
    if result.get("signal"):
        raise Verdict(128 + int(result["signal"]))
    if result.get("exitCode"):
        raise Verdict(int(result["exitCode"]) & 0xFF or EXIT_VERDICT)


def _variables(env: tuple[str, ...]) -> dict[str, str]:
    variables = {}
    for item in env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--env")
        variables[name] = value
    return variables


def _replay(result: dict) -> None:
    """The command's own output, as it wrote it; what the sandbox did to it on stderr."""
    sys.stdout.write(result["stdout"])
    sys.stdout.flush()
    sys.stderr.write(result["stderr"])
    if result.get("truncated"):
        click.echo("wondercraft-ctl: output was truncated at the sandbox's output limit", err=True)
    if result.get("terminationReason"):
        click.echo(f"wondercraft-ctl: the command was ended: {result['terminationReason']}", err=True)


@command(sandbox, "kill")
@click.argument("sandbox_id")
def sandbox_kill(ctl: Ctl, sandbox_id: str) -> None:
    """Destroy a sandbox: kill everything in it, print its final resource record."""
    ctl.out(ctl.client.call("DELETE", f"/v1/sandbox/{quote(sandbox_id)}"), _killed)


def _killed(s: dict) -> None:
    final, usage = _final(s)
    used = ", ".join(f"{name} {value or '-'}" for name, value in _usage_items(usage))
    click.echo(f"{s['sandboxId']} {s['status']} ({final.get('terminationReason')}); {used}")
