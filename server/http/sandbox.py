"""The seed's sandbox endpoints: create, execute (argv, never a shell string), destroy,
status and list. An agent sees and acts on its own sandboxes only."""

from __future__ import annotations

from aiohttp import web

from ..auth import act_as, agent_filter, ensure_visible
from .openapi import Call, Param, Reply, RouteTable, json_reply
from .paging import CREATED_KEY, PAGE_QUERY, page_answer, page_of, page_request
from .schemas import AGENT_ID, ref

ROUTES = RouteTable(
    "sandbox", "Isolated sandboxes (namespaces, cgroups, overlay roots) and commands run in them"
)

SANDBOX_ID = Param("sandboxId", ref("SandboxId"), route_regex=r"sb-[^/]*")


def _visible(call: Call, sandbox_id: str) -> None:
    ensure_visible(
        call.caller, call.services.sandboxes.owner_of(sandbox_id) or "\0unknown", "sandbox", sandbox_id
    )


@ROUTES.operation(
    "POST",
    "/v1/sandbox/create",
    summary="Create an isolated sandbox",
    description=(
        "Caps default to SANDBOX_DEFAULT_* and may not exceed resourceLimits (400 naming the cap). "
        "Admission: past the host budget 429 with Retry-After, past the agent's quota (or a request "
        "no budget could hold) 409; error.details names the budget, its limit and what is in use. "
        "A trainingConfig (a PetalTrainingRequest) mounts its data and the current base model read-only, "
        "so the learn-cycle command it returns can be run through /v1/sandbox/execute."
    ),
    access="agent",
    body=ref("SandboxCreateRequest"),
    max_body_bytes=8 << 20,
    replies=[Reply(201, "Created", ref("Sandbox"))],
    errors=[403, 409, 429, 503],
)
async def create_sandbox(call: Call) -> web.Response:
    agent_id = act_as(call.caller, call.body.get("agentId"))
    view = await call.services.sandboxes.create(agent_id, call.body)
    return json_reply(view, status=201)


@ROUTES.operation(
    "POST",
    "/v1/sandbox/execute",
    summary="Run a command (argv) inside a sandbox and wait for it",
    description=(
        "stdout and stderr are capped at SANDBOX_OUTPUT_LIMIT bytes each (then `truncated` is true). "
        "terminationReason says why a run was ended early: timeout, memory_limit, pids_limit, "
        "storage_limit, lifetime or killed. The call returns by timeoutSeconds plus a short grace, "
        "whatever the command's processes do with their pipes, and everything the command started "
        "ends with it (its own cgroup), unless detach is true: then it runs in the background "
        "until it exits or DELETE /v1/sandbox/{sandboxId}/executions/{executionId} ends it. "
        "resourceUsage is this execution's; resourceUsage.sandbox the sandbox's so far."
    ),
    access="agent",
    body=ref("SandboxExecuteRequest"),
    max_body_bytes=2 << 20,
    replies=[
        Reply(200, "The command ran (whatever its exit status)", ref("ExecResult")),
        Reply(202, "Started in the background (detach: true)", {"type": "object"}),
    ],
    errors=[404, 409],
)
async def execute_in_sandbox(call: Call) -> web.Response:
    _visible(call, call.body["sandboxId"])
    reply = await call.services.sandboxes.execute(call.body)
    return json_reply(reply, status=202 if call.body.get("detach") else 200)


@ROUTES.operation(
    "DELETE",
    "/v1/sandbox/{sandboxId}/executions/{executionId}",
    summary="End a background execution: kill everything it started and return its result",
    access="agent",
    path_params=[
        SANDBOX_ID,
        Param("executionId", {"type": "string", "pattern": "^exec-[0-9]{1,9}$"}, route_regex=r"exec-[^/]*"),
    ],
    replies=[Reply(200, "Ended", ref("ExecResult"))],
    errors=[404, 409],
)
async def end_execution(call: Call) -> web.Response:
    sandbox_id = call.path["sandboxId"]
    _visible(call, sandbox_id)
    return json_reply(await call.services.sandboxes.end_execution(sandbox_id, call.path["executionId"]))


@ROUTES.operation(
    "DELETE",
    "/v1/sandbox/{sandboxId}",
    summary="Destroy a sandbox: kill everything in it and return its final resource record",
    access="agent",
    path_params=[SANDBOX_ID],
    replies=[Reply(200, "Destroyed (destroying again returns the same record)", ref("Sandbox"))],
)
async def destroy_sandbox(call: Call) -> web.Response:
    sandbox_id = call.path["sandboxId"]
    _visible(call, sandbox_id)
    return json_reply(await call.services.sandboxes.destroy(sandbox_id))


@ROUTES.operation(
    "GET",
    "/v1/sandbox/status/{sandboxId}",
    summary="A sandbox's state, caps and live resource use",
    access="agent",
    path_params=[SANDBOX_ID],
    replies=[Reply(200, "The sandbox", ref("Sandbox"))],
)
async def sandbox_status(call: Call) -> web.Response:
    sandbox_id = call.path["sandboxId"]
    _visible(call, sandbox_id)
    return json_reply(await call.services.sandboxes.status(sandbox_id))


@ROUTES.operation(
    "GET",
    "/v1/sandbox",
    summary="List sandboxes, newest first",
    access="agent",
    query=[
        Param("agentId", AGENT_ID, "Only this agent's (an agent may name only itself)"),
        Param("status", {"enum": ["running", "destroyed"]}, "Only sandboxes in this state"),
        *PAGE_QUERY,
    ],
    replies=[Reply(200, "Matching sandboxes", ref("SandboxList"))],
    errors=[403],
)
async def list_sandboxes(call: Call) -> web.Response:
    agent_id = agent_filter(call.caller, call.query.get("agentId"))
    sandboxes = call.services.sandboxes
    wanted = page_request(call.query, "sandboxes", CREATED_KEY)
    keys = await sandboxes.list_keys(agent_id, call.query.get("status"))
    shown, next_cursor = page_of(keys, lambda k: k, wanted, "sandboxes", descending=True)
    views = [await sandboxes.status(sandbox_id) for _, sandbox_id in shown]
    return json_reply(page_answer("sandboxes", views, next_cursor))
