"""The /v1 API assembled from each area's route table. To add endpoints: put their body
schemas in server/schemas/ (the area's module), declare each handler with `@ROUTES.operation(...)` in an api_<area>.py
module, and list that module's ROUTES in TABLES below; route, validation and document follow."""

from __future__ import annotations

from . import (
    VERSION,
    api_admin,
    api_agents,
    api_consensus,
    api_datasets,
    api_petals,
    api_sandbox,
    api_system,
    api_telemetry,
)
from .openapi import Api
from .schemas import COMPONENTS

TABLES = [
    api_system.ROUTES,
    api_agents.ROUTES,
    api_sandbox.ROUTES,
    api_petals.ROUTES,
    api_datasets.ROUTES,
    api_telemetry.ROUTES,
    api_consensus.ROUTES,
    api_admin.ROUTES,
]

DESCRIPTION = """\
WonderCraft: sandboxed learn cycles and federated training on bare-metal GPU hosts.

Authentication: `Authorization: Bearer <token>`. The admin token may do everything. An agent's
token (from `POST /v1/agents`) acts only as that agent: naming another agent in a body or filter
is 403, and another agent's resources answer 404 as if they did not exist. Open without a token:
`GET /healthz` and `GET /v1/openapi.json`. `GET /metrics` and everything under `/v1/admin` (what
`wondercraft-ctl` uses) need the admin token.

Errors are always `{"error": {"code": ..., "message": ...}}`; the message names what was wrong
and what was expected. Unknown fields and query parameters are rejected, not ignored."""


def build_api() -> Api:
    return Api(TABLES, components=COMPONENTS, title="WonderCraft", version=VERSION, description=DESCRIPTION)
