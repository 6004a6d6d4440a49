"""Installing the CLI alone needs neither numba nor onnxruntime: `wondercraft-ctl` runs in an
interpreter where importing anything beyond the standard library and click fails, and it prints
the admission totals of a service that reports them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import REPO, clean_env

CTL = str(Path(sys.executable).parent / "wondercraft-ctl")

# A sitecustomize that makes every import outside the standard library, click and ctl fail,
# as they would where only `pip install --no-deps wondercraft click` was run.
BLOCKER = """
import importlib.abc, sys

ALLOWED = set(sys.stdlib_module_names) | {"click", "ctl"}


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in ALLOWED and not top.startswith("_"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not a ctl dependency)", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
"""

# Every command group's module is loaded by ctl.main; then no third-party module but click is
# (sitecustomize is the blocker itself).
LOADED = """
import sys
import ctl.main
code = ctl.main.main(sys.argv[1:])
third_party = sorted({m.partition(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - {"sitecustomize"})
print(json.dumps({"code": code, "thirdParty": [m for m in third_party if not m.startswith("_")]}))
"""


@pytest.fixture
def bare_env(tmp_path):
    """The environment of an interpreter that has only the standard library and click."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    return clean_env(PYTHONPATH=f"{blocker}:{REPO}")


def run(argv: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, **kwargs)


def test_the_blocker_stops_the_services_dependencies(bare_env):
    for module in ("numpy", "numba", "onnxruntime", "aiohttp", "server.app", "runtime.sandbox"):
        result = run([sys.executable, "-c", f"import {module}"], bare_env)
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, (module, result.stderr)


def test_ctl_loads_only_the_standard_library_and_click(bare_env):
    result = run([sys.executable, "-c", "import json\n" + LOADED, "--help"], bare_env)
    assert result.returncode == 0, result.stderr
    assert "Administer a WonderCraft service" in result.stdout
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"code": 0, "thirdParty": ["click", "ctl"]}


@pytest.mark.parametrize(
    "group", ["status", "sandbox", "stats", "cycles", "model", "telemetry", "consensus", "audit", "agents",
              "cleanup", "preflight"],
)  # fmt: skip
def test_every_command_group_answers_help_without_the_service_stack(bare_env, group):
    result = run([CTL, group, "--help"], bare_env)
    assert result.returncode == 0 and "Usage: wondercraft-ctl" in result.stdout, result.stderr


class _FakeService(BaseHTTPRequestHandler):
    status: dict = {}

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        body = json.dumps(self.status).encode()
        self.send_response(200 if self.path == "/v1/admin/status" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


STATUS = {
    "status": "ok", "version": "0.1.0", "pid": 4242, "uptimeSeconds": 75, "cgroupMode": "hybrid",
    "instance": "0123abcd", "stateDir": "/var/lib/wondercraft",
    "sandboxes": {"running": 1, "byStatus": {"running": 1, "destroyed": 2}},
    "cycles": {"queued": 0, "running": 1, "maxConcurrent": 10, "byStatus": {"running": 1}},
    "models": [], "agents": {"active": 1, "revoked": 0}, "gpus": {"free": 0, "total": 0},
    "shutdownGraceSeconds": 30,
}  # fmt: skip


@pytest.fixture
def fake_service():
    """A loopback HTTP server answering /v1/admin/status with whatever the test sets."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_status_prints_admission_totals_when_the_service_reports_them(bare_env, fake_service):
    env = {**bare_env, "WONDERCRAFT_URL": fake_service, "WONDERCRAFT_ADMIN_TOKEN": "t" * 24}
    _FakeService.status = STATUS
    plain = run([CTL, "status"], env)
    assert plain.returncode == 0, plain.stderr
    assert "\ninstance     0123abcd" in plain.stdout and "admission" not in plain.stdout
    _FakeService.status = {
        **STATUS,
        "admission": {"cpuCores": {"committed": 1.5, "budget": 4}, "memoryMB": {"committed": 512, "budget": 8192},
                      "gpus": {"budget": 1}, "sandboxes": 2, "agentQuota": {"sandboxes": 64}},
    }  # fmt: skip
    shown = run([CTL, "status"], env)
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if line.startswith("admission"))
    assert line.split(None, 1)[1] == "cpuCores 1.5 of 4, gpus - of 1, memoryMB 512 of 8192"
    assert json.loads(run([CTL, "status", "--json"], env).stdout)["admission"]["memoryMB"]["committed"] == 512
