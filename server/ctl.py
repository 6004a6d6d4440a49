"""`wondercraft-ctl`: the admin tool. It talks to the REST API of a running service (readable
tables by default, `--json` for scripts); `preflight` and `audit host --offline` look at the host
itself. Errors are one line on stderr, and the exit status says what happened (EXIT_* below)."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from . import VERSION

EXIT_OK = 0
EXIT_VERDICT = 1  # the command worked and its answer is "no": orphans, a broken chain, a failed check
EXIT_USAGE = 2  # click's own: a bad option or argument
EXIT_UNREACHABLE = 3  # no service answers at --url
EXIT_AUTH = 4  # no token, or the service refused it (401/403)
EXIT_NOT_FOUND = 5  # no such sandbox, cycle, model or agent
EXIT_API = 6  # any other refusal (400, 409, 429, 5xx)
EXIT_INTERRUPTED = 130

DEFAULT_URL = "http://127.0.0.1:3000"
SERVICE_STATE_DIR = Path("/var/lib/wondercraft")  # the state dir systemd/wondercraft.service uses
TERMINAL_CYCLE = ("completed", "failed", "aggregated")


class CtlError(click.ClickException):
    """A one-line error with its exit status; no traceback ever reaches the operator."""

    def __init__(self, message: str, exit_code: int = EXIT_API) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"wondercraft-ctl: error: {self.message}", err=True)


class Verdict(Exception):
    """The command printed its answer and wants a non-zero exit (orphans found, check failed)."""

    def __init__(self, exit_code: int = EXIT_VERDICT) -> None:
        self.exit_code = exit_code


# ------------------------------------------------------------------ client --


@dataclass
class Client:
    url: str
    token: str | None
    token_problem: str  # why there is no token, for the error when one is needed
    timeout_s: float

    def _url(self, path: str, query: dict[str, Any] | None = None) -> str:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        suffix = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self.url.rstrip("/") + path + suffix

    def _headers(self, auth: bool) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"wondercraft-ctl/{VERSION}"}
        if auth:
            if not self.token:
                raise CtlError(self.token_problem, EXIT_AUTH)
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        auth: bool = True,
        timeout_s: float | None = None,
        raw: bool = False,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._url(path, query), data=data, method=method)
        for name, value in self._headers(auth).items():
            request.add_header(name, value)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise _api_error(method, path, exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        if raw:
            return payload
        try:
            return json.loads(payload)
        except ValueError:
            raise CtlError(f"{method} {path} answered something that is not JSON", EXIT_API) from None

    def _unreachable(self, reason: Any) -> CtlError:
        text = getattr(reason, "strerror", None) or str(reason)
        return CtlError(
            f"cannot reach the service at {self.url}: {text}; is it running? (set --url or WONDERCRAFT_URL)",
            EXIT_UNREACHABLE,
        )

    def stream(
        self, path: str, query: dict[str, Any], last_event_id: int | None
    ) -> Iterator[tuple[str, str]]:
        """Server-Sent Events as (event, data) pairs until the service ends the stream."""
        parts = urllib.parse.urlsplit(self._url(path, query))
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=self.timeout_s + 30)
        headers = {**self._headers(True), "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        try:
            connection.request(
                "GET", f"{parts.path}?{parts.query}" if parts.query else parts.path, headers=headers
            )
            response = connection.getresponse()
            if response.status != 200:
                raise _api_error("GET", path, response.status, response.read())
            event, data = "message", []
            for raw_line in response:
                line = raw_line.decode(errors="replace").rstrip("\r\n")
                if not line:
                    if data:
                        yield event, "\n".join(data)
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            connection.close()


def _api_error(method: str, path: str, status: int, payload: bytes) -> CtlError:
    try:
        message = json.loads(payload)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = payload.decode(errors="replace").strip()[:200] or "no details"
    if status in (401, 403):
        return CtlError(f"the service refused the token ({status}): {message}", EXIT_AUTH)
    if status == 404:
        return CtlError(message, EXIT_NOT_FOUND)
    return CtlError(f"{method} {path} failed ({status}): {message}", EXIT_API)


# ----------------------------------------------------------------- context --


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
                token, problem = _token_from_state_dir(self.state_dir)
            self._client = Client(self.url, token, problem, self.timeout_s)
        return self._client

    def out(self, data: Any, render: Callable[[Any], None]) -> None:
        if self.json:
            click.echo(json.dumps(data, indent=2, sort_keys=True))
        else:
            render(data)


def _token_from_state_dir(state_dir: Path) -> tuple[str | None, str]:
    path = state_dir / "admin.token"
    hint = "give --token, set WONDERCRAFT_ADMIN_TOKEN, or point --state-dir at the service's state dir"
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None, f"no admin token: {path} does not exist; {hint}"
    except OSError as exc:
        return None, f"no admin token: {path} cannot be read ({exc.strerror}); {hint}"
    if not token:
        return None, f"no admin token: {path} is empty; {hint}"
    return token, ""


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Ctl).json = True


def json_option(command: Callable) -> Callable:
    """`--json` after any command, as well as before it."""
    return click.option(
        "--json", "as_json", is_flag=True, expose_value=False, callback=_set_json,
        help="Print JSON for scripts instead of a table.",
    )(command)  # fmt: skip


pass_ctl = click.make_pass_decorator(Ctl)


# ------------------------------------------------------------------ output --


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip())


def pairs(items: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in items)
    for key, value in items:
        click.echo(f"{key.ljust(width)}  {'-' if value is None else value}")


def human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def when(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


# -------------------------------------------------------------------- root --


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(VERSION, prog_name="wondercraft-ctl")
@click.option(
    "--url",
    envvar="WONDERCRAFT_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The service's base URL (env WONDERCRAFT_URL).",
)
@click.option(
    "--token",
    envvar="WONDERCRAFT_ADMIN_TOKEN",
    help="The admin token (env WONDERCRAFT_ADMIN_TOKEN; default: STATE_DIR/admin.token).",
)
@click.option(
    "--state-dir",
    envvar="WONDERCRAFT_STATE_DIR",
    type=click.Path(path_type=Path),
    help="A local service's state dir, for its admin.token (env WONDERCRAFT_STATE_DIR; default ./var, "
    f"else the unit's {SERVICE_STATE_DIR} when only it has a token).",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for each answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")
@click.pass_context
def cli(
    ctx: click.Context, url: str, token: str | None, state_dir: Path | None, timeout_s: float, as_json: bool
) -> None:
    """Administer a WonderCraft service over its REST API.

    \b
    Exit status: 0 done; 1 the answer is "no" (orphans found, chain broken,
    a check or a cycle failed); 2 bad usage; 3 service unreachable;
    4 no token or token refused; 5 not found; 6 other API error.
    """  # fmt: skip
    if state_dir is None:
        state_dir = Path("./var")
        if not (state_dir / "admin.token").exists() and (SERVICE_STATE_DIR / "admin.token").exists():
            state_dir = SERVICE_STATE_DIR  # on a host running the systemd unit
    ctx.obj = Ctl(url=url, token=token, state_dir=state_dir, timeout_s=timeout_s, json=as_json)


@cli.command()
@json_option
@pass_ctl
def status(ctl: Ctl) -> None:
    """Health, cgroup mode, counts and the queue depth."""
    data = ctl.client.call("GET", "/v1/admin/status")

    def render(s: dict) -> None:
        cycles, sandboxes = s["cycles"], s["sandboxes"]
        by_status = ", ".join(f"{k} {v}" for k, v in sorted(cycles["byStatus"].items())) or "none yet"
        models = ", ".join(
            f"{m['modelType']} v{m['currentVersion']} ({m['versions']} versions)" for m in s["models"]
        )
        pairs(
            [
                ("service", f"{s['status']} (version {s['version']}, pid {s['pid']}, up {duration(s['uptimeSeconds'])})"),
                ("url", ctl.url),
                ("cgroup mode", s["cgroupMode"]),
                ("instance", f"{s['instance']} (state dir {s['stateDir']})"),
                ("sandboxes", f"{sandboxes['running']} running, "
                              f"{sum(sandboxes['byStatus'].values())} recorded"),
                ("queue depth", f"{cycles['queued']} queued, {cycles['running']} running "
                                f"(at most {cycles['maxConcurrent']} at once)"),
                ("cycles", by_status),
                ("models", models or "none yet"),
                ("agents", f"{s['agents']['active']} active, {s['agents']['revoked']} revoked"),
                ("gpus", f"{s['gpus']['free']} free of {s['gpus']['total']}"),
                ("stop grace", f"{s['shutdownGraceSeconds']:g}s"),
            ]
        )  # fmt: skip

    ctl.out(data, render)


# ----------------------------------------------------------------- sandbox --


@cli.group()
def sandbox() -> None:
    """Sandboxes: list, inspect, run a command in one, kill one."""


def _sandbox_rows(sandboxes: list[dict]) -> None:
    rows = []
    for s in sandboxes:
        caps = s.get("resourceCaps") or {}
        final = s.get("finalResourceRecord") or {}
        rows.append(
            [
                s["sandboxId"], s["agentId"], s["status"], number(caps.get("cpu")),
                human_bytes((caps.get("memory") or 0) << 20), s.get("executions"), when(s.get("createdAt")),
                final.get("terminationReason"),
            ]
        )  # fmt: skip
    table(rows, ["SANDBOX", "AGENT", "STATUS", "CPU", "MEMORY", "EXECS", "CREATED", "ENDED"])


@sandbox.command("ls")
@click.option("--agent", "agent_id", help="Only this agent's sandboxes.")
@click.option(
    "--status", "state", type=click.Choice(["running", "destroyed"]), help="Only sandboxes in this state."
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@json_option
@pass_ctl
def sandbox_ls(ctl: Ctl, agent_id: str | None, state: str | None, limit: int) -> None:
    """List sandboxes, newest first."""
    data = ctl.client.call("GET", "/v1/sandbox", query={"agentId": agent_id, "status": state, "limit": limit})
    ctl.out(data, lambda d: _sandbox_rows(d["sandboxes"]))


@sandbox.command("inspect")
@click.argument("sandbox_id")
@json_option
@pass_ctl
def sandbox_inspect(ctl: Ctl, sandbox_id: str) -> None:
    """A sandbox's state, caps and resource use."""
    data = ctl.client.call("GET", f"/v1/sandbox/status/{_quote(sandbox_id)}")

    def render(s: dict) -> None:
        caps = s.get("resourceCaps") or {}
        usage = s.get("resourceUsage") or (s.get("finalResourceRecord") or {}).get("resourceUsage") or {}
        final = s.get("finalResourceRecord") or {}
        items = [
            ("sandbox", s["sandboxId"]), ("agent", s["agentId"]), ("status", s["status"]),
            ("caps", f"cpu {number(caps.get('cpu'))}, memory {caps.get('memory')} MB, pids {caps.get('pids')}, "
                     f"storage {caps.get('storageMB')} MB, gpu {caps.get('gpu')}"),
            ("network", s.get("network")), ("created", when(s.get("createdAt"))),
            ("expires", when(s.get("expiresAt"))), ("executions", s.get("executions")),
            ("cpu used", f"{number(usage.get('cpuSeconds'))} s" if usage.get("cpuSeconds") is not None else None),
            ("memory peak", human_bytes(usage.get("memoryPeakBytes"))),
            ("oom kills", usage.get("oomKills")),
        ]  # fmt: skip
        if s.get("trainingConfig"):
            items.append(("training", json.dumps(s["trainingConfig"])))
        if final:
            items.append(("ended", final.get("terminationReason")))
        pairs(items)

    ctl.out(data, render)


