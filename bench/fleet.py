"""Fleet benchmark (executor ray): learn cycles per minute with 1, 2 and 3 Ray nodes (each in
its own network namespace on this machine, tests/fleet.py), the dispatch overhead Ray adds
to each cycle (inputs hashed and shipped, the task, the hop to the node's agent, the outcome
back; the node's own time in run_attempt left out), and the same jobs on the local executor."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from tests.fleet import Cluster
from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, wait_until

JOBS = 6  # one round of six agents per measurement


def _job(name: str, seed: int) -> dict:
    xs = [[0.01 * i, 1.0 - 0.01 * i] for i in range(12)]
    return {"modelType": name, "dataBatch": [{"x": x, "y": 2.0 * x[0] - x[1]} for x in xs],
            "trainingParams": {"epochs": 2, "batchSize": 4, "learningRate": 0.05},
            "resourceCaps": {"cpu": 0.5, "memory": 128}, "seed": seed}  # fmt: skip


class _Api:
    def __init__(self, url: str, cluster: Cluster | None) -> None:
        self.url, self.cluster = url, cluster

    def __call__(self, method, path, body=None, token=ADMIN_TOKEN):
        if self.cluster is None:
            return http(method, self.url + path, body, token=token, timeout=30)
        return self.cluster.call_in("h", http, method, self.url + path, body, token=token, timeout=30)


def _round(api: _Api, name: str, tokens: dict[str, str], clients: int = JOBS) -> tuple[float, list[dict]]:
    policy = {"minClients": clients}
    status, body, _ = api(
        "POST",
        "/v1/petals/models",
        {"modelType": name, "modelConfig": {"inputDim": 2}, "roundPolicy": policy},
    )
    assert status == 201, body
    started = time.monotonic()
    cycles = []
    for seed, token in enumerate(tokens.values()):
        status, body, _ = api("POST", "/v1/petals/train", _job(name, seed), token=token)
        assert status == 202, body
        cycles.append((token, body["cycleId"]))

    def ended():
        bodies = [api("GET", f"/v1/petals/status/{c}", token=t)[1] for t, c in cycles]
        return bodies if all(b["status"] in ("aggregated", "failed") for b in bodies) else None

    bodies = wait_until(ended, 600, "the round's cycles")
    return time.monotonic() - started, bodies


def _agents(api: _Api) -> dict[str, str]:
    tokens = {}
    for i in range(JOBS):
        status, body, _ = api("POST", "/v1/agents", {"agentId": f"bench-{i}"})
        assert status == 201, body
        tokens[body["agentId"]] = body["token"]
    return tokens


def _env(**extra: str) -> dict[str, str]:
    return clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_MAX_CONCURRENT_CYCLES=str(JOBS), **extra)


def run() -> dict:
    figures: dict = {"jobsPerMeasurement": JOBS}
    root = Path(tempfile.mkdtemp(prefix="wc-bench-fleet-"))
    cluster = Cluster(root, workers=("a", "b", "c"), slots=2)
    try:
        cluster.start(nodes=("a",))
        env = {**_env(WONDERCRAFT_EXECUTOR="ray", RAY_ADDRESS=cluster.address), **cluster.env()}
        env["WONDERCRAFT_ADMIN_TOKEN"] = ADMIN_TOKEN
        server = ServerProcess(root / "service", env=env, prefix=cluster.prefix("h"))
        server.start(wait=False)
        api = _Api(server.url, cluster)
        try:
            wait_until(lambda: _healthy(api), 120, "the service")
            tokens = _agents(api)
            per_nodes = {}
            for count, node in enumerate(("a", "b", "c"), start=1):
                if count > 1:
                    cluster.start_node(node)
                _round(api, f"linear:warm{count}", tokens)  # workers and caches warm
                wall, bodies = _round(api, f"linear:bench{count}", tokens)
                per_nodes[str(count)] = {
                    "cyclesPerMinute": round(JOBS / wall * 60, 1),
                    "nodesUsed": len({b.get("node") for b in bodies}),
                }
                queued = [b["result"]["dispatchOverheadSeconds"] for b in bodies]
                per_nodes[str(count)]["dispatchWithQueueP50Ms"] = round(statistics.median(queued) * 1000, 1)
            # Dispatch overhead without queueing: rounds of three cycles, six free slots.
            three = dict(list(tokens.items())[:3])
            overheads = []
            for index in range(4):
                _, bodies = _round(api, f"linear:dispatch{index}", three, clients=3)
                overheads += [b["result"]["dispatchOverheadSeconds"] for b in bodies]
            figures["ray"] = per_nodes
            figures["rayDispatchOverheadMs"] = {
                "p50": round(statistics.median(overheads) * 1000, 2),
                "max": round(max(overheads) * 1000, 2),
                "samples": len(overheads),
            }
        finally:
            server.stop()
        with ServerProcess(root / "local", env=_env()) as local_server:
            local = _Api(local_server.url, None)
            tokens = _agents(local)
            _round(local, "linear:warm", tokens)
            wall, bodies = _round(local, "linear:bench", tokens)
            figures["local"] = {"cyclesPerMinute": round(JOBS / wall * 60, 1)}
    finally:
        cluster.close()
    print(f"   ray cycles/min by nodes: {figures.get('ray')}; local: {figures.get('local')}")
    print(f"   ray dispatch overhead per cycle: {figures.get('rayDispatchOverheadMs')}")
    return figures


def _healthy(api: _Api) -> bool:
    try:
        return api("GET", "/healthz")[0] == 200
    except OSError:
        return False
