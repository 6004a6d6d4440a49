"""Frictions a new user hit, fixed in the service and the CLI: ctl finds a local service's port
from its state dir, `sandbox ls` says when and why each sandbox ended, a bad model name is
"not found" (exit 5), an ONNX download is named after its model and version, and training
works from the CLI (`train`, `cycles logs`, `datasets`, `models create`)."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import stat
import subprocess
import urllib.request

import numpy as np
import pytest

from ctl.model import multipart
from tests.helpers import ADMIN_TOKEN, api_server, clean_env, http, register_agent, wait_cycle
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


def job_file(tmp_path, **fields) -> str:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({k: v for k, v in {**JOB, **fields}.items() if k != "modelType"}))
    return str(path)


def test_train_from_a_json_job_watches_the_cycle_to_its_end(server, tmp_path):
    result = ctl(server, "train", "linear:train-cli", "--job", job_file(tmp_path), "--epochs", "3",
                 "--seed", "5", "--watch", "--interval", "0.1", token=server.token)  # fmt: skip
    lines = ok(result).splitlines()
    cycle_id = lines[0].split()[0]
    assert lines[0] == f"{cycle_id} queued (base version 0)"
    assert any(" epoch 3/3 " in line for line in lines)
    assert lines[-1].startswith("completed: loss") or lines[-1].startswith("aggregated: loss"), lines
    # The options reached the job.
    _, cycle, _ = http("GET", f"{server.url}/v1/petals/status/{cycle_id}", token=server.token)
    assert cycle["progress"]["epochs"] == 3 and cycle["modelType"] == "linear:train-cli"
    # Without --watch: only the cycle id line; --json: the service's answer.
    accepted = json.loads(ok(ctl(server, "train", "linear:train-cli", "--job", job_file(tmp_path), "--json",
                                 token=server.token)))  # fmt: skip
    assert accepted["status"] == "queued" and accepted["cycleId"].startswith("cy-")


def test_train_refuses_a_job_without_a_model_or_data(server, tmp_path):
    one_line_error(ctl(server, "train", "--job", job_file(tmp_path), token=server.token), 2, "name the model")
    (tmp_path / "nodata.json").write_text("{}")
    one_line_error(ctl(server, "train", "linear:x", "--job", str(tmp_path / "nodata.json")), 2, "no data")
    (tmp_path / "bad.json").write_text("{not json")
    one_line_error(ctl(server, "train", "linear:x", "--job", str(tmp_path / "bad.json")), 2, "is not JSON")


def test_train_with_a_memory_cap_too_small_for_python_is_refused_naming_the_smallest(server, tmp_path):
    result = ctl(server, "train", "linear:train-cli", "--job", job_file(tmp_path), "--memory", "16",
                 token=server.token)  # fmt: skip
    one_line_error(result, 6, "the smallest that works is")


def npz_file(tmp_path, seed: int) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.full((5, 2), seed, dtype=np.float32), y=np.arange(5, dtype=np.float32))
    path = tmp_path / f"shard-{seed}.npz"
    path.write_bytes(buffer.getvalue())
    return str(path)


def test_datasets_upload_ls_and_rm(server, tmp_path):
    uploaded = json.loads(
        ok(ctl(server, "datasets", "upload", npz_file(tmp_path, 1), "--json", token=server.token))
    )
    assert uploaded["name"] == "shard-1.npz" and uploaded["numRows"] == 5 and uploaded["agentId"] == "agent-f"
    line = ok(
        ctl(server, "datasets", "upload", npz_file(tmp_path, 2), "--name", "second", token=server.token)
    )
    second = line.split()[0]
    assert second.startswith("ds-") and "second: 5 rows, npz" in line
    # The admin names whose dataset it is.
    one_line_error(ctl(server, "datasets", "upload", npz_file(tmp_path, 3)), 6, "agentId")
    assert ok(ctl(server, "datasets", "upload", npz_file(tmp_path, 3), "--agent", "agent-f")).startswith(
        "ds-"
    )
    rows = ok(ctl(server, "datasets", "ls", token=server.token)).splitlines()
    assert rows[0].split()[:3] == ["DATASET", "NAME", "AGENT"]
    assert {r.split()[0] for r in rows[1:]} >= {uploaded["datasetId"], second}
    assert ok(ctl(server, "datasets", "rm", second, token=server.token)).startswith(
        f"{second} (second) deleted"
    )
    listed = json.loads(ok(ctl(server, "datasets", "ls", "--json", token=server.token)))
    assert second not in [d["datasetId"] for d in listed["datasets"]]
    one_line_error(ctl(server, "datasets", "rm", second, token=server.token), 5, second)


def _trains_from_dataset_ids(server) -> bool:
    _, document, _ = http("GET", f"{server.url}/v1/openapi.json")
    return "datasetId" in document["components"]["schemas"]["PetalTrainingRequest"]["properties"]


def test_train_from_a_dataset_file_uploads_it_then_trains_on_it(server, tmp_path):
    if not _trains_from_dataset_ids(server):
        pytest.skip("this service's training jobs take no datasetId yet")
    result = ctl(server, "train", "linear:from-file", "--dataset", npz_file(tmp_path, 7), "--epochs", "2",
                 "--watch", "--interval", "0.1", token=server.token)  # fmt: skip
    assert "loss" in ok(result).splitlines()[-1]
    listed = json.loads(ok(ctl(server, "datasets", "ls", "--json", token=server.token)))
    assert "shard-7.npz" in [d["name"] for d in listed["datasets"]]


def test_cycles_logs_prints_the_records_logs_or_says_the_service_has_none(server, tmp_path):
    cycle_id = ok(
        ctl(server, "train", "linear:train-cli", "--job", job_file(tmp_path), token=server.token)
    ).split()[0]
    cycle = wait_cycle(server, server.token, cycle_id)
    assert "logs" in cycle, cycle
    result = ctl(server, "cycles", "logs", cycle_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == cycle["logs"].strip()
    one_line_error(ctl(server, "cycles", "logs", "cy-nothing"), 5, "cy-nothing")


def test_models_create_defines_a_stock_model_from_flags_or_a_spec(server, tmp_path):
    line = ok(ctl(server, "models", "create", "mlp:made-by-ctl", "--input-dim", "4", "--classes", "3",
                  "--hidden", "8,4", "--min-clients", "1"))  # fmt: skip
    assert line.startswith("mlp:made-by-ctl defined at version 0")
    _, listed, _ = http("GET", f"{server.url}/v1/petals/models?limit=1000", token=ADMIN_TOKEN)
    made = next(m for m in listed["models"] if m["modelType"] == "mlp:made-by-ctl")
    assert made["signature"]["hidden"] == [8, 4] and made["roundPolicy"]["minClients"] == 1
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"modelType": "linear:spec", "modelConfig": {"inputDim": 3}}))
    created = json.loads(ok(ctl(server, "model", "create", "--spec", str(spec), "--json")))
    assert created["modelType"] == "linear:spec" and created["signature"]["inputDim"] == 3
    one_line_error(ctl(server, "models", "create", "--spec", str(spec)), 6, "409")
    # An agent that is not a model author may not.
    one_line_error(
        ctl(server, "models", "create", "linear:nope", "--input-dim", "2", token=server.token), 4, ""
    )


def test_models_create_with_files_sends_the_multipart_parts_issue_11_names():
    body, content_type = multipart({"spec": (None, "application/json", b'{"modelType": "mlp:x"}'),
                                    "program": ("learn.py", "application/octet-stream", b"print(1)\r\n--x"),
                                    "parameters": ("p.safetensors", "application/octet-stream", bytes(range(256)))})  # fmt: skip
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    assert list(parts) == ["spec", "program", "parameters"]
    assert json.loads(parts["spec"].get_content()) == {"modelType": "mlp:x"}
    assert parts["program"].get_filename() == "learn.py"
    assert parts["program"].get_payload(decode=True) == b"print(1)\r\n--x"
    assert parts["parameters"].get_payload(decode=True) == bytes(range(256))


def test_models_predict_answers_one_row_per_input(server):
    ok(ctl(server, "models", "create", "linear:predict-cli", "--input-dim", "2"))
    out = ok(
        ctl(
            server,
            "models",
            "predict",
            "linear:predict-cli",
            "--inputs",
            "[[1, 2], [3, 4]]",
            token=server.token,
        )
    )
    lines = out.splitlines()
    assert lines[0].startswith("INPUT") and "version 0" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]
    one_line_error(ctl(server, "models", "predict", "linear:predict-cli", "--inputs", "[[1"), 2, "--inputs")
