"""Admin endpoints for `wondercraft-ctl`: a status summary, every training cycle, live
per-sandbox resource samples, the orphan sweep on demand, and kernel-level audits."""

from __future__ import annotations

from aiohttp import web

from .. import admin
from .openapi import Call, Param, Reply, RouteTable, json_reply
from .paging import CREATED_KEY, PAGE_QUERY, page_answer, page_of, page_request
from .schemas import AGENT_ID, CYCLE_STATUSES, ref

ROUTES = RouteTable(
    "admin", "Operating the service: status, cycles, live stats, sweeps and audits (admin only)"
)


@ROUTES.operation(
    "GET",
    "/v1/admin/status",
    summary="Health, where this instance lives, and counts of sandboxes, cycles, models and agents",
    access="admin",
    replies=[Reply(200, "The summary", ref("AdminStatus"))],
)
async def admin_status(call: Call) -> web.Response:
    return json_reply(await admin.status(call.services))


@ROUTES.operation(
    "GET",
    "/v1/admin/cycles",
    summary="Training cycles of every agent, newest first, live ones with their progress",
    access="admin",
    query=[
        Param("agentId", AGENT_ID, "Only this agent's"),
        Param("status", {"enum": CYCLE_STATUSES}, "Only cycles in this state"),
        Param("modelType", ref("ModelName"), "Only cycles training this model"),
        *PAGE_QUERY,
    ],
    replies=[Reply(200, "Matching cycles", ref("CycleList"))],
)
async def admin_cycles(call: Call) -> web.Response:
    q = call.query
    wanted = page_request(q, "cycles", CREATED_KEY)
    keys = await admin.cycle_keys(
        call.services, agent_id=q.get("agentId"), status_=q.get("status"), model=q.get("modelType")
    )
    shown, next_cursor = page_of(keys, lambda k: k, wanted, "cycles", descending=True)
    found = await admin.cycles(call.services, [cycle_id for _, cycle_id in shown])
    return json_reply(page_answer("cycles", found, next_cursor))


@ROUTES.operation(
    "GET",
    "/v1/admin/stats",
    summary="One resource sample per running sandbox: CPU time, memory, pids, io",
    description="Two samples give CPU use as a share of a core: the CPU seconds between them over the "
    "wall seconds between their `sampledAt`.",
    access="admin",
    replies=[Reply(200, "The samples", ref("SandboxStats"))],
)
async def admin_stats(call: Call) -> web.Response:
    samples = await admin.stats(call.services)
    return json_reply({"sandboxes": samples, "count": len(samples)})


@ROUTES.operation(
    "GET",
    "/v1/admin/nodes",
    summary="The Ray nodes learn cycles run on (executor ray): slots, GPUs, running cycles, heartbeat",
    description="Empty with the local executor: every cycle runs on this host.",
    access="admin",
    replies=[Reply(200, "The nodes", ref("NodeList"))],
)
async def admin_nodes(call: Call) -> web.Response:
    nodes = await call.services.petals.executor.nodes()
    return json_reply({"executor": call.services.petals.executor.name, "nodes": nodes, "count": len(nodes)})


@ROUTES.operation(
    "POST",
    "/v1/admin/cleanup",
    summary="Run the supervisor's pass now: reap expired and dead sandboxes, sweep orphans",
    description="Only this instance's cgroups and network namespaces are swept; see /v1/admin/audit/host "
    "for the whole host.",
    access="admin",
    replies=[Reply(200, "What was removed", ref("CleanupReport"))],
    errors=[503],
)
async def admin_cleanup(call: Call) -> web.Response:
    return json_reply(await admin.cleanup(call.services))


@ROUTES.operation(
    "GET",
    "/v1/admin/audit/sandbox/{sandboxId}",
    summary="A sandbox's caps beside what the kernel enforced and what it used",
    access="admin",
    path_params=[Param("sandboxId", ref("SandboxId"))],
    replies=[Reply(200, "The audit", ref("SandboxAudit"))],
)
async def audit_sandbox(call: Call) -> web.Response:
    return json_reply(await admin.sandbox_audit(call.services, call.path["sandboxId"]))


@ROUTES.operation(
    "GET",
    "/v1/admin/audit/host",
    summary="Every cgroup, mount, netns, link and launcher process with the project's names, known or orphaned",
    access="admin",
    replies=[Reply(200, "The findings", ref("HostAudit"))],
)
async def audit_host(call: Call) -> web.Response:
    return json_reply(await admin.host_audit(call.services))
