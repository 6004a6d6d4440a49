"""Robust and private federation through the real service: per-model aggregation, server
optimizer and screening in the round policy (checked at POST, shown in GET models); digits
over five agents with non-IID shards where one agent attacks: FedAvg with screening keeps
learning under a x1000 feature scaling (the attacker's updates excluded with their figures in
its cycle status, the telemetry, the history and its standing, then its jobs refused after N in a
row until the admin reinstates it), the median keeps learning under flipped labels; and a DP
model whose versions carry the epsilon spent, refused with a 409 once its budget is spent.
The whole method x attack table is `make bench` (bench/robust.py)."""

from __future__ import annotations

import pytest

from bench import robust
from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, register_agent, wait_until
from tests.test_ctl import as_json, ctl, ok


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    state = tmp_path_factory.mktemp("robust")
    env = clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_MAX_CONCURRENT_CYCLES="5")
    with ServerProcess(state / "state", env=env) as server:
        server.tokens = [register_agent(server, f"fed{k}") for k in range(robust.AGENTS)]
        server.data = robust.digits()
        yield server


def define(server, name: str, policy: dict) -> dict:
    return robust.define(server.url, ADMIN_TOKEN, name, policy)


def history(server, model: str) -> list[dict]:
    status, body, _ = http("GET", f"{server.url}/v1/consensus/history?modelType={model}&limit=1000",
                           token=ADMIN_TOKEN)  # fmt: skip
    assert status == 200, body
    return list(reversed(body["entries"]))


@pytest.mark.parametrize(
    "policy,fragment",
    [
        ({"aggregation": {"method": "krum_plus"}}, "aggregation.method"),
        ({"aggregation": {"method": "krum", "f": 2}, "minClients": 5}, "2f+3 = 7"),
        ({"aggregation": {"method": "median", "beta": 0.2}}, "beta applies to trimmed_mean"),
        ({"aggregation": {"method": "trimmed_mean", "beta": 0.7}}, "beta"),
        ({"serverOptimizer": {"name": "sgd"}}, "serverOptimizer.name"),
        ({"serverOptimizer": {"name": "plain", "momentum": 0.9}}, "serverOptimizer.momentum"),
        ({"screening": {"normRatio": 0.5}}, "screening.normRatio"),
        ({"maxConsecutiveExclusions": 0}, "maxConsecutiveExclusions"),
        ({"privacy": {"targetEpsilon": 8, "plannedRounds": 10}}, "privacy"),
        ({"privacy": {"targetEpsilon": 8, "plannedRounds": 10, "clipNorm": 1}, "aggregation": {"method": "median"}},
         "privacy needs roundPolicy.aggregation.method fedavg"),
    ],
)  # fmt: skip
def test_bad_robust_policies_are_400s_naming_the_field(service, policy, fragment):
    body = {
        "modelType": "softmax:bad",
        "modelConfig": {"inputDim": 4, "numClasses": 3},
        "roundPolicy": policy,
    }
    status, answer, _ = http("POST", f"{service.url}/v1/petals/models", body, token=ADMIN_TOKEN)
    assert status == 400, answer
    assert fragment in answer["error"]["message"]
    status, listed, _ = http("GET", f"{service.url}/v1/petals/models", token=ADMIN_TOKEN)
    assert "softmax:bad" not in [m["modelType"] for m in listed["models"]]  # nothing half written


def test_the_policy_in_force_shows_method_optimizer_screening_and_privacy(service):
    policy = {"aggregation": {"method": "trimmed_mean", "beta": 0.2, "biasMethod": "fedavg"},
              "serverOptimizer": {"name": "fedadam", "learningRate": 0.05}, "screening": {"minCosine": 0.1}}  # fmt: skip
    define(service, "softmax:shown", policy)
    status, listed, _ = http("GET", f"{service.url}/v1/petals/models", token=service.tokens[0])
    shown = next(m for m in listed["models"] if m["modelType"] == "softmax:shown")["roundPolicy"]
    assert shown["aggregation"] == {
        "method": "trimmed_mean",
        "biasMethod": "fedavg",
        "beta": 0.2,
        "f": None,
        "m": None,
    }
    assert shown["serverOptimizer"] == {"name": "fedadam", "learningRate": 0.05, "beta1": 0.9, "beta2": 0.99,
                                        "tau": 1e-9}  # fmt: skip
    assert shown["screening"]["minCosine"] == 0.1 and shown["screening"]["enabled"] is True
    assert shown["privacy"] is None and shown["maxConsecutiveExclusions"] is None


