"""A real `wondercraft serve` process on loopback for the service benchmarks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(method: str, url: str, body=None, token: str = ADMIN_TOKEN):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Service:
    def __init__(self, config: dict | None = None, **env: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wondercraft-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [str(Path(sys.executable).parent / "wondercraft"), "serve", "--port", str(self.port),
                "--state-dir", str(self.dir / "state"), "--log-level", "WARNING"]  # fmt: skip
        if config:
            (self.dir / "scaling.json").write_text(json.dumps(config))
            argv += ["--config", str(self.dir / "scaling.json")]
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("PETALS_", "SANDBOX_", "TELEMETRY_"))
        }
        environment.update(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, **env)
        self._log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen(argv, env=environment, stderr=self._log, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if call("GET", self.url + "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"service did not start: {(self.dir / 'server.log').read_text()[-2000:]}")

    def agent(self, agent_id: str) -> str:
        status, body = call("POST", self.url + "/v1/agents", {"agentId": agent_id})
        assert status == 201, body
        return body["token"]

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
