"""Explicit shared models and their round policies through the real service: defining,
listing and deleting models, who may define them, the 404 that names the closest model, one
round of three sequential jobs under minClients 3, and a liveness run of many agents and
models whose every cycle ends, every round closes and every slot is freed."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, register_agent, wait_cycle

TERMINAL = ("completed", "failed", "aggregated")


def linear_model(name: str, **policy) -> dict:
    return {"modelType": name, "modelConfig": {"inputDim": 2}, "roundPolicy": policy}


def linear_job(name: str, seed: int, **extra) -> dict:
    xs = [[0.1 * i, 1.0 - 0.1 * i] for i in range(6)]
    return {"modelType": name, "dataBatch": [{"x": x, "y": 2.0 * x[0] - x[1]} for x in xs],
            "trainingParams": {"epochs": 2, "batchSize": 3, "learningRate": 0.05},
            "resourceCaps": {"cpu": 0.5, "memory": 128}, "seed": seed, **extra}  # fmt: skip


def history(server, model: str) -> list[dict]:
    status, body, _ = http(
        "GET", f"{server.url}/v1/consensus/history?modelType={model}&limit=1000", token=ADMIN_TOKEN
    )
    assert status == 200, body
    return list(reversed(body["entries"]))  # oldest first


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    state = tmp_path_factory.mktemp("training-models")
    env = clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_MAX_CONCURRENT_CYCLES="3")
    with ServerProcess(state / "state", env=env) as server:
        server.tokens = {a: register_agent(server, a) for a in ("seq-a", "seq-b", "seq-c", "author")}
        yield server


def test_a_job_for_an_unknown_model_is_a_404_naming_the_closest_model(service):
    status, body, _ = http(
        "POST", f"{service.url}/v1/petals/models", linear_model("linear:digits"), token=ADMIN_TOKEN
    )
    assert status == 201, body
    job = linear_job("linear:digit", 1)
    status, body, _ = http("POST", f"{service.url}/v1/petals/train", job, token=service.tokens["seq-a"])
    assert status == 404, body
    assert "did you mean linear:digits?" in body["error"]["message"]
    # Nothing was created by the refused job.
    status, listed, _ = http("GET", f"{service.url}/v1/petals/models", token=service.tokens["seq-a"])
    assert status == 200 and "linear:digit" not in [m["modelType"] for m in listed["models"]]


def test_only_the_admin_or_a_model_author_defines_models(service):
    model = linear_model("linear:authored", minClients=2)
    status, body, _ = http("POST", f"{service.url}/v1/petals/models", model, token=service.tokens["author"])
    assert status == 403 and "model author" in body["error"]["message"]
    status, body, _ = http(
        "PATCH", f"{service.url}/v1/agents/author", {"modelAuthor": True}, token=ADMIN_TOKEN
    )
    assert status == 200 and body["modelAuthor"] is True
    status, body, _ = http("POST", f"{service.url}/v1/petals/models", model, token=service.tokens["author"])
    assert status == 201, body
    assert body["createdBy"] == "author" and body["currentVersion"] == 0
    assert body["roundPolicy"]["minClients"] == 2
    assert body["roundPolicy"]["roundDeadlineSeconds"] == 300  # the service's default filled in
    status, body, _ = http("POST", f"{service.url}/v1/petals/models", model, token=ADMIN_TOKEN)
    assert status == 409
    # Deleting is the admin's alone.
    status, body, _ = http(
        "DELETE", f"{service.url}/v1/petals/models/linear:authored", token=service.tokens["author"]
    )
    assert status == 403


@pytest.mark.parametrize(
    "model,fragment",
    [
        (linear_model("linear:p", minClients=0), "roundPolicy.minClients"),
        (
            linear_model("linear:p", roundDeadlineSeconds=5, roundWindowSeconds=10),
            "roundWindowSeconds must be",
        ),
        ({"modelType": "softmax:p", "modelConfig": {"inputDim": 3}}, "numClasses is required"),
        ({"modelType": "cubic:p", "modelConfig": {"inputDim": 3}}, "linear, logistic, softmax or mlp"),
    ],
)
def test_bad_model_definitions_are_400s_naming_the_field(service, model, fragment):
    status, body, _ = http("POST", f"{service.url}/v1/petals/models", model, token=ADMIN_TOKEN)
    assert status == 400, body
    assert fragment in body["error"]["message"]
    assert "^(" not in body["error"]["message"]  # names the allowed words, not a regex


def test_sequential_jobs_of_three_agents_make_one_version_with_three_participants(service):
    name = "linear:three"
    status, body, _ = http(
        "POST", f"{service.url}/v1/petals/models", linear_model(name, minClients=3), token=ADMIN_TOKEN
    )
    assert status == 201, body
    cycles = []
    for seed, agent in enumerate(("seq-a", "seq-b", "seq-c")):
        status, body, _ = http(
            "POST", f"{service.url}/v1/petals/train", linear_job(name, seed), token=service.tokens[agent]
        )
        assert status == 202 and body["baseVersion"] == 0, body
        cycles.append((agent, body["cycleId"]))
        time.sleep(0.3)
    ends = [wait_cycle(service, service.tokens[a], c, ("aggregated", "failed")) for a, c in cycles]
    assert [e["status"] for e in ends] == ["aggregated"] * 3, ends
    assert {e["resultVersion"] for e in ends} == {1}
    status, versions, _ = http(
        "GET", f"{service.url}/v1/petals/model/versions?modelType={name}", token=ADMIN_TOKEN
    )
    assert [v["version"] for v in versions["versions"]] == [0, 1]
    latest = versions["versions"][-1]
    assert len(latest["participants"]) == 3
    assert latest["round"]["roundPolicy"]["minClients"] == 3 and latest["round"]["closedBy"] == "threshold"
    defined = versions["versions"][0]["roundPolicy"]  # as defined, defaults filled in
    assert defined["minClients"] == 3 and defined["roundDeadlineSeconds"] == 300
    (proposal,) = [e for e in history(service, name) if e["kind"] == "round_proposal"]
    assert proposal["body"]["roundPolicy"]["minClients"] == 3 and proposal["body"]["enrolled"] >= 1


@pytest.mark.parametrize("allow_partial", [True, False])
def test_at_its_deadline_a_round_below_min_clients_closes_partial_or_expires(service, allow_partial):
    name = f"linear:deadline-{str(allow_partial).lower()}"
    model = linear_model(name, minClients=3, roundDeadlineSeconds=2, allowPartial=allow_partial)
    status, body, _ = http("POST", f"{service.url}/v1/petals/models", model, token=ADMIN_TOKEN)
    assert status == 201, body
    status, body, _ = http(
        "POST", f"{service.url}/v1/petals/train", linear_job(name, 5), token=service.tokens["seq-a"]
    )
    assert status == 202, body
    end = wait_cycle(service, service.tokens["seq-a"], body["cycleId"], ("aggregated", "failed"), timeout=60)
    if allow_partial:
        assert end["status"] == "aggregated" and end["resultVersion"] == 1, end
        (proposal,) = [e for e in history(service, name) if e["kind"] == "round_proposal"]
        assert proposal["body"]["closedBy"] == "partial" and proposal["body"]["minClients"] == 3
    else:
        assert end["status"] == "failed" and end["error"]["reason"] == "round_expired", end
        assert "1 of the 3 clients" in end["error"]["message"]
        assert not [e for e in history(service, name) if e["kind"] == "round_proposal"]


def test_deleting_a_model_keeps_its_history(service):
    name = "linear:doomed"
    status, _, _ = http(
        "POST", f"{service.url}/v1/petals/models", linear_model(name, minClients=1), token=ADMIN_TOKEN
    )
    assert status == 201
    status, body, _ = http(
        "POST", f"{service.url}/v1/petals/train", linear_job(name, 3), token=service.tokens["seq-a"]
    )
    assert status == 202
    wait_cycle(service, service.tokens["seq-a"], body["cycleId"], ("aggregated", "failed"))
    status, body, _ = http("DELETE", f"{service.url}/v1/petals/models/{name}", token=ADMIN_TOKEN)
    assert status == 200 and body["deleted"] is True
    status, _, _ = http("GET", f"{service.url}/v1/petals/model/shared?modelType={name}", token=ADMIN_TOKEN)
    assert status == 404
    kinds = [e["kind"] for e in history(service, name)]
    assert kinds[0] == "model_created" and "model_committed" in kinds and kinds[-1] == "model_deleted"
    status, _, _ = http("DELETE", f"{service.url}/v1/petals/models/{name}", token=ADMIN_TOKEN)
    assert status == 404


# ---- liveness: many agents, models and rounds at once ----

AGENTS = [f"live-{i}" for i in range(6)]
MODELS = ["linear:live-a", "linear:live-b", "linear:live-c"]
ROUNDS = 5
# Cycles start 0-300 ms late at random, so completions interleave differently every run.
LEARN = ["env", "WONDERCRAFT_TEST_START_DELAY_MS=300", "python", "/opt/wondercraft/learn_cycle.py"]


def test_every_cycle_ends_every_round_closes_and_every_slot_is_freed(tmp_path):
    config = tmp_path / "scaling.json"
    config.write_text(json.dumps({"learnCommand": LEARN}))
    env = clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_MAX_CONCURRENT_CYCLES="3")
    with ServerProcess(tmp_path / "state", env=env, args=["--config", str(config)]) as server:
        tokens = {a: register_agent(server, a) for a in AGENTS}
        for name in MODELS:
            # Two of a model's four agents make a round: the other two complete late, carry
            # over or go stale, which is the interleaving that must never wedge a model. A job
            # sent just after the last version has no partner: its round expires at the deadline.
            model = linear_model(name, minClients=2, aggregationThreshold=0.5, roundDeadlineSeconds=15)
            status, body, _ = http("POST", f"{server.url}/v1/petals/models", model, token=ADMIN_TOKEN)
            assert status == 201, body
        # Each agent trains two models; each model has four agents.
        plan = {agent: [MODELS[i % 3], MODELS[(i + 1) % 3]] for i, agent in enumerate(AGENTS)}
        seen: list[tuple[str, str]] = []
        errors: list[BaseException] = []

        def version_of(name: str) -> int:
            status, body, _ = http(
                "GET", f"{server.url}/v1/petals/model/versions?modelType={name}", token=ADMIN_TOKEN
            )
            assert status == 200, body
            return body["currentVersion"]

        def agent_loop(agent: str) -> None:
            rng = random.Random(agent)
            try:
                deadline = time.monotonic() + 400
                while time.monotonic() < deadline:
                    pending = [m for m in plan[agent] if version_of(m) < ROUNDS]
                    if not pending:
                        return
                    name = rng.choice(pending)
                    status, body, _ = http("POST", f"{server.url}/v1/petals/train",
                                           linear_job(name, rng.randrange(1 << 30)), token=tokens[agent])  # fmt: skip
                    assert status == 202, body
                    seen.append((agent, body["cycleId"]))
                    end = wait_cycle(
                        server, tokens[agent], body["cycleId"], ("aggregated", "failed"), timeout=120
                    )
                    ended = end["status"] if end["status"] == "aggregated" else end["error"]["reason"]
                    assert ended in ("aggregated", "stale_base", "round_expired"), end
                raise AssertionError(f"{agent}: its models did not reach version {ROUNDS} in time")
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=agent_loop, args=(a,)) for a in AGENTS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(450)
        assert not errors, errors
        elapsed = time.monotonic() - started
        # Every round closed: each model reached its version in order, each version committed once.
        for name in MODELS:
            assert version_of(name) >= ROUNDS
            entries = history(server, name)
            committed = [e["body"]["version"] for e in entries if e["kind"] == "model_committed"]
            assert committed == list(range(1, len(committed) + 1))
            proposals = [e for e in entries if e["kind"] == "round_proposal"]
            assert all(len(p["body"]["participants"]) >= 2 for p in proposals)
        # Every cycle reached an end; none is in two rounds.
        members: list[str] = []
        for name in MODELS:
            for entry in history(server, name):
                if entry["kind"] == "round_proposal":
                    members += entry["body"]["cycles"]
        assert len(members) == len(set(members))
        for agent, cycle_id in seen:
            end = wait_cycle(server, tokens[agent], cycle_id, ("aggregated", "failed"), timeout=5)
            assert (end["status"] == "aggregated") == (cycle_id in members)
        # Every slot is free, nothing queued or running, and the audit chain verifies.
        deadline = time.monotonic() + 10
        while True:
            status, admin, _ = http("GET", f"{server.url}/v1/admin/status", token=ADMIN_TOKEN)
            assert status == 200, admin
            if admin["cycles"]["slotsInUse"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        cycles = admin["cycles"]
        assert cycles["slotsInUse"] == 0 and cycles["queued"] == 0 and cycles["running"] == 0, cycles
        assert cycles["byStatus"].get("completed", 0) == 0  # none left waiting on a round
        status, verify, _ = http("GET", f"{server.url}/v1/audit/verify", token=ADMIN_TOKEN)
        assert status == 200 and verify["ok"] is True, verify
        print(f"liveness: {len(seen)} cycles, {len(members)} aggregated, {elapsed:.1f}s")
