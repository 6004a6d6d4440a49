"""What a learn cycle's caps and figures say, through the real service: a memory cap too small
for Python is refused at submit naming the smallest that works (and that value trains); a cycle
that hit its cap names the cap, its value and the peak reached; a version's metrics are
labelled as training figures, and held-out figures come from the evaluation endpoint once a
hold-out set is registered."""

from __future__ import annotations

import numpy as np
import pytest

from server.config import Settings
from server.training.caps import LEARN_CYCLE_MEMORY_MB_MIN, cap_hit, cycle_error
from tests.helpers import ADMIN_TOKEN, api_server, http, wait_cycle

CLASSES = 3


def job(model: str, memory: int, seed: int = 1, rows: int = 12) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 4))
    return {"agentId": "capper", "modelType": model, "seed": seed,
            "dataBatch": [{"x": r.tolist(), "y": int(i % CLASSES)} for i, r in enumerate(x)],
            "trainingParams": {"epochs": 2}, "resourceCaps": {"cpu": 1, "memory": memory}}  # fmt: skip


def define(server, model: str, hidden: list[int]) -> None:
    body = {"modelType": model, "modelConfig": {"inputDim": 4, "numClasses": CLASSES, "hidden": hidden},
            "roundPolicy": {"minClients": 1}}  # fmt: skip
    status, answer, _ = http("POST", f"{server.url}/v1/petals/models", body, token=ADMIN_TOKEN)
    assert status == 201, answer


