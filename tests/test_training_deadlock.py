"""Regression: a round that closes while another cycle of the same base completes must not
wedge its model. The service's test hook holds the closing round until a second cycle of
that base has completed, so the interleaving happens on every run, not by chance."""

from __future__ import annotations

import json

from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, register_agent, wait_cycle

TERMINAL = ("completed", "failed", "aggregated")


def job(seed: int) -> dict:
    xs = [[0.1 * i, 1.0 - 0.1 * i] for i in range(8)]
    return {
        "modelType": "linear:hold",
        "dataBatch": [{"x": x, "y": x[0] * 2.0 - x[1]} for x in xs],
        "trainingParams": {"epochs": 2, "batchSize": 4, "learningRate": 0.05},
        "resourceCaps": {"cpu": 1, "memory": 256},
        "seed": seed,
    }


def test_round_closing_while_another_cycle_completes_does_not_wedge_the_model(tmp_path):
    config = tmp_path / "scaling.json"
    # One of two enrolled cycles is enough to close a round: the second completes while the
    # first one's round is closing (held there by the hook until it has).
    config.write_text(json.dumps({"aggregationThreshold": 0.5, "minClients": 1, "autoCreateModels": True}))
    env = clean_env(
        WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN,
        PETALS_MAX_CONCURRENT_CYCLES="2",
        WONDERCRAFT_TEST_HOLD_ROUND_CLOSE="60",
    )
    with ServerProcess(tmp_path / "state", env=env, args=["--config", str(config)]) as server:
        tokens = {agent: register_agent(server, agent) for agent in ("hold-a", "hold-b")}
        submitted = {}
        for seed, agent in enumerate(tokens):
            status, body, _ = http("POST", f"{server.url}/v1/petals/train", job(seed), token=tokens[agent])
            assert status == 202, body
            submitted[agent] = body["cycleId"]
        # Both reach an end: one is aggregated into version 1, the other was computed from
        # base 0 after its round closed and is rejected as stale (or joined the round).
        ends = {
            agent: wait_cycle(server, tokens[agent], cid, ("failed", "aggregated"))
            for agent, cid in submitted.items()
        }
        outcomes = sorted((e["status"], (e.get("error") or {}).get("reason")) for e in ends.values())
        assert outcomes in ([("aggregated", None), ("failed", "stale_base")], [("aggregated", None)] * 2), (
            outcomes
        )
        # The model still closes rounds: the next job makes version 2.
        status, body, _ = http("POST", f"{server.url}/v1/petals/train", job(7), token=tokens["hold-a"])
        assert status == 202, body
        assert body["baseVersion"] == 1
        later = wait_cycle(server, tokens["hold-a"], body["cycleId"], ("failed", "aggregated"))
        assert later["status"] == "aggregated" and later["resultVersion"] == 2, later
        status, admin, _ = http("GET", f"{server.url}/v1/admin/status", token=ADMIN_TOKEN)
        assert status == 200, admin
