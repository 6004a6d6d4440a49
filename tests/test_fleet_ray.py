"""Learn cycles across hosts with the `ray` executor, on a real cluster: a head and two worker
nodes, each in its own network namespace (tests/fleet.py), token auth on, the service itself
in the head's namespace. Three agents train three rounds: their cycles land on both nodes and
the final model is bit for bit the one the local executor makes from the same jobs. Then one
node's raylet is killed mid-cycle: the cycle is retried on the other node, the round closes,
and the node, started again, sweeps the orphaned sandbox before taking work. One cluster for
the whole module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet import Cluster
from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, wait_until
from tests.leftovers import RUN

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(420)]

MODEL = "linear:fleet"
AGENTS = ("fleet-a", "fleet-b", "fleet-c")
ROUNDS = 3
CTL = str(Path(sys.executable).parent / "wondercraft-ctl")


def job(seed: int, samples: int = 6, epochs: int = 2) -> dict:
    xs = [[0.01 * i, 1.0 - 0.01 * i] for i in range(samples)]
    return {"modelType": MODEL, "dataBatch": [{"x": x, "y": 2.0 * x[0] - x[1]} for x in xs],
            "trainingParams": {"epochs": epochs, "batchSize": 3, "learningRate": 0.05},
            "resourceCaps": {"cpu": 0.5, "memory": 128}, "seed": seed}  # fmt: skip


class Api:
    """The service's API, reached from the namespace it listens in (or this one)."""

    def __init__(self, url: str, cluster: Cluster | None = None) -> None:
        self.url, self.cluster, self.tokens = url, cluster, {}

    def __call__(self, method: str, path: str, body=None, token: str = ADMIN_TOKEN):
        if self.cluster is None:
            return http(method, self.url + path, body, token=token)
        return self.cluster.call_in("h", http, method, self.url + path, body, token=token)

    def ready(self, server: ServerProcess) -> None:
        def up():
            assert server.proc.poll() is None, server.log()[-4000:]
            try:
                return self("GET", "/healthz")[0] == 200
            except OSError:
                return False

        wait_until(up, 120, "the service answering")

    def setup(self) -> None:
        status, body, _ = self("POST", "/v1/petals/models",
                               {"modelType": MODEL, "modelConfig": {"inputDim": 2}, "roundPolicy": {"minClients": 3}})  # fmt: skip
        assert status == 201, body
        for agent in AGENTS:
            status, body, _ = self("POST", "/v1/agents", {"agentId": agent})
            assert status == 201, body
            self.tokens[agent] = body["token"]

    def cycle(self, agent: str, cycle_id: str) -> dict:
        status, body, _ = self("GET", f"/v1/petals/status/{cycle_id}", token=self.tokens[agent])
        assert status == 200, body
        return body

    def train_round(self, seeds: list[int], **shape) -> list[dict]:
        cycles = []
        for agent, seed in zip(AGENTS, seeds, strict=True):
            status, body, _ = self("POST", "/v1/petals/train", job(seed, **shape), token=self.tokens[agent])
            assert status == 202, body
            cycles.append((agent, body["cycleId"]))
        return cycles

    def wait_round(self, cycles, timeout: float = 180.0) -> list[dict]:
        def ended():
            bodies = [self.cycle(a, c) for a, c in cycles]
            return bodies if all(b["status"] in ("aggregated", "failed") for b in bodies) else None

        ends = wait_until(ended, timeout) or [self.cycle(a, c) for a, c in cycles]
        assert [e["status"] for e in ends] == ["aggregated"] * 3, ends
        return ends

    def model_sha(self) -> tuple[int, str]:
        status, body, _ = self("GET", f"/v1/petals/model/versions?modelType={MODEL}")
        assert status == 200, body
        latest = body["versions"][-1]
        return latest["version"], latest["sha256"]


def seeds_of(round_: int) -> list[int]:
    return [1000 * round_ + i for i in range(len(AGENTS))]


def service_env(**extra: str) -> dict[str, str]:
    return clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_MAX_CONCURRENT_CYCLES="6",
                     PETALS_RETRY_BASE_DELAY="0.2", **extra)  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("fleet"))
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def fleet(cluster):
    state = cluster.root / "service"
    env = {**service_env(WONDERCRAFT_EXECUTOR="ray", RAY_ADDRESS=cluster.address), **cluster.env()}
    env["WONDERCRAFT_ADMIN_TOKEN"] = ADMIN_TOKEN
    server = ServerProcess(state, env=env, prefix=cluster.prefix("h"))
    server.start(wait=False)
    api = Api(server.url, cluster)
    try:
        api.ready(server)
        api.setup()
        yield api
    finally:
        server.stop()