def test_fedavg_with_screening_learns_under_scaling_and_the_attacker_is_excluded_then_refused(service):
    model = "softmax:scaled"
    define(service, model, robust.policy({"method": "fedavg"}, True, maxConsecutiveExclusions=3))
    result = robust.federate(
        service.url, ADMIN_TOKEN, service.tokens, model, service.data, "scale_x1000", rounds=6
    )
    # The attacker was excluded three rounds running, then its fourth job was refused.
    assert result["rounds"] == 3 and result["excluded"] == 3 and result["committed"] == 3, result
    assert result["refused"]["error"]["code"] == "forbidden"
    assert "suspended from model 'softmax:scaled'" in result["refused"]["error"]["message"]
    entries = history(service, model)
    excluded = [e for e in entries if e["kind"] == "update_excluded"]
    assert len(excluded) == 3 and {e["agentId"] for e in excluded} == {"fed0"}
    figures = excluded[0]["body"]
    assert figures["reason"] == "norm_above_median" and figures["norm"] > 10 * figures["medianNorm"]
    # The attacker's cycle status carries its figures; an honest cycle's says it was kept.
    status, cycle, _ = http(
        "GET", f"{service.url}/v1/petals/status/{figures['cycleId']}", token=service.tokens[0]
    )
    assert cycle["result"]["round"]["outcome"] == "excluded"
    assert cycle["result"]["screening"]["excluded"] is True
    assert cycle["result"]["screening"]["cosine"] is not None
    suspended = next(e for e in entries if e["kind"] == "agent_suspended")
    assert suspended["agentId"] == "fed0" and suspended["body"]["consecutiveExclusions"] == 3
    url = f"{service.url}/v1/telemetry/training?event=training_update_excluded&agentId=fed0"
    events = wait_until(
        lambda: (lambda e: len(e) >= 3 and e)(http("GET", url, token=ADMIN_TOKEN)[1]["events"])
    )
    assert "norm_above_median" in events[0]["error"]
    status, agents, _ = http("GET", f"{service.url}/v1/agents", token=ADMIN_TOKEN)
    standing = next(a for a in agents["agents"] if a["agentId"] == "fed0")["standing"]
    assert standing["exclusions"] >= 3 and standing["consecutiveExclusions"] >= 3
    assert model in standing["suspendedModels"] and standing["lastNorm"] > 100
    honest = next(a for a in agents["agents"] if a["agentId"] == "fed1")["standing"]
    assert honest["exclusions"] == 0 and honest["updates"] >= 3
    # `wondercraft-ctl agents ls` shows the standing; the admin reinstates it with the tool.
    listing = ok(ctl(service, "agents", "ls"))
    row = next(line.split() for line in listing.splitlines() if line.split()[:1] == ["fed0"])
    assert row[-4] == f"{standing['exclusions']}/{standing['updates']}" and row[-1] == model
    assert float(row[-2]) > 100
    body = as_json(ctl(service, "agents", "reinstate", "fed0", "--model", model, "--json"))
    assert body["reinstated"] == [model], body
    assert any(e["kind"] == "agent_reinstated" and e["agentId"] == "fed0" for e in history(service, model))
    # The honest agents alone carry on; every round commits, and the model learns.
    rest = robust.federate(
        service.url, ADMIN_TOKEN, service.tokens[1:], model, shift(service.data), "none", rounds=3
    )
    assert rest["committed"] == 3 and rest["rejected"] == 0, rest
    assert rest["accuracy"] >= 0.90, rest


def shift(data: robust.Digits) -> robust.Digits:
    """The same digits with agent k+1's shard given to the k-th token (agent 0 is left out)."""
    return robust.Digits(data.train_x, data.train_y, data.test_x, data.test_y, data.shards[1:])


def test_the_median_learns_under_flipped_labels(service):
    model = "softmax:flipped"
    define(service, model, robust.policy({"method": "median"}, False))
    result = robust.federate(
        service.url, ADMIN_TOKEN, service.tokens, model, service.data, "label_flip", rounds=8
    )
    assert result["committed"] == 8 and result["rejected"] == 0, result
    assert result["accuracy"] >= 0.90, result


def test_a_private_model_carries_its_epsilon_and_refuses_training_once_spent(service):
    model = "softmax:private"
    budget = {"targetEpsilon": 8.0, "delta": 1e-5, "plannedRounds": 2, "clipNorm": 2.0}
    created = define(service, model, {**robust.policy({"method": "fedavg"}, True), "privacy": budget})
    assert created["roundPolicy"]["privacy"]["noiseMultiplier"] > 0
    result = robust.federate(service.url, ADMIN_TOKEN, service.tokens, model, service.data, "none", rounds=3)
    assert result["rounds"] == 2 and result["committed"] == 2, result
    assert result["refused"]["error"]["code"] == "conflict"
    assert "privacy budget" in result["refused"]["error"]["message"]
    status, versions, _ = http(
        "GET", f"{service.url}/v1/petals/model/shared?modelType={model}", token=service.tokens[0]
    )
    spent = versions["metadata"]["privacy"]
    assert spent["roundsSpent"] == 2 and 0 < spent["epsilonSpent"] <= 8.0
    assert "seed" not in versions["metadata"]["aggregation"]["options"]  # the noise cannot be undone
    status, first, _ = http("GET", f"{service.url}/v1/petals/model/shared?modelType={model}&version=1",
                            token=service.tokens[0])  # fmt: skip
    assert 0 < first["metadata"]["privacy"]["epsilonSpent"] < spent["epsilonSpent"]