def submit(server, body: dict) -> dict:
    status, answer, _ = http("POST", f"{server.url}/v1/petals/train", body, token=ADMIN_TOKEN)
    assert status == 202, answer
    return wait_cycle(server, ADMIN_TOKEN, answer["cycleId"], statuses=("aggregated", "failed"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(tmp_path_factory.mktemp("caps") / "state", PETALS_MAX_RETRIES="0") as server:
        define(server, "mlp:small", [8])
        # ~2.2 M float32 parameters: the base model alone is more than the smallest cap holds.
        define(server, "mlp:wide", [2048, 1024])
        yield server


def cycles_of(server) -> list[str]:
    _, body, _ = http("GET", f"{server.url}/v1/admin/cycles?agentId=capper&limit=1000", token=ADMIN_TOKEN)
    return [c["cycleId"] for c in body["cycles"]]


def test_a_memory_cap_too_small_for_python_is_refused_at_submit(server):
    before = cycles_of(server)
    for memory in (16, LEARN_CYCLE_MEMORY_MB_MIN - 1):
        status, body, _ = http(
            "POST", f"{server.url}/v1/petals/train", job("mlp:small", memory), token=ADMIN_TOKEN
        )
        assert status == 400, body
        message = body["error"]["message"]
        assert f"resourceCaps.memory is {memory} MB" in message
        assert f"the smallest that works is {LEARN_CYCLE_MEMORY_MB_MIN} MB" in message
    assert cycles_of(server) == before  # nothing was queued
    # The value named trains.
    assert submit(server, job("mlp:small", LEARN_CYCLE_MEMORY_MB_MIN))["status"] == "aggregated"


def test_a_cycle_that_hits_its_memory_cap_names_the_cap_its_value_and_the_peak(server):
    cycle = submit(server, job("mlp:wide", LEARN_CYCLE_MEMORY_MB_MIN))
    assert cycle["status"] == "failed", cycle
    error = cycle["error"]
    assert error["reason"] == "memory_limit"
    cap = error["cap"]
    assert cap["cap"] == "memory" and cap["limit"] == LEARN_CYCLE_MEMORY_MB_MIN and cap["unit"] == "MB"
    peak_bytes = cycle["result"]["resourceRecord"]["exec"]["memoryPeakBytes"]
    assert cap["peak"] == pytest.approx(peak_bytes / 2**20, abs=0.06) and 0 < cap["peak"] <= cap["limit"] + 1
    assert f"memory cap (memory_limit): limit {LEARN_CYCLE_MEMORY_MB_MIN} MB" in error["message"]
    assert f"peak reached {cap['peak']:g} MB" in error["message"]


@pytest.mark.parametrize(
    ("reason", "record", "expected"),
    [
        ("pids_limit", {"exec": {"pidsPeak": 64}, "sandbox": {"limits": {"pids": 64}}},
         {"cap": "pids", "limit": 64, "unit": "processes", "peak": 64}),
        ("storage_limit", {"sandbox": {"limits": {"storageMB": 512}}},
         {"cap": "storage", "limit": 512, "unit": "MB", "peak": 512}),
        ("timeout", {"exec": {"cpuSeconds": 3.5}, "sandbox": {"wallSeconds": 60.01}},
         {"cap": "lifetime", "limit": 60.0, "unit": "s wall", "peak": 60.01, "cpuSeconds": 3.5}),
        ("crashed", {"exec": {"memoryPeakBytes": 1}}, None),
    ],
)  # fmt: skip
def test_every_cap_names_its_value_and_peak_from_the_resource_record(reason, record, expected):
    assert cap_hit(reason, record, {}, lifetime_s=60.0) == expected
    error = cycle_error(reason, "ended", {"resourceRecord": record}, {}, Settings(sandbox_max_lifetime_s=60))
    if expected is None:
        assert error == {"reason": reason, "message": "ended"}
    else:
        assert error["cap"] == expected
        assert f"limit {expected['limit']:g} {expected['unit']}" in error["message"]
        assert f"peak reached {expected['peak']:g} {expected['unit']}" in error["message"]


def test_version_metrics_are_labelled_training_and_evaluation_gives_held_out_figures(server):
    cycle = submit(server, job("mlp:small", 64, seed=7))
    assert cycle["status"] == "aggregated", cycle
    version = cycle["resultVersion"]
    _, versions, _ = http(
        "GET", f"{server.url}/v1/petals/model/versions?modelType=mlp:small", token=ADMIN_TOKEN
    )
    trained = next(v for v in versions["versions"] if v["version"] == version)
    assert trained["metrics"]["source"] == "training"

    url = f"{server.url}/v1/petals/model/shared/evaluation?modelType=mlp:small&version={version}"
    status, body, _ = http("GET", url, token=ADMIN_TOKEN)
    assert status == 404 and "POST /v1/petals/validation" in body["error"]["message"]

    rng = np.random.default_rng(99)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    y = np.arange(30) % CLASSES
    holdout = {
        "modelType": "mlp:small",
        "dataBatch": [{"x": r.tolist(), "y": int(c)} for r, c in zip(x, y, strict=True)],
    }
    assert http("POST", f"{server.url}/v1/petals/validation", holdout, token=ADMIN_TOKEN)[0] == 201

    status, body, _ = http("GET", url, token=ADMIN_TOKEN)
    assert status == 200, body
    assert body["source"] == "held-out" and body["samples"] == 30 and body["version"] == version
    # The same figures from the version's own predictions on the hold-out set.
    predict = {"modelType": "mlp:small", "version": version, "inputs": x.tolist()}
    _, predicted, _ = http("POST", f"{server.url}/v1/petals/model/shared/predict", predict, token=ADMIN_TOKEN)
    p = np.asarray(predicted["outputs"])
    assert body["accuracy"] == pytest.approx(float(np.mean(p.argmax(axis=1) == y)))
    assert body["loss"] == pytest.approx(float(-np.mean(np.log(p[np.arange(30), y]))), rel=1e-4)
    assert body["lossKind"] == "cross_entropy"
    # Per version: version 0 has its own figures; an unknown version is a 404.
    status, first, _ = http("GET", url.replace(f"version={version}", "version=0"), token=ADMIN_TOKEN)
    assert status == 200 and first["version"] == 0
    assert http("GET", url.replace(f"version={version}", "version=999"), token=ADMIN_TOKEN)[0] == 404


def test_the_evaluation_endpoint_is_in_the_openapi_document(server):
    _, document, _ = http("GET", f"{server.url}/v1/openapi.json")
    operation = document["paths"]["/v1/petals/model/shared/evaluation"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"modelType", "version"}
    schema = document["components"]["schemas"]["ModelEvaluation"]
    assert schema["properties"]["source"] == {
        "const": "held-out",
        "description": "Where the figures come from",
    }
