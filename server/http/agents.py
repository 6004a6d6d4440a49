"""Agent registration (admin only): register an agent and hand out its token once, list, revoke."""

from __future__ import annotations

from aiohttp import web

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
    return json_reply({"agents": [record.to_json() for record in call.services.agents.list()]})


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
