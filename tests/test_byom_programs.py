"""Learn programs under the sandbox contract, over real HTTP with real sandboxes: jobs on an
uploaded dataset (bound read-only at /data; DELETE refused while a cycle uses it), and a
battery of hostile programs, each failing with a clear reason and nothing committed. One
server for the module; every hostile job is submitted up front and runs in parallel."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, register_agent, wait_cycle

PROGRAM = (Path(__file__).parent / "programs" / "hostile.py").read_text()
OCTETS = {"Content-Type": "application/octet-stream"}
BATCH = [{"x": [float(i)], "y": 2.0 * i} for i in range(4)]
CAPS = {"cpu": 1, "memory": 256}

# behaviour -> (reason, what the message must say)
HOSTILE = {
    "missing": ("bad_output", "deltas.safetensors is missing"),
    "extra": ("bad_output", "smuggled"),
    "misnamed": ("bad_output", "layer0.weight"),
    "misshaped": ("bad_output", "layer0.weight"),
    "float64": ("bad_output", "float64"),
    "nan": ("bad_output", "non-finite"),
    "oversize": ("bad_output", "bytes"),
    "badmetrics": ("bad_output", "metrics.json"),
    "inflated": ("bad_output", "numSamples"),
    "linked": ("bad_output", "deltas.safetensors"),
    "noout": ("bad_output", "missing"),
    "garbage": ("bad_output", "missing"),
    "network": ("crashed", "network:"),
    "writemodel": ("crashed", "writemodel: [Errno"),  # EACCES or EROFS: never written
    "snoop": ("crashed", "snoop: nothing reachable"),
    "forkbomb": (("pids_limit", "timeout", "lifetime"), ""),
    "bigwrite": ("storage_limit", ""),
    "sleep": (("timeout", "lifetime"), ""),
}


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def job(name: str, **more) -> dict:
    return {"modelType": f"linear:{name}", "trainingParams": {"epochs": 2, "learningRate": 0.01},
            "resourceCaps": CAPS, "seed": 7, **more}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("byom")
    state = root / "state"
    config = root / "config.json"
    source = PROGRAM.replace("@STATE_DIR@", str(state))
    config.write_text(json.dumps({"learnCommand": ["python", "-c", source], "autoCreateModels": True}))
    env = clean_env(
        WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_MAX_RETRIES="0", PETALS_MAX_CONCURRENT_CYCLES="6",
        SANDBOX_DEFAULT_STORAGE="32", SANDBOX_DEFAULT_PIDS="64", SANDBOX_MAX_LIFETIME="15",
    )  # fmt: skip
    with ServerProcess(state, env=env, args=["--config", str(config)]) as server:
        server.tokens = {name: register_agent(server, name) for name in ("alice", "bob")}
        server.hostile = {}
        for behaviour in HOSTILE:
            status, body, _ = http("POST", f"{server.url}/v1/petals/train",
                                   job(behaviour, dataBatch=BATCH), token=server.tokens["alice"])  # fmt: skip
            assert status == 202, body
            server.hostile[behaviour] = body["cycleId"]
        yield server


def upload(server, agent: str, data: bytes, name: str = "shard") -> dict:
    status, body, _ = http("POST", f"{server.url}/v1/datasets?name={name}", data,
                           token=server.tokens[agent], headers=OCTETS)  # fmt: skip
    assert status == 201, body
    return body


def current_version(server, model: str) -> int:
    status, body, _ = http("GET", f"{server.url}/v1/petals/model/shared?modelType={model}", token=ADMIN_TOKEN)
    assert status == 200, body
    return body["currentVersion"]


@pytest.mark.parametrize("behaviour", list(HOSTILE))
def test_a_hostile_program_fails_with_a_clear_reason_and_commits_nothing(server, behaviour):
    reasons, fragment = HOSTILE[behaviour]
    cycle = wait_cycle(server, server.tokens["alice"], server.hostile[behaviour], timeout=240)
    assert cycle["status"] == "failed", json.dumps(cycle)[:2000]
    assert cycle["attempts"] == 1
    reasons = reasons if isinstance(reasons, tuple) else (reasons,)
    assert cycle["error"]["reason"] in reasons, cycle["error"]
    assert fragment in cycle["error"]["message"], cycle["error"]
    assert current_version(server, f"linear:{behaviour}") == 0
    if behaviour == "garbage":  # 3 MB on stdout: only its tail is kept as the cycle's logs
        assert 0 < len(cycle["logs"]) <= 40_000


def test_a_program_trains_on_a_dataset_bound_at_data_and_its_logs_are_kept(server):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 1)).astype(np.float32)
    dataset = upload(server, "alice", npz(x=x, y=(3.0 * x[:, 0]).astype(np.float32)))
    token = server.tokens["alice"]
    status, body, _ = http("POST", f"{server.url}/v1/petals/train", job("slow", datasetId=dataset["datasetId"]),
                           token=token)  # fmt: skip
    assert status == 202, body
    # Queued or running on it: the dataset cannot go.
    status, refused, _ = http("DELETE", f"{server.url}/v1/datasets/{dataset['datasetId']}", token=token)
    assert status == 409, refused
    cycle = wait_cycle(server, token, body["cycleId"], statuses=("completed", "aggregated", "failed"))
    assert cycle["status"] in ("completed", "aggregated"), json.dumps(cycle)[:2000]
    assert cycle["result"]["numSamples"] == 32 and cycle["result"]["metrics"]["loss"] is not None
    assert len(cycle["result"]["epochs"]) == 2
    assert "hello from the program" in cycle["logs"] and "a line on stderr" in cycle["logs"]
    assert '{"progress"' not in cycle["logs"]
    status, gone, _ = http("DELETE", f"{server.url}/v1/datasets/{dataset['datasetId']}", token=token)
    assert status == 200, gone


def test_another_agents_dataset_is_not_found_and_a_job_takes_exactly_one_data_source(server):
    dataset = upload(server, "bob", npz(x=np.ones((4, 1), np.float32), y=np.ones(4, np.float32)), "bobs")
    url, token = f"{server.url}/v1/petals/train", server.tokens["alice"]
    status, body, _ = http("POST", url, job("ok", datasetId=dataset["datasetId"]), token=token)
    assert status == 404, body
    status, body, _ = http(
        "POST", url, job("ok", datasetId=dataset["datasetId"], dataBatch=BATCH), token=token
    )
    assert status == 400 and "exactly one" in body["error"]["message"], body
    status, body, _ = http("POST", url, job("ok"), token=token)
    assert status == 400 and "exactly one" in body["error"]["message"], body
    wrong = upload(server, "alice", npz(images=np.ones((4, 2, 2), np.float32)), "images")
    status, body, _ = http("POST", url, job("ok", datasetId=wrong["datasetId"]), token=token)
    assert status == 400 and "arrays x" in body["error"]["message"], body