@sandbox.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("sandbox_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=click.FloatRange(0.001, 86400))
@click.option(
    "--env", "env", multiple=True, metavar="NAME=VALUE", help="An environment variable (repeatable)."
)
@click.option(
    "--stdin",
    "stdin_file",
    type=click.File("r"),
    help="A file whose text is the command's stdin ('-': ours).",
)
@json_option
@pass_ctl
def sandbox_exec(ctl: Ctl, sandbox_id: str, command: tuple[str, ...], timeout_s: float, env: tuple[str, ...],
                 stdin_file) -> None:  # fmt: skip
    """Run COMMAND (argv, no shell) in a sandbox: `sandbox exec ID -- CMD ARGS...`.

    Its stdout and stderr are printed as they were, and its exit status becomes ours
    (128+N when signal N ended it)."""
    variables = {}
    for item in env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--env")
        variables[name] = value
    body: dict[str, Any] = {"sandboxId": sandbox_id, "command": list(command), "timeoutSeconds": timeout_s}
    if variables:
        body["env"] = variables
    if stdin_file is not None:
        body["stdin"] = stdin_file.read()
    result = ctl.client.call("POST", "/v1/sandbox/execute", body, timeout_s=timeout_s + ctl.timeout_s)
    if ctl.json:
        ctl.out(result, lambda _: None)
    else:
        sys.stdout.write(result["stdout"])
        sys.stdout.flush()
        sys.stderr.write(result["stderr"])
        if result.get("truncated"):
            click.echo("wondercraft-ctl: output was truncated at the sandbox's output limit", err=True)
        if result.get("terminationReason"):
            click.echo(f"wondercraft-ctl: the command was ended: {result['terminationReason']}", err=True)
    if result.get("signal"):
        raise Verdict(128 + int(result["signal"]))
    if result.get("exitCode"):
        raise Verdict(int(result["exitCode"]) & 0xFF or EXIT_VERDICT)


@sandbox.command("kill")
@click.argument("sandbox_id")
@json_option
@pass_ctl
def sandbox_kill(ctl: Ctl, sandbox_id: str) -> None:
    """Destroy a sandbox: kill everything in it, print its final resource record."""
    data = ctl.client.call("DELETE", f"/v1/sandbox/{_quote(sandbox_id)}")

    def render(s: dict) -> None:
        final = s.get("finalResourceRecord") or {}
        usage = final.get("resourceUsage") or {}
        click.echo(
            f"{s['sandboxId']} {s['status']} ({final.get('terminationReason')}); "
            f"cpu {number(usage.get('cpuSeconds'))} s, memory peak {human_bytes(usage.get('memoryPeakBytes'))}"
        )

    ctl.out(data, render)


# ------------------------------------------------------------------- stats --


def _with_cpu_percent(previous: dict[str, dict], samples: list[dict]) -> list[dict]:
    rows = []
    for sample in samples:
        before = previous.get(sample["sandboxId"])
        percent = None
        if before and sample["cpuSeconds"] is not None and before["cpuSeconds"] is not None:
            elapsed = sample["sampledAt"] - before["sampledAt"]
            if elapsed > 0:
                percent = round(max(0.0, sample["cpuSeconds"] - before["cpuSeconds"]) / elapsed * 100, 2)
        rows.append({**sample, "cpuPercent": percent})
    return rows


def _stats_table(rows: list[dict]) -> None:
    lines = []
    for r in rows:
        memory = f"{human_bytes(r['memoryCurrentBytes'])} / {human_bytes(r['memoryLimitBytes'])}"
        share = (
            f"{r['memoryCurrentBytes'] / r['memoryLimitBytes']:.1%}"
            if r["memoryCurrentBytes"] is not None and r["memoryLimitBytes"]
            else None
        )
        io = f"{human_bytes(r['ioReadBytes'])} / {human_bytes(r['ioWriteBytes'])}"
        cpu = f"{r['cpuPercent']:.1f}%" if r["cpuPercent"] is not None else None
        lines.append(
            [r["sandboxId"], r["agentId"], r["cycleId"], cpu, f"{r['cpuCores']:g}", memory, share,
             f"{r['pidsCurrent']}/{r['pidsLimit']}", io]
        )  # fmt: skip
    table(
        lines,
        [
            "SANDBOX",
            "AGENT",
            "CYCLE",
            "CPU %",
            "CORES",
            "MEM USAGE / LIMIT",
            "MEM %",
            "PIDS",
            "IO READ / WRITE",
        ],
    )


@cli.command()
@click.option("--no-stream", is_flag=True, help="Print one table and exit.")
@click.option(
    "--interval",
    "interval_s",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 3600),
    help="Seconds between refreshes (and between the two samples CPU % is taken from).",
)
@click.option("--iterations", type=click.IntRange(min=1), help="Stop after this many refreshes.")
@json_option
@pass_ctl
def stats(ctl: Ctl, no_stream: bool, interval_s: float, iterations: int | None) -> None:
    """Per-sandbox CPU %, memory used / limit, pids and io, refreshed live.

    CPU % is CPU time over wall time between two samples (100% = one core). With --json,
    each refresh is one JSON object on its own line."""
    if no_stream:
        iterations = 1
    previous = {s["sandboxId"]: s for s in ctl.client.call("GET", "/v1/admin/stats")["sandboxes"]}
    shown = 0
    while iterations is None or shown < iterations:
        time.sleep(interval_s)
        samples = ctl.client.call("GET", "/v1/admin/stats")["sandboxes"]
        rows = _with_cpu_percent(previous, samples)
        previous = {s["sandboxId"]: s for s in samples}
        shown += 1
        if ctl.json:
            click.echo(json.dumps({"sampledAt": time.time(), "sandboxes": rows}, sort_keys=True))
        else:
            if sys.stdout.isatty() and not no_stream:
                click.echo("\033[H\033[J", nl=False)  # redraw in place, as top does
            _stats_table(rows)
        sys.stdout.flush()


