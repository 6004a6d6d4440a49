"""A learn cycle the admission budget cannot take now waits in the queue, holding no slot and
using up no attempt, and runs once the budget has room; one that no budget could ever hold
fails at once with reason over_budget."""

from __future__ import annotations

import time

from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, register_agent, wait_cycle

MODEL = {"modelType": "linear:budget", "modelConfig": {"inputDim": 2}, "roundPolicy": {"minClients": 1}}


def job(**caps) -> dict:
    xs = [[0.1 * i, 1.0 - 0.1 * i] for i in range(6)]
    return {"modelType": "linear:budget", "dataBatch": [{"x": x, "y": x[0] - x[1]} for x in xs],
            "trainingParams": {"epochs": 1, "batchSize": 3}, "resourceCaps": {"cpu": 0.5, "memory": 128, **caps},
            "seed": 1}  # fmt: skip


def test_a_cycle_over_the_agents_quota_waits_in_the_queue_then_runs(tmp_path):
    env = clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, SANDBOX_AGENT_MAX_SANDBOXES="1")
    with ServerProcess(tmp_path / "state", env=env) as server:
        token = register_agent(server, "budget-a")
        status, body, _ = http("POST", f"{server.url}/v1/petals/models", MODEL, token=ADMIN_TOKEN)
        assert status == 201, body
        status, box, _ = http(
            "POST",
            f"{server.url}/v1/sandbox/create",
            {"resourceCaps": {"cpu": 0.5, "memory": 64}},
            token=token,
        )
        assert status == 201, box
        status, body, _ = http("POST", f"{server.url}/v1/petals/train", job(), token=token)
        assert status == 202, body
        cycle_id = body["cycleId"]
        # The agent's one sandbox is taken: the cycle waits, queued, naming the budget.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, cycle, _ = http("GET", f"{server.url}/v1/petals/status/{cycle_id}", token=token)
            if (cycle.get("error") or {}).get("reason") == "over_budget":
                break
            time.sleep(0.05)
        assert cycle["status"] == "queued" and cycle["attempts"] == 0, cycle
        assert "budget" in cycle["error"]["message"]
        _, admin, _ = http("GET", f"{server.url}/v1/admin/status", token=ADMIN_TOKEN)
        assert admin["cycles"]["slotsInUse"] == 0, admin["cycles"]
        status, _, _ = http("DELETE", f"{server.url}/v1/sandbox/{box['sandboxId']}", token=token)
        assert status == 200
        done = wait_cycle(server, token, cycle_id, statuses=("aggregated", "failed"))
        assert done["status"] == "aggregated" and done["attempts"] == 1, done


def test_a_cycle_no_budget_could_hold_fails_as_over_budget(tmp_path):
    env = clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, SANDBOX_AGENT_MAX_MEMORY="100")
    with ServerProcess(tmp_path / "state", env=env) as server:
        token = register_agent(server, "budget-b")
        status, body, _ = http("POST", f"{server.url}/v1/petals/models", MODEL, token=ADMIN_TOKEN)
        assert status == 201, body
        status, body, _ = http("POST", f"{server.url}/v1/petals/train", job(memory=128), token=token)
        assert status == 202, body
        done = wait_cycle(server, token, body["cycleId"], statuses=("aggregated", "failed"))
        assert done["status"] == "failed" and done["error"]["reason"] == "over_budget", done
        assert done["attempts"] == 1
