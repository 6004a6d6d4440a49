"""Starting the real service binary on loopback for tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.leftovers import RUN

REPO = Path(__file__).resolve().parent.parent
WONDERCRAFT = str(Path(sys.executable).parent / "wondercraft")


def wait_until(predicate, timeout: float = 60.0, what: str | None = None):
    """Polls `predicate` until it returns something true and returns that; after `timeout`
    seconds, its last answer, or an AssertionError naming `what` when given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    value = predicate()
    if not value and what is not None:
        raise AssertionError(f"{what} not reached within {timeout}s")
    return value


# Runs a command as uid 65534, not root, yet able to read this checkout wherever it lies
# (`mktemp -d` makes a 0700 parent): CAP_DAC_READ_SEARCH kept as an ambient capability.
AS_NOBODY = (
    "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
    "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
)  # fmt: skip

CYCLE_ENDS = ("completed", "failed", "aggregated")
# With WONDERCRAFT_TEST_WARM_POOL: the warm pool's hits and misses of every service this run
# stopped, read from its /metrics just before (conftest checks the pool really served cycles).
WARM_POOL_TALLY = {"hits": 0.0, "misses": 0.0}


def wait_cycle(server, token: str, cycle_id: str, statuses=CYCLE_ENDS, timeout: float = 120.0) -> dict:
    """Polls a training cycle's status until it is one of `statuses`; its last body otherwise."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        status, body, _ = http("GET", f"{server.url}/v1/petals/status/{cycle_id}", token=token)
        assert status == 200, body
        if body["status"] in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(
        f"cycle {cycle_id} still {body.get('status')} after {timeout}s: {json.dumps(body)[:2000]}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without any of the service's own variables."""
    prefixes = ("PETALS_", "SANDBOX_", "TELEMETRY_", "WONDERCRAFT_", "WARM_POOL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    # `WONDERCRAFT_TEST_WARM_POOL=numpy=4 make test ...` runs every service with that warm pool
    # (the second pass of the petals suite in scripts/run-tests.sh).
    if os.environ.get("WONDERCRAFT_TEST_WARM_POOL"):
        env["WARM_POOL"] = os.environ["WONDERCRAFT_TEST_WARM_POOL"]
    # Learn cycles still running when a test stops its server get 2 s, not 30, to finish:
    # ServerProcess.stop must never have to SIGKILL a server that is shutting down cleanly.
    env["WONDERCRAFT_SHUTDOWN_GRACE"] = "2"
    env.update(overrides)
    return env


def http(
    method: str,
    url: str,
    body=None,
    token: str | None = None,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
):
    """(status, parsed JSON or text, headers) for one request; `headers` add to or replace the defaults."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status, headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as exc:
        raw, status, headers = exc.read(), exc.code, exc.headers
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode(errors="replace"), headers


class ServerProcess:
    """`wondercraft serve` as a child process, stopped with SIGTERM on exit."""

    def __init__(
        self,
        state_dir: Path,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
        prefix: list[str] | None = None,
    ):
        self.state_dir = Path(state_dir)
        RUN.register_state_dir(self.state_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [
            *(prefix or []),
            WONDERCRAFT,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            *(args or []),
        ]
        self.env = env if env is not None else clean_env()
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.state_dir.parent / f"server-{self.port}.log"

    def start(self, wait: bool = True, timeout: float = 30.0) -> ServerProcess:
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=self._stderr, start_new_session=True
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                status, _, _ = http("GET", self.url + "/healthz", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            if self.env.get("WARM_POOL") and os.environ.get("WONDERCRAFT_TEST_WARM_POOL"):
                self._tally_warm_pool()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode

    def _tally_warm_pool(self) -> None:
        try:
            status, text, _ = http(
                "GET", self.url + "/metrics", token=self.env.get("WONDERCRAFT_ADMIN_TOKEN")
            )
        except OSError:
            return
        if status != 200 or not isinstance(text, str):
            return
        for line in text.splitlines():
            for what in WARM_POOL_TALLY:
                if line.startswith(f"wondercraft_warm_pool_{what}_total{{"):
                    WARM_POOL_TALLY[what] += float(line.rsplit(" ", 1)[1])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_serve(state_dir: Path, *, env=None, args=None, prefix=None, port=None, timeout=30.0):
    """Run `wondercraft serve` expecting it to refuse; returns the CompletedProcess."""
    RUN.register_state_dir(state_dir)
    port = port or free_port()
    argv = [
        *(prefix or []),
        WONDERCRAFT,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--state-dir",
        str(state_dir),
        *(args or []),
    ]
    return subprocess.run(
        argv, env=env if env is not None else clean_env(), capture_output=True, text=True, timeout=timeout
    )


# ---- the /v1 API ----

ADMIN_TOKEN = "admin-token-for-tests-0123456789"


def api_server(state_dir: Path, **env: str) -> ServerProcess:
    """A service with a known admin token; `env` adds service variables (TELEMETRY_BATCH_SIZE...)."""
    return ServerProcess(state_dir, env=clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, **env))


def register_agent(server: ServerProcess, agent_id: str) -> str:
    """Registers an agent with the admin token and returns the agent's token."""
    status, body, _ = http("POST", server.url + "/v1/agents", {"agentId": agent_id}, token=ADMIN_TOKEN)
    assert status == 201, body
    return body["token"]


def raw_request(port: int, payload: bytes, *, timeout: float = 10.0, send_delay_s: float = 0.0):
    """Sends bytes exactly as given and returns (status, headers, body) of the first answer;
    for requests urllib will not make (lying Content-Length, chunked bodies, odd paths)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        if send_delay_s:
            time.sleep(send_delay_s)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    try:
        return status, headers, json.loads(rest[:length])
    except ValueError:
        return status, headers, rest[:length]


class EventStream:
    """Reads a Server-Sent Events answer on a background thread; events pile up in `events`
    as (id, event, data) and `ended` is set when the server closes the stream."""

    def __init__(self, url: str, token: str | None = None, headers: dict[str, str] | None = None):
        import http.client
        import threading
        import urllib.parse

        parts = urllib.parse.urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        request_headers = {"Accept": "text/event-stream", **(headers or {})}
        if token:
            request_headers["Authorization"] = f"Bearer {token}"
        self._conn.request(
            "GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=request_headers
        )
        self.response = self._conn.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers
        self.events: list[tuple[str | None, str | None, str]] = []
        self.comments = 0
        self.ended = threading.Event()
        self._lock = threading.Lock()
        if self.status == 200:
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        else:
            self.body = json.loads(self.response.read())
            self.ended.set()

    def _read(self) -> None:
        event_id = event = None
        data: list[str] = []
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n").rstrip("\r")
                if not line:
                    if data:
                        with self._lock:
                            self.events.append((event_id, event, "\n".join(data)))
                    event_id = event = None
                    data = []
                elif line.startswith(":"):
                    self.comments += 1
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
        except (OSError, ValueError, AttributeError):
            pass  # closed under the reader by close()
        finally:
            self.ended.set()

    def data(self) -> list[dict]:
        with self._lock:
            return [json.loads(d) for _, kind, d in self.events if kind is None]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.data()) >= count or self.ended.is_set():
                break
            time.sleep(0.02)
        return self.data()

    def close(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.ended.wait(5)
        self._conn.close()