# ------------------------------------------------------------------ cycles --


@cli.group()
def cycles() -> None:
    """Training cycles: list them, show one, watch one run."""


def _loss(cycle: dict) -> str:
    return number((cycle.get("progress") or {}).get("loss"))


@cycles.command("ls")
@click.option("--agent", "agent_id", help="Only this agent's cycles.")
@click.option("--status", "state", type=click.Choice(["queued", "running", "retrying", "completed", "failed",
                                                      "aggregated"]))  # fmt: skip
@click.option("--model", "model", help="Only cycles training this model (modelType).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@json_option
@pass_ctl
def cycles_ls(ctl: Ctl, agent_id: str | None, state: str | None, model: str | None, limit: int) -> None:
    """List training cycles of every agent, newest first."""
    query = {"agentId": agent_id, "status": state, "modelType": model, "limit": limit}
    data = ctl.client.call("GET", "/v1/admin/cycles", query=query)

    def render(d: dict) -> None:
        rows = []
        for c in d["cycles"]:
            progress = c.get("progress") or {}
            version = f"v{c['baseVersion']}" + (
                f" -> v{c['resultVersion']}" if c.get("resultVersion") is not None else ""
            )
            rows.append(
                [c["cycleId"], c["agentId"], c["modelType"], c["status"], c["attempts"],
                 f"{progress.get('epoch', 0)}/{progress.get('epochs', 0)}", _loss(c), version,
                 when(c.get("createdAt")), (c.get("error") or {}).get("reason")]
            )  # fmt: skip
        table(
            rows,
            ["CYCLE", "AGENT", "MODEL", "STATUS", "TRIES", "EPOCH", "LOSS", "VERSION", "CREATED", "ERROR"],
        )

    ctl.out(data, render)


def _cycle_pairs(c: dict) -> None:
    progress = c.get("progress") or {}
    items = [
        ("cycle", c["cycleId"]), ("agent", c["agentId"]), ("model", c["modelType"]), ("status", c["status"]),
        ("attempts", c["attempts"]), ("sandbox", c.get("sandboxId")),
        ("base version", c["baseVersion"]), ("result version", c.get("resultVersion")),
        ("created", when(c.get("createdAt"))),
        ("progress", f"epoch {progress.get('epoch', 0)}/{progress.get('epochs', 0)}, loss {_loss(c)}, "
                     f"accuracy {number(progress.get('accuracy'))}"),
    ]  # fmt: skip
    result = c.get("result") or {}
    if result.get("metrics"):
        metrics = result["metrics"]
        items.append(("metrics", f"loss {number(metrics.get('loss'))}, accuracy {number(metrics.get('accuracy'))}, "
                                 f"{number(metrics.get('duration'))} s"))  # fmt: skip
    if result.get("round"):
        items.append(("round", json.dumps(result["round"], sort_keys=True)))
    if c.get("error"):
        items.append(("error", f"{c['error'].get('reason')}: {c['error'].get('message')}"))
    pairs(items)


@cycles.command("show")
@click.argument("cycle_id")
@json_option
@pass_ctl
def cycles_show(ctl: Ctl, cycle_id: str) -> None:
    """One cycle: progress, result, resource record, error."""
    ctl.out(ctl.client.call("GET", f"/v1/petals/status/{_quote(cycle_id)}"), _cycle_pairs)


def _bar(epoch: int, epochs: int, width: int = 30) -> str:
    filled = int(width * epoch / epochs) if epochs else 0
    return "[" + "#" * filled + "-" * (width - filled) + "]"


@cycles.command("watch")
@click.argument("cycle_id")
@click.option("--interval", "interval_s", default=0.5, show_default=True, type=click.FloatRange(0.05, 60))
@click.option(
    "--wait",
    "wait_s",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Give up after this many seconds (exit 1).",
)
@json_option
@pass_ctl
def cycles_watch(ctl: Ctl, cycle_id: str, interval_s: float, wait_s: float) -> None:
    """Follow a cycle: a progress bar of epochs with the current loss, ending with the result.

    Exit 0 when it completed (or was aggregated), 1 when it failed. With --json, one JSON
    status per change, the last one final."""
    tty = sys.stdout.isatty() and not ctl.json
    deadline = time.monotonic() + wait_s
    last = None
    while True:
        cycle = ctl.client.call("GET", f"/v1/petals/status/{_quote(cycle_id)}")
        progress = cycle.get("progress") or {}
        state = (cycle["status"], cycle["attempts"], progress.get("epoch"), progress.get("loss"))
        if state != last:
            last = state
            if ctl.json:
                click.echo(json.dumps(cycle, sort_keys=True))
            else:
                line = (
                    f"{_bar(progress.get('epoch', 0), progress.get('epochs', 0))} epoch "
                    f"{progress.get('epoch', 0)}/{progress.get('epochs', 0)} loss {_loss(cycle)} "
                    f"{cycle['status']} (attempt {cycle['attempts']})"
                )
                click.echo(f"\r\033[K{line}" if tty else line, nl=not tty)
            sys.stdout.flush()
        if cycle["status"] in TERMINAL_CYCLE:
            break
        if time.monotonic() >= deadline:
            if tty:
                click.echo()
            raise CtlError(f"cycle {cycle_id} is still {cycle['status']} after {wait_s:g}s", EXIT_VERDICT)
        time.sleep(interval_s)
    if not ctl.json:
        if tty:
            click.echo()
        result = cycle.get("result") or {}
        if cycle["status"] == "failed":
            error = cycle.get("error") or {}
            click.echo(f"failed: {error.get('reason')}: {error.get('message')}")
        else:
            metrics = result.get("metrics") or {}
            outcome = (result.get("round") or {}).get("outcome")
            click.echo(
                f"{cycle['status']}: loss {number(metrics.get('loss'))}, accuracy {number(metrics.get('accuracy'))}"
                + (f", round {outcome}" if outcome else "")
                + (
                    f", model version {cycle['resultVersion']}"
                    if cycle.get("resultVersion") is not None
                    else ""
                )
            )
    if cycle["status"] == "failed":
        raise Verdict()


# ------------------------------------------------------------------- model --


@cli.group()
def model() -> None:
    """Shared models: versions, parameters, rollback, ONNX export."""


@model.command("ls")
@click.argument("name", required=False)
@json_option
@pass_ctl
def model_ls(ctl: Ctl, name: str | None) -> None:
    """NAME's versions, oldest first (* marks the current one); without NAME, every model."""
    if name is None:
        data = ctl.client.call("GET", "/v1/admin/status")["models"]
        ctl.out(data, lambda d: table([[m["modelType"], m["currentVersion"], m["versions"]] for m in d],
                                      ["MODEL", "CURRENT", "VERSIONS"]))  # fmt: skip
        return
    data = ctl.client.call("GET", "/v1/petals/model/versions", query={"modelType": name})

    def render(d: dict) -> None:
        rows = []
        for v in d["versions"]:
            metrics = v.get("metrics") or {}
            rows.append(
                [("*" if v["version"] == d["currentVersion"] else " ") + str(v["version"]), v.get("parentVersion"),
                 (v.get("sha256") or "")[:16], len(v.get("participants") or []), v.get("aggregationMethod"),
                 number(metrics.get("loss")), when((v.get("timestamp") or 0) * 1000)]
            )  # fmt: skip
        table(rows, ["VERSION", "PARENT", "SHA256", "CYCLES", "METHOD", "LOSS", "CREATED"])

    ctl.out(data, render)


@model.command("show")
@click.argument("name")
@click.option(
    "--version", "version", type=click.IntRange(min=0), help="A version (default: the current one)."
)
@json_option
@pass_ctl
def model_show(ctl: Ctl, name: str, version: int | None) -> None:
    """A version's signature, metadata and parameter shapes (--json: the values too)."""
    data = ctl.client.call("GET", "/v1/petals/model/shared", query={"modelType": name, "version": version})

    def render(d: dict) -> None:
        meta = d.get("metadata") or {}
        items = [
            ("model", d["modelType"]), ("version", f"{d['version']} (current {d['currentVersion']})"),
            ("signature", json.dumps(d.get("signature"), sort_keys=True)), ("sha256", meta.get("sha256")),
            ("parent", meta.get("parentVersion")), ("method", meta.get("aggregationMethod")),
            ("cycles", len(meta.get("participants") or [])),
            ("metrics", json.dumps(meta.get("metrics") or {}, sort_keys=True)),
        ]  # fmt: skip
        for tensor, value in sorted((d.get("parameters") or {}).items()):
            items.append((f"  {tensor}", "x".join(str(n) for n in value["shape"])))
        pairs(items)

    ctl.out(data, render)


@model.command("rollback")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=0))
@json_option
@pass_ctl
def model_rollback(ctl: Ctl, name: str, version: int) -> None:
    """Make VERSION of NAME the current one again."""
    data = ctl.client.call(
        "POST", "/v1/petals/model/shared/rollback", {"modelType": name, "version": version}
    )
    ctl.out(
        data,
        lambda d: click.echo(f"{d['modelType']} is at version {d['currentVersion']} (sha256 {d['sha256']})"),
    )


