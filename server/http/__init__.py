"""The /v1 API assembled from each area's route table. To add endpoints: put their body
schemas in schemas/ (the area's module), declare each handler with `@ROUTES.operation(...)`
in the area's module here, and list its ROUTES in TABLES below; route, validation and the
OpenAPI document follow from that one declaration."""

from __future__ import annotations

from .. import VERSION
from . import (
    admin,
    agents,
    consensus,
    datasets,
    petals,
    sandbox,
    system,
    telemetry,
)
from .openapi import Api
from .schemas import COMPONENTS

TABLES = [
    system.ROUTES,
    agents.ROUTES,
    sandbox.ROUTES,
    petals.ROUTES,
    datasets.ROUTES,
    telemetry.ROUTES,
    consensus.ROUTES,
    admin.ROUTES,
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
