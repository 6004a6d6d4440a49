"""Petal training end to end over the REST API of a real server: learn cycles in real
sandboxes, quorum rounds, validator votes, versioned shared models, and every failure path."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rootfs import models
from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, register_agent, wait_cycle

AGENTS = [f"digits-{i}" for i in range(5)]
TERMINAL = ("completed", "failed", "aggregated")


def batch(x: np.ndarray, y: np.ndarray) -> list[dict]:
    return [{"x": [float(v) for v in row], "y": float(label)} for row, label in zip(x, y, strict=True)]


# ---- the federated run on scikit-learn's digits ----


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    holdout = (x[:360], y[:360])
    x_train, y_train = x[360:], y[360:]
    # Non-IID shards: each class is split among the agents by Dirichlet(0.5) proportions.
    rng = np.random.default_rng(1)
    shards = [[] for _ in AGENTS]
    for label in range(10):
        members = np.where(y_train == label)[0]
        rng.shuffle(members)
        cuts = (np.cumsum(rng.dirichlet([0.5] * len(AGENTS))) * len(members)).astype(int)[:-1]
        for shard, part in zip(shards, np.split(members, cuts), strict=True):
            shard.extend(part)
    return holdout, [(x_train[s], y_train[s]) for s in map(np.array, shards)]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    state = tmp_path_factory.mktemp("petals-digits")
    config = state / "scaling.json"
    # Every enrolled cycle must finish before a round closes, and every validator must approve.
    config.write_text(
        json.dumps({"aggregationThreshold": 1.0, "validationTolerance": 0.0, "autoCreateModels": True})
    )
    env = clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_MAX_CONCURRENT_CYCLES="5")
    with ServerProcess(state / "state", env=env, args=["--config", str(config)]) as server:
        server.tokens = {agent: register_agent(server, agent) for agent in AGENTS}
        # Every round has all five agents in it.
        model = {"modelType": "mlp:digits", "modelConfig": {"inputDim": 64, "numClasses": 10, "hidden": [32]},
                 "roundPolicy": {"minClients": len(AGENTS)}}  # fmt: skip
        status, body, _ = http("POST", f"{server.url}/v1/petals/models", model, token=ADMIN_TOKEN)
        assert status == 201, body
        yield server


def holdout_accuracy(server, token, holdout) -> tuple[int, float]:
    x, y = holdout
    status, body, _ = http(
        "POST", f"{server.url}/v1/petals/model/shared/predict",
        {"modelType": "mlp:digits", "inputs": x.tolist()}, token=token,
    )  # fmt: skip
    assert status == 200, body
    return body["version"], float((np.asarray(body["outputs"]).argmax(axis=1) == y).mean())


def test_five_agents_train_mlp_digits_round_over_round(federation, digits):
    holdout, shards = digits
    server, first_token = federation, federation.tokens[AGENTS[0]]
    accuracies = []
    for round_index in range(4):
        jobs = []
        for agent, (x, y) in zip(AGENTS, shards, strict=True):
            jobs.append((agent, {
                "modelType": "mlp:digits",
                "modelConfig": {"inputDim": 64, "numClasses": 10, "hidden": [32]},
                "dataBatch": batch(x, y),
                "trainingParams": {"learningRate": 0.2, "batchSize": 16, "epochs": 5},
                "resourceCaps": {"cpu": 1, "memory": 512},
                "seed": round_index * 10 + AGENTS.index(agent),
            }))  # fmt: skip

        def submit_job(agent_job):
            agent, job = agent_job
            return agent, http("POST", f"{server.url}/v1/petals/train", job, token=server.tokens[agent])

        # All five at once, as five agents would: every one is enrolled before any cycle ends.
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(submit_job, jobs))
        cycles = []
        for agent, (status, body, _) in answers:
            assert status == 202, body
            assert body["status"] == "queued" and body["baseVersion"] == round_index
            cycles.append((agent, body["cycleId"]))
        if round_index == 0:
            # A hold-out set registered now makes the validators check hold-out accuracy too.
            x_hold, y_hold = holdout
            status, body, _ = http(
                "POST", f"{server.url}/v1/petals/validation",
                {"modelType": "mlp:digits", "dataBatch": batch(x_hold, y_hold)}, token=ADMIN_TOKEN,
            )  # fmt: skip
            assert status == 201, body
        for agent, cycle_id in cycles:
            done = wait_cycle(server, server.tokens[agent], cycle_id, statuses=("aggregated", "failed"))
            assert done["status"] == "aggregated", json.dumps(done)[:3000]
            assert done["resultVersion"] == round_index + 1
            assert done["sandboxId"].startswith("sb-")
            record = done["result"]["resourceRecord"]
            assert record["exec"]["cpuSeconds"] > 0 and record["exec"]["memoryPeakBytes"] > 0
            assert record["sandbox"]["limits"]["memoryMB"] == 512
            assert done["progress"]["epoch"] == done["progress"]["epochs"] == 5
            assert len(done["result"]["epochs"]) == 5
        version, accuracy = holdout_accuracy(server, first_token, holdout)
        assert version == round_index + 1
        accuracies.append(accuracy)
    assert all(later > earlier for earlier, later in zip(accuracies, accuracies[1:], strict=False)), (
        accuracies
    )
    assert accuracies[-1] >= 0.90, accuracies

    status, model, _ = http(
        "GET", f"{server.url}/v1/petals/model/shared?modelType=mlp:digits", token=first_token
    )
    assert status == 200
    metadata = model["metadata"]
    assert metadata["version"] == 4 and metadata["parentVersion"] == 3
    assert metadata["aggregationMethod"] == "fedavg"
    assert len(metadata["participants"]) == 5
    assert {v["validator"] for v in metadata["votes"]} == {"finite", "norm", "holdout"}
    assert len(metadata["sha256"]) == 64
    status, history, _ = http(
        "GET", f"{server.url}/v1/consensus/history?modelType=mlp:digits", token=ADMIN_TOKEN
    )
    kinds = [entry["kind"] for entry in history["entries"]]
    assert kinds.count("model_committed") == 4 and kinds.count("round_proposal") == 4


def test_onnx_export_agrees_with_numpy(federation, digits):
    import onnxruntime

    token = federation.tokens[AGENTS[0]]
    status, model, _ = http(
        "GET", f"{federation.url}/v1/petals/model/shared?modelType=mlp:digits", token=token
    )
    assert status == 200
    params = {
        name: np.asarray(tensor["values"], dtype=np.float32).reshape(tensor["shape"])
        for name, tensor in model["parameters"].items()
    }
    signature = models.Signature.from_dict(model["signature"])
    import urllib.request

    request = urllib.request.Request(
        f"{federation.url}/v1/petals/model/shared?modelType=mlp:digits&format=onnx",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request) as response:
        assert response.headers["Content-Type"] == "application/octet-stream"
        onnx_bytes = response.read()
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = digits[0][0][:50]
    (onnx_out,) = session.run(None, {"x": x})
    np.testing.assert_allclose(onnx_out, models.predict(signature, params, x), rtol=1e-5, atol=1e-6)


def test_signature_mismatch_is_a_409_naming_what_differs(federation, digits):
    x, y = digits[1][0]
    job = {"modelType": "mlp:digits", "modelConfig": {"inputDim": 64, "numClasses": 10, "hidden": [16]},
           "dataBatch": batch(x[:5], y[:5])}  # fmt: skip
    status, body, _ = http(
        "POST", f"{federation.url}/v1/petals/train", job, token=federation.tokens[AGENTS[0]]
    )
    assert status == 409, body
    assert "hidden is [16], the model has [32]" in body["error"]["message"]
    narrow = {"modelType": "mlp:digits", "dataBatch": [{"x": [0.0] * 8, "y": 1}]}
    status, body, _ = http(
        "POST", f"{federation.url}/v1/petals/train", narrow, token=federation.tokens[AGENTS[0]]
    )
    assert status == 409 and "inputDim is 8, the model has 64" in body["error"]["message"]


def test_rollback_makes_an_earlier_version_current(federation):
    token = federation.tokens[AGENTS[0]]
    status, body, _ = http(
        "POST", f"{federation.url}/v1/petals/model/shared/rollback", {"modelType": "mlp:digits", "version": 2},
        token=ADMIN_TOKEN,
    )  # fmt: skip
    assert status == 200 and body["currentVersion"] == 2
    status, model, _ = http(
        "GET", f"{federation.url}/v1/petals/model/shared?modelType=mlp:digits", token=token
    )
    assert model["version"] == 2 and model["currentVersion"] == 2
    status, versions, _ = http(
        "GET", f"{federation.url}/v1/petals/model/versions?modelType=mlp:digits", token=token
    )
    assert [v["version"] for v in versions["versions"]] == [0, 1, 2, 3, 4]  # nothing is deleted


# ---- failure paths ----

# A crash on the first attempt of any job whose model is named "crashy", the real program otherwise.
CRASH_ONCE = (
    'if grep -q crashy /job.json && [ "$WONDERCRAFT_ATTEMPT" -lt 2 ]; then echo boom >&2; exit 3; fi; '
    "exec python /opt/wondercraft/learn_cycle.py"
)


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    state = tmp_path_factory.mktemp("petals-failures")
    config = state / "scaling.json"
    config.write_text(
        json.dumps(
            {"learnCommand": ["sh", "-c", CRASH_ONCE], "maxUpdateNorm": 1000, "autoCreateModels": True}
        )
    )
    env = clean_env(
        WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_RETRY_BASE_DELAY="0.3", PETALS_MAX_CONCURRENT_CYCLES="2",
        PETALS_MAX_QUEUE_DEPTH="3", TELEMETRY_FLUSH_INTERVAL="0.2",
    )  # fmt: skip
    with ServerProcess(state / "state", env=env, args=["--config", str(config)]) as server:
        server.token = register_agent(server, "tester")
        yield server


def submit(server, job: dict) -> dict:
    status, body, _ = http("POST", f"{server.url}/v1/petals/train", job, token=server.token)
    assert status == 202, body
    return body


def linear_job(name: str, xs, ys, **extra) -> dict:
    return {"modelType": f"linear:{name}", "dataBatch": [{"x": x, "y": y} for x, y in zip(xs, ys, strict=True)],
            "trainingParams": {"epochs": 3, "learningRate": 0.05, "batchSize": 4},
            "resourceCaps": {"cpu": 1, "memory": 256}, **extra}  # fmt: skip


def telemetry_for(server, cycle_id: str) -> list[dict]:
    status, body, _ = http("GET", f"{server.url}/v1/telemetry/training?agentId=tester", token=server.token)
    assert status == 200
    return [e for e in body["events"] if e.get("cycleId") == cycle_id]


def test_memory_bomb_in_a_learn_cycle_fails_with_memory_limit_and_is_not_retried(failures):
    job = {"modelType": "mlp:bomb", "modelConfig": {"inputDim": 64, "numClasses": 10, "hidden": [4000, 2000]},
           "dataBatch": [{"x": [0.5] * 64, "y": i % 10} for i in range(32)],
           "trainingParams": {"epochs": 2}, "resourceCaps": {"cpu": 1, "memory": 64}}  # fmt: skip
    cycle = wait_cycle(failures, failures.token, submit(failures, job)["cycleId"])
    assert cycle["status"] == "failed"
    assert cycle["error"]["reason"] == "memory_limit"
    assert cycle["attempts"] == 1
    assert cycle["result"]["resourceRecord"]["exec"]["oomKills"] >= 1
    deadline = time.monotonic() + 5
    while not (events := telemetry_for(failures, cycle["cycleId"])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [e["event"] for e in events] == ["training_cycle_failed"]
    assert events[0]["error"].startswith("memory_limit")


def test_a_crash_is_retried_with_backoff_then_completes(failures):
    job = linear_job("crashy", [[1.0, 2.0], [2.0, 1.0], [0.0, 1.0]], [5.0, 4.0, 2.0])
    cycle_id = submit(failures, job)["cycleId"]
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body, _ = http("GET", f"{failures.url}/v1/petals/status/{cycle_id}", token=failures.token)
        seen.add(body["status"])
        if body["status"] in TERMINAL:
            break
        time.sleep(0.02)
    assert "retrying" in seen
    assert body["status"] in ("completed", "aggregated"), body
    assert body["attempts"] == 2
    deadline = time.monotonic() + 5
    while len(events := telemetry_for(failures, cycle_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    kinds = sorted(e["event"] for e in events)
    assert kinds == ["training_cycle_completed", "training_cycle_failed"]
    completed = next(e for e in events if e["event"] == "training_cycle_completed")
    assert completed["deltas"]["tensorCount"] == 2 and "data" not in json.dumps(completed["deltas"])


@pytest.mark.parametrize(
    "job,fragment",
    [
        ({"modelType": "linear:bad", "dataBatch": [{"x": [1, 2], "y": 1}, {"x": [1], "y": 2}]},
         "dataBatch[1].x must be a list of 2 numbers"),
        ({"modelType": "logistic:bad", "dataBatch": [{"x": [1], "y": 1}, {"x": [2], "y": 3}]},
         "dataBatch[1].y must be 0 or 1"),
        ({"modelType": "softmax:bad", "modelConfig": {"numClasses": 3}, "dataBatch": [{"x": [1], "y": 7}]},
         "dataBatch[0].y must be a class label 0..2"),
        ({"modelType": "linear:bad", "dataBatch": []}, "dataBatch"),
        ({"modelType": "linear:bad", "dataBatch": [{"x": [1e39], "y": 1}]}, "finite float32"),
        ({"modelType": "quadratic", "dataBatch": [{"x": [1], "y": 1}]}, "modelType"),
        ({"modelType": "linear:bad", "dataBatch": [{"x": [1], "y": 1}], "resourceCaps": {"memory": 999999}},
         "resourceCaps.memory"),
    ],
)  # fmt: skip
def test_bad_data_is_a_400_and_stores_nothing(failures, job, fragment):
    status, body, _ = http("POST", f"{failures.url}/v1/petals/train", job, token=failures.token)
    assert status == 400, body
    assert fragment in body["error"]["message"]
    name = job["modelType"] if ":" in job["modelType"] else "linear:bad"
    status, _, _ = http(
        "GET", f"{failures.url}/v1/petals/model/shared?modelType={name}", token=failures.token
    )
    assert status in (400, 404)  # the model was not created


def test_nan_json_is_refused_before_anything_is_stored(failures):
    raw = b'{"modelType": "linear:nan", "dataBatch": [{"x": [NaN], "y": 1}]}'
    status, body, _ = http("POST", f"{failures.url}/v1/petals/train", raw, token=failures.token)
    assert status == 400
    status, _, _ = http(
        "GET", f"{failures.url}/v1/petals/model/shared?modelType=linear:nan", token=failures.token
    )
    assert status == 404


def test_non_finite_deltas_are_bad_output_never_retried_and_the_version_stays(failures):
    job = linear_job("poison-nan", [[1e18], [1e18]], [1.0, -1.0])
    job["trainingParams"] = {"epochs": 3, "learningRate": 10.0, "batchSize": 1}
    cycle = wait_cycle(failures, failures.token, submit(failures, job)["cycleId"])
    assert cycle["status"] == "failed" and cycle["attempts"] == 1, cycle
    assert cycle["error"]["reason"] == "bad_output"
    assert "layer0." in cycle["error"]["message"] and "non-finite" in cycle["error"]["message"]
    status, model, _ = http(
        "GET", f"{failures.url}/v1/petals/model/shared?modelType=linear:poison-nan", token=failures.token
    )
    assert model["currentVersion"] == 0


@pytest.mark.parametrize("name,x,why", [("poison-norm", 60.0, "exceeds the bound")])
def test_poisoned_deltas_are_rejected_by_validators_and_the_version_stays(failures, name, x, why):
    job = linear_job(name, [[x], [x]], [1.0, -1.0])
    job["trainingParams"] = {"epochs": 3, "learningRate": 10.0, "batchSize": 1}
    cycle = wait_cycle(failures, failures.token, submit(failures, job)["cycleId"])
    assert cycle["status"] == "completed", cycle  # the cycle ran; its round was refused
    deadline = time.monotonic() + 10
    while "round" not in cycle.get("result", {}) and time.monotonic() < deadline:
        time.sleep(0.1)
        cycle = wait_cycle(failures, failures.token, cycle["cycleId"])
    assert cycle["result"]["round"]["outcome"] == "rejected"
    status, model, _ = http(
        "GET", f"{failures.url}/v1/petals/model/shared?modelType=linear:{name}", token=failures.token
    )
    assert model["currentVersion"] == 0
    status, history, _ = http(
        "GET", f"{failures.url}/v1/consensus/history?modelType=linear:{name}", token=ADMIN_TOKEN
    )
    proposal = next(e for e in history["entries"] if e["kind"] == "round_proposal")
    assert proposal["body"]["approved"] is False
    assert any(why in vote["reason"] and not vote["approve"] for vote in proposal["body"]["votes"])
    assert any(e["kind"] == "round_rejected" for e in history["entries"])


def test_a_full_queue_answers_429_with_retry_after(failures):
    job = linear_job("queue", [[1.0]] * 4, [1.0] * 4)
    job["trainingParams"]["epochs"] = 200
    answers = [http("POST", f"{failures.url}/v1/petals/train", job, token=failures.token) for _ in range(8)]
    statuses = [status for status, _, _ in answers]
    assert 429 in statuses, statuses
    refused = next(a for a in answers if a[0] == 429)
    assert int(refused[2]["Retry-After"]) >= 1
    assert refused[1]["error"]["code"] == "too_many_requests"
    for status, body, _ in answers:
        if status == 202:
            wait_cycle(failures, failures.token, body["cycleId"])


def test_status_shows_progress_while_the_cycle_runs(failures):
    job = linear_job("progress", [[float(i)] for i in range(64)], [2.0 * i for i in range(64)])
    job["trainingParams"] = {"epochs": 400, "learningRate": 0.0001, "batchSize": 1}
    cycle_id = submit(failures, job)["cycleId"]
    partial = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body, _ = http("GET", f"{failures.url}/v1/petals/status/{cycle_id}", token=failures.token)
        if body["status"] == "running" and 0 < body["progress"]["epoch"] < 400:
            partial = body["progress"]
        if body["status"] in TERMINAL:
            break
        time.sleep(0.02)
    assert partial is not None and partial["epochs"] == 400 and partial["loss"] is not None
    assert body["progress"]["epoch"] == 400


def test_sandbox_with_training_config_gives_the_same_deltas_as_train(failures):
    job = linear_job("twin", [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [1.0, 2.0, 3.0], seed=1234)
    # The sandbox is prepared first (creating the model at version 0), then the same job is
    # submitted: both train from version 0 with the same seed.
    status, sandbox, _ = http(
        "POST", f"{failures.url}/v1/sandbox/create", {"trainingConfig": job, "resourceCaps": {"cpu": 1, "memory": 256}},
        token=failures.token,
    )  # fmt: skip
    assert status == 201, sandbox
    assert sandbox["trainingConfig"]["baseVersion"] == 0
    cycle_id = submit(failures, job)["cycleId"]
    status, result, _ = http(
        "POST", f"{failures.url}/v1/sandbox/execute",
        {"sandboxId": sandbox["sandboxId"], "command": sandbox["trainingConfig"]["command"]},
        token=failures.token,
    )  # fmt: skip
    assert status == 200 and result["exitCode"] == 0, result
    cycle = wait_cycle(failures, failures.token, cycle_id)
    assert cycle["baseVersion"] == 0 and cycle["status"] in ("completed", "aggregated")
    # The program left its deltas in the sandbox's /out, as the cycle's program did in its own.
    digest = (
        "import hashlib, json, safetensors; f = safetensors.safe_open('/out/deltas.safetensors', 'np'); "
        "order = json.loads(f.metadata()['tensor_order']); "
        "print(hashlib.sha256(b''.join(f.get_tensor(n).tobytes() for n in order)).hexdigest())"
    )
    status, result, _ = http(
        "POST", f"{failures.url}/v1/sandbox/execute",
        {"sandboxId": sandbox["sandboxId"], "command": ["python", "-c", digest]}, token=failures.token,
    )  # fmt: skip
    assert status == 200 and result["exitCode"] == 0, result
    assert result["stdout"].strip() == cycle["result"]["deltas"]["sha256"]
    status, gone, _ = http(
        "DELETE", f"{failures.url}/v1/sandbox/{sandbox['sandboxId']}", token=failures.token
    )
    assert status == 200 and gone["status"] == "destroyed"


def test_the_queue_is_fair_across_agents():
    import asyncio

    from server.training.scheduler import FairQueue

    async def drain() -> list[str]:
        queue = FairQueue()
        for i in range(4):
            queue.put("greedy", f"g{i}")
        queue.put("modest", "m0")
        queue.put("late", "l0")
        return [await queue.get() for _ in range(6)]

    # The agent with four jobs waiting does not starve the others: one job per agent in turn.
    assert asyncio.run(drain()) == ["g0", "m0", "l0", "g1", "g2", "g3"]


def test_predictions_use_the_cpu_provider_on_a_host_without_gpus(federation, digits):
    import glob

    if glob.glob("/dev/nvidia[0-9]*"):
        pytest.skip("this host has a GPU")
    token = federation.tokens[AGENTS[0]]
    job = {
        "modelType": "linear:provider",
        "dataBatch": [{"x": [1.0, 2.0], "y": 3.0}],
        "trainingParams": {"epochs": 1},
    }
    status, body, _ = http("POST", f"{federation.url}/v1/petals/train", job, token=token)
    assert status == 202, body  # version 0 exists from here on
    status, body, _ = http(
        "POST", f"{federation.url}/v1/petals/model/shared/predict",
        {"modelType": "linear:provider", "inputs": [[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]], "version": 0}, token=token,
    )  # fmt: skip
    assert status == 200 and body["provider"] == "CPUExecutionProvider"
    assert len(body["outputs"]) == 3
    log = federation.log()
    assert "onnxruntime" not in log.lower() and "cuda" not in log.lower()