@model.command("export")
@click.argument("name")
@click.option(
    "--onnx",
    "target",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the ONNX model.",
)
@click.option(
    "--version", "version", type=click.IntRange(min=0), help="A version (default: the current one)."
)
@json_option
@pass_ctl
def model_export(ctl: Ctl, name: str, target: Path, version: int | None) -> None:
    """Write a version of NAME as an ONNX model to a file."""
    query = {"modelType": name, "version": version, "format": "onnx"}
    payload = ctl.client.call("GET", "/v1/petals/model/shared", query=query, raw=True)
    # Written beside the target and renamed, so a reader never sees half a model.
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.write_bytes(payload)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CtlError(f"cannot write {target}: {exc.strerror}", EXIT_API) from None
    data = {"modelType": name, "version": version, "path": str(target), "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest()}  # fmt: skip
    ctl.out(data, lambda d: click.echo(f"wrote {d['path']} ({d['bytes']} bytes, sha256 {d['sha256']})"))


# --------------------------------------------------------------- telemetry --


@cli.group()
def telemetry() -> None:
    """Training telemetry."""


def _event_line(event: dict) -> str:
    metrics = event.get("metrics") or {}
    parts = [
        when(event.get("timestamp")),
        f"#{event['seq']}",
        event["event"],
        event["agentId"],
        event.get("cycleId") or "-",
    ]
    if metrics:
        parts.append(f"loss={number(metrics.get('loss'))} accuracy={number(metrics.get('accuracy'))}")
    if event.get("error"):
        parts.append(f"error={event['error']}")
    return "  ".join(str(p) for p in parts)


@telemetry.command("tail")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they come.")
@click.option(
    "-n",
    "--lines",
    "count",
    default=20,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="How many recent events to print first.",
)
@click.option("--agent", "agent_id", help="Only this agent's events.")
@click.option("--event", "kind", type=click.Choice(["training_cycle_completed", "training_cycle_failed"]))
@json_option
@pass_ctl
def telemetry_tail(ctl: Ctl, follow: bool, count: int, agent_id: str | None, kind: str | None) -> None:
    """The latest events, oldest first; with -f, then new ones live. --json: one event per line."""
    filters = {"agentId": agent_id, "event": kind}
    last_seq = 0
    if count:
        events = ctl.client.call("GET", "/v1/telemetry/training", query={**filters, "limit": count})["events"]
        for event in reversed(events):
            _print_event(ctl, event)
            last_seq = max(last_seq, event["seq"])
    else:
        latest = ctl.client.call("GET", "/v1/telemetry/training", query={**filters, "limit": 1})["events"]
        last_seq = latest[0]["seq"] if latest else 0
    while follow:
        # Resuming from the last seq printed: nothing is missed across a reconnect.
        for kind_, data in ctl.client.stream("/v1/telemetry/training/stream", filters, last_seq):
            if kind_ == "overflow":
                break  # we read too slowly: reconnect from the last seq printed
            event = json.loads(data)
            if event["seq"] > last_seq:
                _print_event(ctl, event)
                last_seq = event["seq"]
        else:
            click.echo("wondercraft-ctl: the service ended the stream (shutting down?)", err=True)
            return


def _print_event(ctl: Ctl, event: dict) -> None:
    click.echo(json.dumps(event, sort_keys=True) if ctl.json else _event_line(event))
    sys.stdout.flush()


# --------------------------------------------------------------- consensus --


@cli.group()
def consensus() -> None:
    """The consensus history (rounds, votes, commits)."""


@consensus.command("history")
@click.option("--model", "model_name", help="Only entries about this model.")
@click.option("--kind", help="Only entries of this kind (round_proposal, vote, model_committed...).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@json_option
@pass_ctl
def consensus_history(ctl: Ctl, model_name: str | None, kind: str | None, limit: int) -> None:
    """The hash-chained history, newest first."""
    query = {"modelType": model_name, "kind": kind, "limit": limit}
    data = ctl.client.call("GET", "/v1/consensus/history", query=query)

    def render(d: dict) -> None:
        rows = []
        for e in d["entries"]:
            body = e.get("body") or {}
            summary = ", ".join(
                f"{k}={v}"
                for k, v in body.items()
                if isinstance(v, str | int | float | bool) and k != "sandboxId"
            )
            rows.append([e["seq"], when(e["createdAt"]), e["kind"], e.get("modelName"), e.get("agentId"),
                         e["entryHash"][:12], summary[:60]])  # fmt: skip
        table(rows, ["SEQ", "TIME", "KIND", "MODEL", "AGENT", "HASH", "SUMMARY"])

    ctl.out(data, render)


# ------------------------------------------------------------------- audit --


@cli.group()
def audit() -> None:
    """Audits: the hash chain, one sandbox against its caps, the whole host."""


@audit.command("verify")
@json_option
@pass_ctl
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


@audit.command("sandbox")
@click.argument("sandbox_id")
@json_option
@pass_ctl
def audit_sandbox(ctl: Ctl, sandbox_id: str) -> None:
    """The kernel's record for a sandbox against the caps it had (exit 1 on a mismatch)."""
    data = ctl.client.call("GET", f"/v1/admin/audit/sandbox/{_quote(sandbox_id)}")

    def show(value: float | None, unit: str) -> str:
        return human_bytes(value) if unit == "bytes" else number(value)

    def render(d: dict) -> None:
        where = {"live": "read from the kernel now", "final": "the record kept at destroy",
                 "lost": "lost: the service stopped without destroying it"}[d["source"]]  # fmt: skip
        click.echo(f"{d['sandboxId']} ({d['agentId']}, {d['status']}): {where}")
        rows = [
            [c["resource"], show(c["cap"], c["unit"]), show(c["enforced"], c["unit"]), show(c["used"], c["unit"]),
             c["verdict"], c["note"]]
            for c in d["checks"]
        ]  # fmt: skip
        table(rows, ["RESOURCE", "CAP", "KERNEL", "USED", "VERDICT", "NOTE"])

    ctl.out(data, render)
    if not data["ok"]:
        raise Verdict()


@audit.command("host")
@click.option(
    "--offline",
    is_flag=True,
    help="Scan this host directly instead of asking the service (for a service that is down).",
)
@json_option
@pass_ctl
def audit_host(ctl: Ctl, offline: bool) -> None:
    """Every cgroup, mount, netns, link and launcher process carrying the project's names,
    each known (held by a live sandbox or service) or orphaned. Exit 1 if any is orphaned."""
    if offline:
        if os.geteuid() != 0:
            raise CtlError("audit host --offline reads every process and cgroup; run it as root", EXIT_AUTH)
        from runtime.hostaudit import scan_host

        data = scan_host()
    else:
        data = ctl.client.call("GET", "/v1/admin/audit/host")

    def render(d: dict) -> None:
        rows = []
        for f in d["findings"]:
            detail = f["detail"]
            facts = []
            if "pids" in detail:
                facts.append(f"pids {','.join(map(str, detail['pids'])) or 'none'}")
            if detail.get("role") == "instance parent":
                facts.append("instance parent")
            if "argv" in detail:
                facts.append(" ".join(detail["argv"]))
            if "source" in detail:
                facts.append(f"{detail['fstype']} {detail['source']}")
            rows.append([f["kind"], f["name"], f["state"], f["instance"], f["owner"], "; ".join(facts)])
        table(rows, ["KIND", "NAME", "STATE", "INSTANCE", "OWNER", "DETAIL"])
        click.echo(f"{d['known']} known, {d['orphans']} orphaned ({d['mode']} scan)")

    ctl.out(data, render)
    if data["orphans"]:
        raise Verdict()


# ------------------------------------------------------------------ agents --


@cli.group()
def agents() -> None:
    """Agents and their tokens."""


@agents.command("add")
@click.argument("agent_id")
@json_option
@pass_ctl
def agents_add(ctl: Ctl, agent_id: str) -> None:
    """Register an agent and print its token (shown only this once)."""
    data = ctl.client.call("POST", "/v1/agents", {"agentId": agent_id})
    ctl.out(data, lambda d: pairs([("agent", d["agentId"]), ("token", d["token"])]))


@agents.command("ls")
@json_option
@pass_ctl
def agents_ls(ctl: Ctl) -> None:
    """Every agent, revoked ones included (tokens are never shown again)."""
    data = ctl.client.call("GET", "/v1/agents")
    ctl.out(data, lambda d: table(
        [[a["agentId"], "active" if a["active"] else "revoked", when(a["createdAt"]), when(a["revokedAt"])]
         for a in d["agents"]], ["AGENT", "STATE", "CREATED", "REVOKED"]))  # fmt: skip


@agents.command("revoke")
@click.argument("agent_id")
@json_option
@pass_ctl
def agents_revoke(ctl: Ctl, agent_id: str) -> None:
    """Revoke an agent's token at once (its id is never reused)."""
    data = ctl.client.call("DELETE", f"/v1/agents/{_quote(agent_id)}")
    ctl.out(data, lambda d: click.echo(f"{d['agentId']} revoked at {when(d['revokedAt'])}"))


# ------------------------------------------------------------ host actions --


@cli.command()
@json_option
@pass_ctl
def cleanup(ctl: Ctl) -> None:
    """Run the orphan sweep now (and reap expired or dead sandboxes); list what it removed."""
    data = ctl.client.call("POST", "/v1/admin/cleanup")

    def render(d: dict) -> None:
        rows = [["sandbox", s, "past its lifetime"] for s in d["expired"]]
        rows += [["sandbox", s, "its init had died"] for s in d["dead"]]
        rows += [["cgroup", c, "orphaned"] for c in d["orphans"]["cgroups"]]
        rows += [["netns", n, "orphaned"] for n in d["orphans"]["netns"]]
        if rows:
            table(rows, ["KIND", "NAME", "WHY"])
        click.echo(f"removed {d['removed']}" if d["removed"] else "nothing to remove")

    ctl.out(data, render)


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The scaling JSON the service will be given (for resourceLimits).",
)
@json_option
@pass_ctl
def preflight(ctl: Ctl, config_path: Path | None) -> None:
    """Check this host before it serves: root and capabilities, cgroups, overlay and tmpfs,
    namespaces, seccomp, memory against the caps, GPUs and their device nodes, the state dir.
    Exit 1 if any check fails (warnings pass)."""
    from . import preflight as checks

    results = checks.run(ctl.state_dir, config_path)
    data = {"ok": all(c.status != checks.FAIL for c in results), "checks": [c.to_json() for c in results]}

    def render(d: dict) -> None:
        for c in d["checks"]:
            click.echo(f"{c['status'].upper():<4}  {c['check']:<18}  {c['detail']}")
            if c["fix"] and c["status"] != checks.PASS:
                click.echo(f"{'':<4}  {'':<18}  fix: {c['fix']}")
        counts = {
            s: sum(1 for c in d["checks"] if c["status"] == s)
            for s in (checks.PASS, checks.WARN, checks.FAIL)
        }
        click.echo(f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed")

    ctl.out(data, render)
    if not data["ok"]:
        raise Verdict()


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C ends follow modes quietly; a closed pipe (| head) ends output quietly.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        result = cli.main(args=argv, prog_name="wondercraft-ctl", standalone_mode=False)
    except CtlError as exc:
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        return EXIT_INTERRUPTED
    except Verdict as verdict:
        return verdict.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    # Without standalone mode, click returns --help's and --version's exit status.
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
