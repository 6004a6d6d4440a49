"""Bearer-token auth over real HTTP: the admin token does everything, an agent's token acts only
as that agent, tokens are stored hashed, and every operation in the document applies the rules."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3

import pytest

from tests.helpers import ADMIN_TOKEN, EventStream, api_server, http, register_agent

UNIQUE = itertools.count()
MATRIX_JOB = {
    "modelType": "linear:matrix",
    "dataBatch": [{"x": [1.0, 2.0], "y": 3.0}, {"x": [0.5, 1.0], "y": 1.5}],
    "trainingParams": {"epochs": 1},
    "resourceCaps": {"cpu": 0.5, "memory": 256},
}

# One valid request per operation, about agent-a's records where it names an agent, so the
# matrix below checks auth and not validation. A new operation without a sample here fails
# test_every_operation_has_an_auth_sample.
SAMPLES = {
    "healthz": ("GET", "/healthz", None),
    "openapi_document": ("GET", "/v1/openapi.json", None),
    "metrics": ("GET", "/metrics", None),
    "register_agent": ("POST", "/v1/agents", {"agentId": "matrix-new"}),
    "update_agent": ("PATCH", "/v1/agents/matrix-victim", {"modelAuthor": False}),
    "list_agents": ("GET", "/v1/agents", None),
    "revoke_agent": ("DELETE", "/v1/agents/matrix-victim", None),
    "reinstate_agent": ("POST", "/v1/agents/matrix-victim/reinstate", {}),
    "telemetry_events": ("GET", "/v1/telemetry/training?agentId=agent-a", None),
    "record_telemetry": (
        "POST",
        "/v1/telemetry/training",
        {"events": [{"event": "training_cycle_completed", "agentId": "agent-a"}]},
    ),
    "telemetry_stream": ("GET", "/v1/telemetry/training/stream?agentId=agent-a", None),
    "consensus_history": ("GET", "/v1/consensus/history", None),
    "chat_history": ("GET", "/v1/chat/history", None),
    "verify_audit": ("GET", "/v1/audit/verify", None),
    "create_sandbox": (
        "POST",
        "/v1/sandbox/create",
        {"agentId": "agent-a", "resourceCaps": {"cpu": 0.5, "memory": 128}},
    ),
    "execute_in_sandbox": ("POST", "/v1/sandbox/execute", {"sandboxId": "{sandbox}", "command": ["true"]}),
    "destroy_sandbox": ("DELETE", "/v1/sandbox/{sandbox}", None),
    "end_execution": ("DELETE", "/v1/sandbox/{sandbox}/executions/{execution}", None),
    "sandbox_status": ("GET", "/v1/sandbox/status/{sandbox}", None),
    "list_sandboxes": ("GET", "/v1/sandbox", None),
    "create_model": (
        "POST",
        "/v1/petals/models",
        {"modelType": "linear:made-{n}", "modelConfig": {"inputDim": 2}},
    ),
    "list_models": ("GET", "/v1/petals/models", None),
    "delete_model": ("DELETE", "/v1/petals/models/linear:spare-{n}", None),
    "train": ("POST", "/v1/petals/train", {"agentId": "agent-a", **MATRIX_JOB}),
    "cycle_status": ("GET", "/v1/petals/status/{cycle}", None),
    "shared_model": ("GET", "/v1/petals/model/shared?modelType=linear:matrix", None),
    "model_versions": ("GET", "/v1/petals/model/versions?modelType=linear:matrix", None),
    "model_evaluation": ("GET", "/v1/petals/model/shared/evaluation?modelType=linear:matrix", None),
    "predict": (
        "POST",
        "/v1/petals/model/shared/predict",
        {"modelType": "linear:matrix", "inputs": [[1.0, 2.0]]},
    ),
    "register_validation": (
        "POST",
        "/v1/petals/validation",
        {"modelType": "linear:matrix", "dataBatch": [{"x": [1.0, 2.0], "y": 3.0}]},
    ),
    "rollback": ("POST", "/v1/petals/model/shared/rollback", {"modelType": "linear:matrix", "version": 0}),
    "upload_dataset": ("POST", "/v1/datasets?name=matrix&agentId=agent-a", "{npz}"),
    "list_datasets": ("GET", "/v1/datasets", None),
    "show_dataset": ("GET", "/v1/datasets/{dataset}", None),
    "delete_dataset": ("DELETE", "/v1/datasets/{dataset}", None),
    "admin_status": ("GET", "/v1/admin/status", None),
    "admin_cycles": ("GET", "/v1/admin/cycles?agentId=agent-a", None),
    "admin_stats": ("GET", "/v1/admin/stats", None),
    "admin_cleanup": ("POST", "/v1/admin/cleanup", None),
    "admin_nodes": ("GET", "/v1/admin/nodes", None),
    "audit_sandbox": ("GET", "/v1/admin/audit/sandbox/{sandbox}", None),
    "audit_host": ("GET", "/v1/admin/audit/host", None),
}
# Another agent's sandbox or cycle answers 404 exactly like a missing one.
OWNED = {
    "execute_in_sandbox",
    "destroy_sandbox",
    "end_execution",
    "sandbox_status",
    "cycle_status",
    "show_dataset",
    "delete_dataset",
}
# Shared models are readable by every agent.
SHARED = {"shared_model", "model_versions", "predict", "list_models", "model_evaluation"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(tmp_path_factory.mktemp("auth") / "state", PETALS_AUTO_CREATE_MODELS="1") as server:
        server.tokens = {name: register_agent(server, name) for name in ("agent-a", "agent-b", "revoked-c")}
        status, _, _ = http("DELETE", server.url + "/v1/agents/revoked-c", token=ADMIN_TOKEN)
        assert status == 200
        # agent-a may define models; agent-b may not.
        status, _, _ = http(
            "PATCH", server.url + "/v1/agents/agent-a", {"modelAuthor": True}, token=ADMIN_TOKEN
        )
        assert status == 200
        server.sandbox_id = _agent_a_sandbox(server)
        status, body, _ = http(
            "POST", server.url + "/v1/petals/train", MATRIX_JOB, token=server.tokens["agent-a"]
        )
        assert status == 202, body
        server.cycle_id = body["cycleId"]
        # A hold-out set, so the model's evaluation answers.
        holdout = {"modelType": "linear:matrix", "dataBatch": [{"x": [1.0, 2.0], "y": 3.0}]}
        assert http("POST", server.url + "/v1/petals/validation", holdout, token=ADMIN_TOKEN)[0] == 201
        server.dataset_id = _agent_a_dataset(server)
        yield server


def _dataset_bytes() -> bytes:
    """A small .npz, different each time (the same bytes twice would be the same dataset)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, x=np.full((2, 2), next(UNIQUE), np.float32), y=np.zeros(2, np.int64))
    return buffer.getvalue()