def test_three_agents_train_three_rounds_across_nodes_and_match_the_local_executor(fleet, tmp_path):
    nodes = set()
    for round_ in range(ROUNDS):
        ends = fleet.wait_round(fleet.train_round(seeds_of(round_)))
        assert {e["resultVersion"] for e in ends} == {round_ + 1}
        nodes |= {e["node"] for e in ends}
    assert nodes <= {"node-a", "node-b"} and len(nodes) == 2, nodes
    version, on_ray = fleet.model_sha()
    assert version == ROUNDS
    status, listed, _ = fleet("GET", "/v1/admin/nodes")
    assert status == 200 and listed["executor"] == "ray", listed
    workers = {n["name"]: n for n in listed["nodes"] if n["slotsTotal"]}
    assert set(workers) == {"node-a", "node-b"}, listed
    assert all(n["alive"] and n["lastHeartbeat"] and n["preflightOk"] for n in workers.values())

    def idle_nodes():
        # The nodes' own reports come with the next poll: both idle once it has come.
        shown = ctl_nodes(fleet.url, fleet.cluster.prefix("h"))
        rows = {line.split()[0]: line.split() for line in shown.splitlines()[1:]}
        return (shown, rows) if rows["node-a"][3] == rows["node-b"][3] == "0/2" else None

    shown, rows = wait_until(idle_nodes, 60, "both nodes report no cycle running")
    assert rows["node-a"][1] == fleet.cluster.addr["a"], shown
    assert rows["node-b"][1] == fleet.cluster.addr["b"], shown
    # The same jobs, same seeds, on the local executor: the same model, bit for bit.
    with ServerProcess(tmp_path / "local", env=service_env()) as server:
        local = Api(server.url)
        local.setup()
        for round_ in range(ROUNDS):
            local.wait_round(local.train_round(seeds_of(round_)))
        assert local.model_sha() == (ROUNDS, on_ray)
        assert "executor local" in ctl_nodes(server.url, [])


def ctl_nodes(url: str, prefix: list[str]) -> str:
    env = clean_env(WONDERCRAFT_URL=url, WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN)
    done = subprocess.run([*prefix, CTL, "nodes"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_node_killed_mid_cycle_its_cycle_finishes_elsewhere_and_it_comes_back_clean(fleet, cluster):
    version, _ = fleet.model_sha()
    cycles = fleet.train_round(seeds_of(7), samples=120, epochs=300)

    def running_on_a():
        for agent, cycle_id in cycles:
            body = fleet.cycle(agent, cycle_id)
            if body["status"] == "running" and body.get("node") == "node-a" and body.get("sandboxId"):
                return agent, cycle_id, body
        return None

    agent, victim, before = wait_until(running_on_a, 120, "a cycle running in a sandbox on node-a")
    assert cluster.kill("a", only="raylet"), "node-a had no raylet"
    ends = fleet.wait_round(cycles, timeout=240)
    assert {e["resultVersion"] for e in ends} == {version + 1}
    moved = fleet.cycle(agent, victim)
    assert moved["node"] == "node-b" and moved["attempts"] >= 2, moved
    status, listed, _ = fleet("GET", "/v1/admin/nodes")
    dead = [n for n in listed["nodes"] if n["name"] == "node-a"]
    assert dead and not any(n["alive"] for n in dead), listed
    # The host comes back: whatever of node-a still runs dies, and its restart sweeps the
    # sandbox the killed attempt left before it advertises a slot.
    cluster.kill("a")
    wait_until(lambda: not [p for p in _pids(cluster, "a")], 30, "node-a's processes gone")
    report = cluster.start_node("a")
    # The killed attempt's sandbox is swept by the restart, unless its agent destroyed it on the
    # way down (a worker that outlives its raylet for a moment does): either way none is left.
    assert set(report["swept"]) >= {"cgroups", "netns"}, report
    instance = RUN.register_state_dir(cluster.state["a"])
    # The node's own cgroup parents are live (its agent holds them); no sandbox of it is left.
    left = [line for line in RUN.leftovers() if instance in line and "sb-" in line]
    assert not left, left
    # And it takes work again.
    ends = fleet.wait_round(fleet.train_round(seeds_of(8)))
    assert {e["resultVersion"] for e in ends} == {version + 2}


def _pids(cluster: Cluster, name: str) -> list[int]:
    from tests.fleet import netns_pids

    return netns_pids(cluster.ns[name])


def test_the_service_refuses_a_cluster_without_token_auth(cluster, tmp_path):
    # A client without token auth: refused before it connects (the head's GCS would refuse it too).
    env = service_env(WONDERCRAFT_EXECUTOR="ray", RAY_ADDRESS=cluster.address)
    server = ServerProcess(tmp_path / "no-token", env=env, prefix=cluster.prefix("h"))
    server.start(wait=False)
    assert wait_until(lambda: server.proc.poll() is not None, 60), "the service kept running"
    server.stop()
    assert "RAY_AUTH_MODE=token" in server.log(), server.log()[-2000:]
