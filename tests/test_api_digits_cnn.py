"""Bring your own model, end to end over the API: the PyTorch digits CNN registered with its
program, version 0 and its ONNX graph; three agents, each with a non-IID shard uploaded as a
dataset, train three rounds in real sandboxes; the shared model reaches the hold-out accuracy,
and predict (onnxruntime, the version's tensors substituted) equals torch's forward pass."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("torch", reason="the torch extra (make install installs it)")

from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, register_agent, wait_cycle  # noqa: E402
from tests.programs.digits_cnn import api  # noqa: E402
from tests.programs.digits_cnn.digits_cnn import export  # noqa: E402
from tests.programs.digits_cnn.onnx_check import torch_logits  # noqa: E402

pytestmark = pytest.mark.skipif(
    not api.accepts_program_models(),
    reason="POST /v1/petals/models does not take multipart/form-data (a model with a program) yet",
)

AGENTS = ["cnn-a", "cnn-b", "cnn-c"]
ROUNDS = 3
TRAINING = {"learningRate": 0.05, "batchSize": 32, "epochs": 5}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    state = tmp_path_factory.mktemp("api-digits-cnn")
    config = state / "config.json"
    config.write_text(json.dumps({"aggregationThreshold": 1.0}))
    env = clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_MAX_CONCURRENT_CYCLES=str(len(AGENTS)))
    with ServerProcess(state / "state", env=env, args=["--config", str(config)]) as server:
        server.tokens = {agent: register_agent(server, agent) for agent in AGENTS}
        parameters, graph = export(state / "artifacts")
        body, content_type = api.registration(parameters, graph, roundPolicy={"minClients": len(AGENTS)})
        status, answer, _ = http(
            "POST", f"{server.url}/v1/petals/models", body, token=ADMIN_TOKEN,
            headers={"Content-Type": content_type}, timeout=60,
        )  # fmt: skip
        assert status == 201, answer
        yield server


def upload(server, agent: str, x: np.ndarray, y: np.ndarray) -> str:
    status, body, _ = http(
        "POST", f"{server.url}/v1/datasets?name={agent}-shard", api.npz_bytes(x, y),
        token=server.tokens[agent], headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert status == 201, body
    assert body["arrays"]["x"]["shape"] == [len(x), 64]
    return body["datasetId"]


def train_round(server, datasets: dict[str, str], round_index: int) -> list[dict]:
    def submit(agent: str):
        job = {"modelType": api.MODEL, "datasetId": datasets[agent], "trainingParams": TRAINING,
               "resourceCaps": {"cpu": 1, "memory": 1024}, "seed": round_index * 10 + AGENTS.index(agent)}  # fmt: skip
        return agent, http("POST", f"{server.url}/v1/petals/train", job, token=server.tokens[agent])

    # All three at once, so each is enrolled in the round before any cycle ends.
    with ThreadPoolExecutor(len(AGENTS)) as pool:
        answers = list(pool.map(submit, AGENTS))
    done = []
    for agent, (status, body, _) in answers:
        assert status == 202, body
        assert body["baseVersion"] == round_index
        cycle = wait_cycle(server, server.tokens[agent], body["cycleId"], statuses=("aggregated", "failed"),
                           timeout=900)  # fmt: skip
        assert cycle["status"] == "aggregated", json.dumps(cycle)[:3000]
        assert cycle["resultVersion"] == round_index + 1
        done.append(cycle)
    return done


# Nine cycles that each import torch in a fresh sandbox: minutes on a loaded 2-core host.
@pytest.mark.timeout(2400)
def test_three_agents_train_the_cnn_on_their_own_datasets_and_predict_matches_torch(federation):
    server = federation
    (x_hold, y_hold), shards = api.non_iid_shards(len(AGENTS))
    datasets = {agent: upload(server, agent, x, y) for agent, (x, y) in zip(AGENTS, shards, strict=True)}
    for round_index in range(ROUNDS):
        train_round(server, datasets, round_index)
    token = server.tokens[AGENTS[0]]
    status, predicted, _ = http(
        "POST", f"{server.url}/v1/petals/model/shared/predict",
        {"modelType": api.MODEL, "inputs": x_hold.tolist()}, token=token, timeout=60,
    )  # fmt: skip
    assert status == 200, predicted
    assert predicted["version"] == ROUNDS
    outputs = np.asarray(predicted["outputs"], dtype=np.float32)
    accuracy = float((outputs.argmax(axis=1) == y_hold).mean())
    assert accuracy >= 0.93, f"hold-out accuracy {accuracy:.3f} after {ROUNDS} rounds"
    status, shared, _ = http(
        "GET", f"{server.url}/v1/petals/model/shared?modelType={api.MODEL}&version={ROUNDS}", token=token,
        timeout=60,
    )  # fmt: skip
    assert status == 200, shared
    tensors = {
        name: np.asarray(p["values"], dtype=np.float32).reshape(p["shape"])
        for name, p in shared["parameters"].items()
    }
    np.testing.assert_allclose(outputs, torch_logits(tensors, x_hold), atol=1e-4, rtol=0)
