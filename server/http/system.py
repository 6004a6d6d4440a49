"""Service-level endpoints: health (open), the OpenAPI document (open), Prometheus metrics (admin)."""

from __future__ import annotations

import time

from aiohttp import web

from .. import VERSION
from .openapi import API_KEY, Call, Reply, RouteTable, json_reply
from .schemas import ref

ROUTES = RouteTable("system", "Health, metrics and this document")


@ROUTES.operation(
    "GET",
    "/healthz",
    summary="Liveness and basic facts about the host",
    access="open",
    replies=[Reply(200, "The service is up", ref("Health"))],
)
async def healthz(call: Call) -> web.Response:
    services = call.services
    return json_reply(
        {
            "status": "ok",
            "version": VERSION,
            "cgroupMode": services.cgroup_mode,
            "uptimeSeconds": round(time.monotonic() - services.started_monotonic, 3),
        }
    )


@ROUTES.operation(
    "GET",
    "/v1/openapi.json",
    summary="This OpenAPI 3.1 document",
    access="open",
    replies=[Reply(200, "The document", {"type": "object"})],
)
async def openapi_document(call: Call) -> web.Response:
    return web.Response(body=call.request.app[API_KEY].document_bytes, content_type="application/json")


@ROUTES.operation(
    "GET",
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    access="admin",
    replies=[
        Reply(200, "Metrics in the Prometheus text format", {"type": "string"}, media_type="text/plain")
    ],
)
async def metrics(call: Call) -> web.Response:
    # Per-sandbox resource use is read from the kernel at scrape time, so it is never stale.
    await call.services.sandboxes.refresh_metrics()
    registry = call.services.metrics
    response = web.Response(body=registry.render())
    response.headers["Content-Type"] = registry.content_type
    return response
