"""The REST client of `wondercraft-ctl`: one JSON request or a Server-Sent Events stream, the
admin token found on the local host, and every failure turned into a one-line error with the
exit status that says what happened (EXIT_* below). Standard library only."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
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
LOCAL_STATE_DIR = Path("./var")  # the state dir `make run` uses
SERVICE_FILE = "service.json"  # where a running service says where it listens (server/cli.py)


class CtlError(click.ClickException):
    """A one-line error with its exit status; no traceback ever reaches the operator."""

    def __init__(self, message: str, exit_code: int = EXIT_API, status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status  # the HTTP status of the refusal, when the service answered

    def show(self, file=None) -> None:
        click.echo(f"wondercraft-ctl: error: {self.message}", err=True)


class Verdict(Exception):
    """The command printed its answer and wants a non-zero exit (orphans found, check failed)."""

    def __init__(self, exit_code: int = EXIT_VERDICT) -> None:
        self.exit_code = exit_code


def json_object_file(path: Path, holds: str) -> dict:
    """A JSON object read from a file named on the command line; `holds` says what it should
    hold, for the error."""
    try:
        value = json.loads(path.read_text())
    except OSError as exc:
        raise CtlError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    except ValueError as exc:
        raise CtlError(f"{path} is not JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise CtlError(f"{path} must hold a JSON object ({holds})", EXIT_USAGE)
    return value


def quote(segment: str) -> str:
    """One path segment of a URL (an id given on the command line)."""
    return urllib.parse.quote(segment, safe="")


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
        payload: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """The answer's JSON (its bytes with `raw`); a refusal raises CtlError. The request body
        is `body` as JSON, or `payload` as it is (of `content_type`: a file, a multipart form)."""
        data = payload if payload is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._url(path, query), data=data, method=method)
        for name, value in self._headers(auth).items():
            request.add_header(name, value)
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                answer = response.read()
        except urllib.error.HTTPError as exc:
            raise api_error(method, path, exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        if raw:
            return answer
        try:
            return json.loads(answer)
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
                raise api_error("GET", path, response.status, response.read())
            yield from _events(response)
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            connection.close()


def _events(lines) -> Iterator[tuple[str, str]]:
    """(event, data) per blank-line-terminated SSE event; comments and ids are skipped."""
    event, data = "message", []
    for raw_line in lines:
        line = raw_line.decode(errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def api_error(method: str, path: str, status: int, payload: bytes) -> CtlError:
    """The service's {"error": {"message"}} as a CtlError whose exit status matches the HTTP one."""
    try:
        message = json.loads(payload)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = payload.decode(errors="replace").strip()[:200] or "no details"
    if status in (401, 403):
        return CtlError(f"the service refused the token ({status}): {message}", EXIT_AUTH, status)
    if status == 404:
        return CtlError(message, EXIT_NOT_FOUND, status)
    return CtlError(f"{method} {path} failed ({status}): {message}", EXIT_API, status)


def default_state_dir() -> Path:
    """./var (`make run`), unless only the systemd unit's state dir holds a token."""
    local = any((LOCAL_STATE_DIR / name).exists() for name in ("admin.token", SERVICE_FILE))
    if not local and (SERVICE_STATE_DIR / "admin.token").exists():
        return SERVICE_STATE_DIR
    return LOCAL_STATE_DIR


def url_from_state_dir(state_dir: Path) -> str | None:
    """The URL a local service wrote into STATE_DIR/service.json when it started (it removes the
    file when it stops), or None when there is no such file or it is unreadable."""
    try:
        data = json.loads((state_dir / SERVICE_FILE).read_text())
    except (OSError, ValueError):
        return None
    url = data.get("url") if isinstance(data, dict) else None
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


def token_from_state_dir(state_dir: Path) -> tuple[str | None, str]:
    """(the token in STATE_DIR/admin.token, "") or (None, why there is none)."""
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
