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

REPO = Path(__file__).resolve().parent.parent
WONDERCRAFT = str(Path(sys.executable).parent / "wondercraft")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without any of the service's own variables."""
    prefixes = ("PETALS_", "SANDBOX_", "TELEMETRY_", "WONDERCRAFT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(overrides)
    return env


def http(method: str, url: str, body=None, token: str | None = None, timeout: float = 10.0):
    """(status, parsed JSON or text, headers) for one request."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
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
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_serve(state_dir: Path, *, env=None, args=None, prefix=None, port=None, timeout=30.0):
    """Run `wondercraft serve` expecting it to refuse; returns the CompletedProcess."""
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
