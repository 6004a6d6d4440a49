"""The warm pool inside the service (WARM_POOL): learn cycles take warm sandboxes, tightened to
the job's caps, a job the pool cannot serve goes cold, and /metrics, the admin status and
`wondercraft-ctl status` show the pool."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ADMIN_TOKEN, api_server, http, register_agent, wait_cycle, wait_until
from tests.test_ctl import ctl, ok

JOB = {
    "modelType": "linear:warm",
    "dataBatch": [{"x": [float(i), 1.0], "y": 2.0 * i + 1.0} for i in range(16)],
    "trainingParams": {"epochs": 2, "learningRate": 0.01, "batchSize": 4},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Profiles take a job's default caps: 1 core and 512 MB here.
    service = api_server(
        tmp_path_factory.mktemp("warm-service") / "state",
        WARM_POOL="numpy=2",
        SANDBOX_DEFAULT_CPU="1",
        SANDBOX_DEFAULT_MEMORY="512",
        PETALS_MAX_CONCURRENT_CYCLES="1",
        PETALS_AUTO_CREATE_MODELS="1",
    )
    with service:
        service.token = register_agent(service, "warm-agent")
        yield service


def pool_status(server) -> dict:
    status, body, _ = http("GET", f"{server.url}/v1/admin/status", token=ADMIN_TOKEN)
    assert status == 200, body
    return body["warmPool"]["numpy"]


def train(server, **extra) -> dict:
    status, body, _ = http("POST", f"{server.url}/v1/petals/train", {**JOB, **extra}, token=server.token)
    assert status == 202, body
    cycle = wait_cycle(server, server.token, body["cycleId"], timeout=300)
    assert cycle["status"] in ("completed", "aggregated"), cycle
    return cycle


def metric(text: str, name: str) -> float:
    found = re.search(rf'^{name}\{{profile="numpy"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_cycle_takes_a_warm_sandbox_tightened_to_its_caps(server):
    wait_until(lambda: pool_status(server)["idle"] == 2, 300, "two warm sandboxes ready")
    hits = pool_status(server)["hits"]
    cycle = train(server, resourceCaps={"cpu": 0.5, "memory": 256})
    record = cycle["result"]["resourceRecord"]
    assert record["warmStart"]["profile"] == "numpy" and record["warmStart"]["warmupMs"] > 0
    limits = record["sandbox"]["limits"]
    assert (limits["cpuCores"], limits["memoryMB"]) == (0.5, 256), limits  # the job's, not the profile's
    assert cycle["result"]["numSamples"] == 16 and cycle["result"]["deltas"]["tensorCount"] > 0
    assert pool_status(server)["hits"] == hits + 1
    # The sandbox it took is gone, and the pool refills to its size.
    wait_until(lambda: pool_status(server)["idle"] == 2, 300, "the pool refilled")
    status, body, _ = http("GET", f"{server.url}/v1/sandbox/status/{cycle['sandboxId']}", token=ADMIN_TOKEN)
    assert status == 200 and body["status"] == "destroyed", body


def test_the_tightened_memory_cap_is_the_kernel_s(server):
    # 64 MB, not the profile's 512: the 48 MB of float64 weights this MLP needs do not fit.
    job = {"modelType": "mlp:bomb", "modelConfig": {"inputDim": 64, "numClasses": 10, "hidden": [4000, 2000]},
           "dataBatch": [{"x": [0.5] * 64, "y": i % 10} for i in range(32)],
           "trainingParams": {"epochs": 2}, "resourceCaps": {"cpu": 1, "memory": 64}}  # fmt: skip
    wait_until(lambda: pool_status(server)["idle"] >= 1, 300, "a warm sandbox ready")
    status, body, _ = http("POST", f"{server.url}/v1/petals/train", job, token=server.token)
    assert status == 202, body
    cycle = wait_cycle(server, server.token, body["cycleId"], timeout=300)
    assert cycle["status"] == "failed" and cycle["error"]["reason"] == "memory_limit", cycle
    record = cycle["result"]["resourceRecord"]
    assert record["warmStart"]["profile"] == "numpy" and record["exec"]["oomKills"] >= 1
    assert record["sandbox"]["limits"]["memoryMB"] == 64


def test_a_job_above_the_profile_goes_cold_and_counts_as_a_miss(server):
    misses = pool_status(server)["misses"]
    cycle = train(server, resourceCaps={"cpu": 2, "memory": 256})
    record = cycle["result"]["resourceRecord"]
    assert record["warmStart"] is None
    assert record["sandbox"]["limits"]["cpuCores"] == 2
    assert pool_status(server)["misses"] == misses + 1


def test_metrics_and_ctl_status_show_the_pool(server):
    train(server)  # default caps: the profile's own
    status, text, _ = http("GET", f"{server.url}/metrics", token=ADMIN_TOKEN)
    assert status == 200
    assert metric(text, "wondercraft_warm_pool_hits_total") >= 2
    assert metric(text, "wondercraft_warm_pool_misses_total") >= 1
    assert metric(text, "wondercraft_warm_pool_warmup_seconds_count") >= 2
    line = next(line for line in ok(ctl(server, "status")).splitlines() if line.startswith("warm pool"))
    assert re.search(r"numpy \d idle of 2, \d warming, \d+ hits, \d+ misses, warm-up p50 \d+ ms", line), line