def _agent_a_dataset(server) -> str:
    status, body, _ = http(
        "POST", server.url + "/v1/datasets?name=matrix", _dataset_bytes(), token=server.tokens["agent-a"],
        headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert status == 201, body
    return body["datasetId"]


def _agent_a_sandbox(server) -> str:
    status, body, _ = http(
        "POST", server.url + "/v1/sandbox/create", {"resourceCaps": {"cpu": 0.5, "memory": 128}},
        token=server.tokens["agent-a"],
    )  # fmt: skip
    assert status == 201, body
    return body["sandboxId"]


@pytest.fixture(scope="module")
def operations(server):
    status, document, _ = http("GET", server.url + "/v1/openapi.json")
    assert status == 200
    found = {}
    for path, item in document["paths"].items():
        for method, op in item.items():
            found[op["operationId"]] = (method.upper(), path, op)
    return found


def _call(server, operation_id: str, token: str | None):
    method, path, body = SAMPLES[operation_id]
    # Destroying uses up a sandbox: each call gets a fresh one of agent-a's.
    sandbox_id = _agent_a_sandbox(server) if operation_id == "destroy_sandbox" else server.sandbox_id
    # Deleting uses up a dataset too.
    dataset_id = _agent_a_dataset(server) if operation_id == "delete_dataset" else server.dataset_id
    path = (
        path.replace("{sandbox}", sandbox_id)
        .replace("{cycle}", server.cycle_id)
        .replace("{dataset}", dataset_id)
    )
    if operation_id == "upload_dataset":
        octets = {"Content-Type": "application/octet-stream"}
        return http(method, server.url + path, _dataset_bytes(), token=token, headers=octets)
    if "{execution}" in path:
        # Ending uses up a background execution: each call gets a fresh one of agent-a's.
        started = {"sandboxId": sandbox_id, "command": ["sleep", "60"], "detach": True}
        status, body, _ = http(
            "POST", server.url + "/v1/sandbox/execute", started, token=server.tokens["agent-a"]
        )
        assert status == 202, body
        path = path.replace("{execution}", body["executionId"])
    if body is not None:
        body = {k: (sandbox_id if v == "{sandbox}" else v) for k, v in body.items()}
    if operation_id == "telemetry_stream":
        stream = EventStream(server.url + path, token=token)
        stream.close()
        return stream.status, getattr(stream, "body", None), stream.headers
    # The admin's calls really register and revoke: give each a fresh agent.
    if operation_id in ("revoke_agent", "update_agent", "reinstate_agent") and token == ADMIN_TOKEN:
        victim = f"victim-{next(UNIQUE)}"
        register_agent(server, victim)
        path = path.replace("matrix-victim", victim)
    if "{n}" in path or "{n}" in str(body):
        unique = str(next(UNIQUE))
        path = path.replace("{n}", unique)
        body = {
            k: (v.replace("{n}", unique) if isinstance(v, str) else v) for k, v in (body or {}).items()
        } or None
    if operation_id == "delete_model" and token == ADMIN_TOKEN:
        spare = {"modelType": path.rsplit("/", 1)[1], "modelConfig": {"inputDim": 2}}
        assert http("POST", server.url + "/v1/petals/models", spare, token=ADMIN_TOKEN)[0] == 201
    if operation_id == "register_agent" and token == ADMIN_TOKEN:
        body = {"agentId": f"new-{next(UNIQUE)}"}
    return http(method, server.url + path, body, token=token)


def test_every_operation_has_an_auth_sample(operations):
    assert set(operations) == set(SAMPLES)
    for operation_id, (method, path, _) in SAMPLES.items():
        documented = (
            path.split("?")[0]
            .replace("matrix-victim", "{agentId}")
            .replace("linear:spare-{n}", "{modelType}")
            .replace("{sandbox}", "{sandboxId}")
            .replace("{cycle}", "{cycleId}")
            .replace("{dataset}", "{datasetId}")
            .replace("{execution}", "{executionId}")
        )
        assert operations[operation_id][:2] == (method, documented), operation_id


def _access(op: dict) -> str:
    assert (op["security"] == []) == (op["x-access"] == "open")
    return op["x-access"]


def test_open_operations_are_exactly_health_and_the_document(operations):
    opened = {name for name, (_, _, op) in operations.items() if _access(op) == "open"}
    assert opened == {"healthz", "openapi_document"}
    admin_only = {name for name, (_, _, op) in operations.items() if _access(op) == "admin"}
    assert admin_only == {
        "metrics",
        "register_agent",
        "update_agent",
        "list_agents",
        "delete_model",
        "revoke_agent",
        "record_telemetry",
        "verify_audit",
        "register_validation",
        "rollback",
        "admin_status",
        "admin_cycles",
        "admin_stats",
        "admin_cleanup",
        "admin_nodes",
        "reinstate_agent",
        "audit_sandbox",
        "audit_host",
    }


@pytest.mark.parametrize("operation_id", sorted(SAMPLES))
def test_auth_matrix_for_every_operation(server, operations, operation_id):
    access = _access(operations[operation_id][2])
    answers = {
        "none": _call(server, operation_id, None),
        "garbage": _call(server, operation_id, "not-a-real-token-at-all"),
        "revoked": _call(server, operation_id, server.tokens["revoked-c"]),
        "own agent": _call(server, operation_id, server.tokens["agent-a"]),
        "other agent": _call(server, operation_id, server.tokens["agent-b"]),
        "admin": _call(server, operation_id, ADMIN_TOKEN),
    }
    assert answers["admin"][0] < 300, answers["admin"]
    if access == "open":
        assert all(status < 300 for status, _, _ in answers.values()), answers
        return
    for who in ("none", "garbage", "revoked"):
        status, body, headers = answers[who]
        assert status == 401, (who, answers[who])
        assert body["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer")
    if access == "admin":
        for who in ("own agent", "other agent"):
            status, body, _ = answers[who]
            assert status == 403, (who, answers[who])
            assert "admin token" in body["error"]["message"]
        return
    assert answers["own agent"][0] < 300, answers["own agent"]
    status, body, _ = answers["other agent"]
    if operation_id == "create_model":
        # Only an agent the admin made a model author may define models.
        assert status == 403 and "model author" in body["error"]["message"], answers["other agent"]
    elif operation_id in OWNED:
        assert status == 404, answers["other agent"]
        assert body["error"]["code"] == "not_found"
    elif operation_id in SHARED:
        assert status == 200 and "agent-a" not in str(body), answers["other agent"]
    elif "agent-a" in str(SAMPLES[operation_id][2] or "") and SAMPLES[operation_id][0] == "POST":
        # Acting as another agent in a body is refused outright.
        assert status == 403, answers["other agent"]
    elif "agentId=agent-a" in SAMPLES[operation_id][1]:
        # Naming another agent's records is refused outright.
        assert status == 403, answers["other agent"]
    else:
        # Lists answer, but without the other agent's records.
        assert status == 200 and "agent-a" not in str(body), answers["other agent"]
        assert "agent-a" in str(answers["own agent"][1])


@pytest.mark.parametrize(
    "header",
    ["Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer ", "bearer", ADMIN_TOKEN, "Token " + ADMIN_TOKEN],
)
def test_malformed_authorization_headers_are_401(server, header):
    status, body, _ = http("GET", server.url + "/v1/agents", headers={"Authorization": header})
    assert status == 401
    assert body["error"]["code"] == "unauthorized"


def test_scheme_is_case_insensitive(server):
    status, _, _ = http("GET", server.url + "/v1/agents", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    assert status == 200


def test_registering_returns_the_token_once_and_listing_never_shows_it(server):
    status, body, _ = http("POST", server.url + "/v1/agents", {"agentId": "lister"}, token=ADMIN_TOKEN)
    assert status == 201
    assert set(body) == {"agentId", "token", "active", "createdAt", "revokedAt", "modelAuthor"}
    assert body["agentId"] == "lister" and body["active"] is True and body["revokedAt"] is None
    token = body["token"]
    status, listing, _ = http("GET", server.url + "/v1/agents", token=ADMIN_TOKEN)
    assert status == 200
    entry = next(a for a in listing["agents"] if a["agentId"] == "lister")
    assert set(entry) == {"agentId", "active", "createdAt", "revokedAt", "modelAuthor", "standing"}
    assert token not in str(listing)
    # The token works for reads as that agent.
    status, _, _ = http("GET", server.url + "/v1/telemetry/training", token=token)
    assert status == 200


def test_tokens_are_stored_only_as_sha256_hashes(server):
    token = register_agent(server, "hashed")
    with sqlite3.connect(server.state_dir / "wondercraft.db") as conn:
        rows = conn.execute("SELECT agent_id, token_sha256 FROM agents").fetchall()
    conn.close()
    stored = dict(rows)["hashed"]
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    assert all(token not in value for _, value in rows)


def test_duplicate_agent_is_409_and_revoked_ids_are_never_reused(server):
    status, body, _ = http("POST", server.url + "/v1/agents", {"agentId": "agent-a"}, token=ADMIN_TOKEN)
    assert status == 409
    assert "agent-a" in body["error"]["message"]
    status, body, _ = http("POST", server.url + "/v1/agents", {"agentId": "revoked-c"}, token=ADMIN_TOKEN)
    assert status == 409


def test_revoking_stops_the_token_at_once_and_is_idempotent(server):
    token = register_agent(server, "short-lived")
    assert http("GET", server.url + "/v1/telemetry/training", token=token)[0] == 200
    status, body, _ = http("DELETE", server.url + "/v1/agents/short-lived", token=ADMIN_TOKEN)
    assert status == 200
    assert body["active"] is False and isinstance(body["revokedAt"], int)
    assert http("GET", server.url + "/v1/telemetry/training", token=token)[0] == 401
    again = http("DELETE", server.url + "/v1/agents/short-lived", token=ADMIN_TOKEN)
    assert again[0] == 200 and again[1]["revokedAt"] == body["revokedAt"]


def test_revoking_an_unknown_agent_is_404(server):
    status, body, _ = http("DELETE", server.url + "/v1/agents/nobody-here", token=ADMIN_TOKEN)
    assert status == 404
    assert "nobody-here" in body["error"]["message"]


def test_an_agent_cannot_manage_agents_even_itself(server):
    token = server.tokens["agent-b"]
    assert http("DELETE", server.url + "/v1/agents/agent-b", token=token)[0] == 403
    assert http("POST", server.url + "/v1/agents", {"agentId": "agent-b2"}, token=token)[0] == 403
    assert http("GET", server.url + "/v1/agents", token=token)[0] == 403


def test_agent_tokens_and_revocations_survive_a_restart(tmp_path):
    state = tmp_path / "state"
    with api_server(state) as server:
        keep = register_agent(server, "keeper")
        gone = register_agent(server, "goner")
        http("DELETE", server.url + "/v1/agents/goner", token=ADMIN_TOKEN)
    with api_server(state) as server:
        assert http("GET", server.url + "/v1/telemetry/training", token=keep)[0] == 200
        assert http("GET", server.url + "/v1/telemetry/training", token=gone)[0] == 401


def test_admin_token_from_the_state_file_is_accepted(tmp_path):
    from tests.helpers import ServerProcess

    state = tmp_path / "state"
    with ServerProcess(state) as server:
        token = (state / "admin.token").read_text().strip()
        assert http("GET", server.url + "/v1/agents", token=token)[0] == 200
        assert http("GET", server.url + "/v1/agents", token=token + "x")[0] == 401


# ---- the ownership helpers later handlers use (in-process) ----


def test_act_as_lets_an_agent_act_only_as_itself():
    from server.auth import ADMIN, Caller, act_as
    from server.errors import BadRequest, Forbidden

    agent = Caller("agent-a")
    assert act_as(agent, "agent-a") == "agent-a"
    assert act_as(agent, None) == "agent-a"
    with pytest.raises(Forbidden, match="'agent-b' is not the agent this token belongs to"):
        act_as(agent, "agent-b")
    assert act_as(ADMIN, "agent-b") == "agent-b"
    with pytest.raises(BadRequest, match="agentId is required"):
        act_as(ADMIN, None)


def test_other_agents_resources_look_missing():
    from server.auth import ADMIN, Caller, ensure_visible
    from server.errors import NotFound

    ensure_visible(ADMIN, "agent-b", "sandbox", "sb-1")
    ensure_visible(Caller("agent-b"), "agent-b", "sandbox", "sb-1")
    ensure_visible(Caller("agent-b"), None, "round", "r-1")
    with pytest.raises(NotFound, match="^sandbox sb-1 not found$"):
        ensure_visible(Caller("agent-a"), "agent-b", "sandbox", "sb-1")


def test_agent_filter_scopes_lists_to_the_caller():
    from server.auth import ADMIN, Caller, agent_filter
    from server.errors import Forbidden

    assert agent_filter(ADMIN, None) is None
    assert agent_filter(ADMIN, "agent-b") == "agent-b"
    assert agent_filter(Caller("agent-a"), None) == "agent-a"
    with pytest.raises(Forbidden):
        agent_filter(Caller("agent-a"), "agent-b")
