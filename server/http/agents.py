"""Agent registration (admin only): register an agent and hand out its token once, list (with
each agent's standing in screening), revoke, reinstate after a screening suspension."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from ..errors import NotFound
from ..storage import agents as agent_rows
from .openapi import Call, Param, Reply, RouteTable, json_reply
from .schemas import AGENT_ID, ref

ROUTES = RouteTable("agents", "Agents and their bearer tokens (admin only)")


@ROUTES.operation(
    "POST",
    "/v1/agents",
    summary="Register an agent; its token is in this answer and nowhere else",
    access="admin",
    body=ref("AgentCreateRequest"),
    max_body_bytes=4096,
    replies=[Reply(201, "Registered", ref("AgentCreated"))],
    errors=[409],
)
async def register_agent(call: Call) -> web.Response:
    issued = await call.services.agents.register(call.body["agentId"], call.body.get("modelAuthor", False))
    return json_reply({**issued.agent.to_json(), "token": issued.token}, status=201)


@ROUTES.operation(
    "GET",
    "/v1/agents",
    summary="List agents (tokens are never shown again)",
    access="admin",
    replies=[Reply(200, "Every agent, revoked ones included", ref("AgentList"))],
)
async def list_agents(call: Call) -> web.Response:
    rows = await asyncio.to_thread(agent_rows.standing_rows, call.services.store)
    by_agent: dict[str, list] = {}
    for row in rows:
        by_agent.setdefault(row["agent_id"], []).append(row)
    return json_reply(
        {
            "agents": [
                {**record.to_json(), "standing": agent_rows.standing_json(by_agent.get(record.agent_id, []))}
                for record in call.services.agents.list()
            ]
        }
    )


@ROUTES.operation(
    "POST",
    "/v1/agents/{agentId}/reinstate",
    summary="Take an agent's jobs again after screening suspended it (one model, or every one)",
    access="admin",
    path_params=[Param("agentId", AGENT_ID)],
    body=ref("AgentReinstateRequest"),
    max_body_bytes=4096,
    replies=[Reply(200, "Reinstated; the models it was suspended from", ref("AgentReinstated"))],
    errors=[404],
)
async def reinstate_agent(call: Call) -> web.Response:
    agent_id, model = call.path["agentId"], call.body.get("modelType")
    if call.services.agents.get(agent_id) is None:
        raise NotFound(f"agent {agent_id} not found")
    audit = call.services.audit

    def lift() -> list[str]:
        with call.services.store.transaction() as conn:
            models = agent_rows.reinstate(conn, agent_id, model, time.time())
            for name in models:
                audit.record(conn, "agent_reinstated", name, {"decidedBy": "admin"}, agent_id=agent_id)
        return models

    models = await asyncio.to_thread(lift)
    return json_reply({"agentId": agent_id, "reinstated": models})


@ROUTES.operation(
    "PATCH",
    "/v1/agents/{agentId}",
    summary="Change what an agent may do: modelAuthor lets it define shared models",
    access="admin",
    path_params=[Param("agentId", AGENT_ID)],
    body=ref("AgentUpdateRequest"),
    max_body_bytes=4096,
    replies=[Reply(200, "Updated", ref("Agent"))],
    errors=[404],
)
async def update_agent(call: Call) -> web.Response:
    record = await call.services.agents.set_model_author(call.path["agentId"], call.body["modelAuthor"])
    return json_reply(record.to_json())


@ROUTES.operation(
    "DELETE",
    "/v1/agents/{agentId}",
    summary="Revoke an agent's token (its id is never reused)",
    access="admin",
    path_params=[Param("agentId", AGENT_ID)],
    replies=[Reply(200, "Revoked (revoking twice changes nothing)", ref("Agent"))],
)
async def revoke_agent(call: Call) -> web.Response:
    record = await call.services.agents.revoke(call.path["agentId"])
    return json_reply(record.to_json())
