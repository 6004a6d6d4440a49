"""Frictions a new user hit, fixed in the service and the CLI: ctl finds a local service's port
from its state dir, `sandbox ls` says when and why each sandbox ended, a bad model name is
"not found" (exit 5), and an ONNX download is named after its model and version."""

from __future__ import annotations

import json
import stat
import subprocess
import urllib.request

import pytest

from tests.helpers import ADMIN_TOKEN, api_server, clean_env, http, register_agent
from tests.test_ctl import CTL, JOB, ctl, ok, one_line_error


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(
        tmp_path_factory.mktemp("ctl-frictions") / "state", PETALS_AUTO_CREATE_MODELS="1"
    ) as server:
        server.token = register_agent(server, "agent-f")
        yield server


def test_ctl_finds_a_local_service_on_any_port_from_its_state_dir(tmp_path):
    service = api_server(tmp_path / "state")
    assert service.port != 3000
    with service:
        record_path = service.state_dir / "service.json"
        assert stat.S_IMODE(record_path.stat().st_mode) == 0o644
        record = json.loads(record_path.read_text())
        assert record["url"] == service.url and record["port"] == service.port
        # No --url and no WONDERCRAFT_URL: the state dir says where the service listens.
        env = clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN)
        env.pop("WONDERCRAFT_URL", None)
        result = subprocess.run(
            [CTL, "--state-dir", str(service.state_dir), "status", "--json"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert json.loads(ok(result))["stateDir"] == str(service.state_dir.resolve())
        # An explicit URL still wins over the file.
        env["WONDERCRAFT_URL"] = "http://127.0.0.1:9"
        result = subprocess.run(
            [CTL, "--state-dir", str(service.state_dir), "status"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        one_line_error(result, 3, "127.0.0.1:9")
    assert not record_path.exists()  # removed at stop


def test_sandbox_ls_shows_when_and_why_each_sandbox_ended(server):
    status, view, _ = http(
        "POST",
        f"{server.url}/v1/sandbox/create",
        {"resourceCaps": {"cpu": 0.5, "memory": 64}},
        token=server.token,
    )
    assert status == 201, view
    sandbox_id = view["sandboxId"]
    assert http("DELETE", f"{server.url}/v1/sandbox/{sandbox_id}", token=server.token)[0] == 200
    lines = ok(ctl(server, "sandbox", "ls")).splitlines()
    header = lines[0].split()
    assert header[-2:] == ["ENDED", "REASON"]
    row = next(line for line in lines if line.startswith(sandbox_id))
    assert row.split()[-1] == "destroyed"
    created, ended = row.split()[-5:-3], row.split()[-3:-1]
    assert len(ended[0]) == 10 and ":" in ended[1] and ended >= created


@pytest.mark.parametrize("name", ["nope", "linear:no-such-model", "bad name!"])
def test_model_show_with_a_bad_or_unknown_name_exits_5(server, name):
    one_line_error(ctl(server, "model", "show", name), 5, "")
    one_line_error(ctl(server, "model", "ls", name), 5, "")


def test_onnx_download_is_named_after_the_model_and_version(server):
    job = {**JOB, "modelType": "linear:fr"}
    status, body, _ = http("POST", f"{server.url}/v1/petals/train", job, token=server.token)
    assert status == 202, body  # the model exists at version 0 from here on
    for query, expected in (("", "linear-fr-v0.onnx"), ("&version=0", "linear-fr-v0.onnx")):
        request = urllib.request.Request(
            f"{server.url}/v1/petals/model/shared?modelType=linear:fr&format=onnx{query}",
            headers={"Authorization": f"Bearer {server.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Content-Disposition"] == f'attachment; filename="{expected}"'
            assert response.read()[:2]  # an ONNX protobuf, not an error body
