"""Property-based conformance: schemathesis generates valid and invalid requests from the live
service's own OpenAPI document and checks every answer against it (no 5xx, documented status,
content type, headers and body schema; invalid input rejected, valid input accepted)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from server.http import build_api
from tests.helpers import ADMIN_TOKEN, api_server, http, register_agent

# Enough to cover every operation's positive and negative shapes while keeping the whole run
# under about a minute on a small machine.
MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    with api_server(
        tmp_path_factory.mktemp("schemathesis") / "state",
        TELEMETRY_FLUSH_INTERVAL="0.5",
        # Generated training jobs really run: keep them few, short and unretried.
        PETALS_MAX_CONCURRENT_CYCLES="1",
        PETALS_MAX_QUEUE_DEPTH="4",
        PETALS_MAX_RETRIES="0",
        SANDBOX_MAX_LIFETIME="30",
        PETALS_MAX_MODEL_PARAMETERS="100000",
        WONDERCRAFT_SHUTDOWN_GRACE="0",
    ) as server:
        register_agent(server, "agent-a")
        yield server


# The document is built in-process so tests can be generated at collection time, before the
# server exists; test_live_document_is_the_one_tested proves the live service serves the same.
DOCUMENT = build_api().document
# The SSE stream never ends by design; tests/test_api_telemetry.py covers it directly.
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path="/v1/telemetry/training/stream")


@schema.auth()
class AdminToken:
    """The admin's bearer token, known to schemathesis as the document's bearerAuth: a negative
    case that drops the credentials really goes without them (and gets its 401)."""

    def get(self, case, context):
        return ADMIN_TOKEN

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
def test_live_api_conforms_to_its_document(case, live_server):
    # Whether a schema-valid training job, hold-out set, prediction or sandbox is acceptable also
    # depends on what the server holds (a model's signature fixed by an earlier job, its classes,
    # the host's resourceLimits) or on fields that bound one another (a model's numClasses and
    # family, a round's window and deadline): those operations may answer 400 to schema-valid input.
    # A list's cursor is opaque: only one the list handed out is a cursor, so any other string
    # matching its schema is a 400 too.
    stateful = case.operation.path in STATEFUL_PATHS or (case.query or {}).get("cursor") is not None
    case.call_and_validate(
        base_url=live_server.url,
        excluded_checks=[positive_data_acceptance] if stateful else None,
    )


STATEFUL_PATHS = {
    "/v1/petals/models",
    "/v1/petals/train",
    "/v1/petals/validation",
    "/v1/petals/model/shared/predict",
    "/v1/sandbox/create",
    # Any bytes match a binary body's schema; only a real .npz or .safetensors is accepted.
    "/v1/datasets",
}


def test_live_document_is_the_one_tested(live_server):
    status, served, _ = http("GET", live_server.url + "/v1/openapi.json")
    assert status == 200
    assert served == DOCUMENT
