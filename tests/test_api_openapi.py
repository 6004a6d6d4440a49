"""The OpenAPI document: served without a token, valid OpenAPI 3.1, and in step with the routes
the app really serves (the same declarations build both, and request validation uses it)."""

from __future__ import annotations

import pytest
import schemathesis

from server.app import create_app
from server.config import Settings
from server.http import build_api
from server.store import Store
from tests.helpers import api_server, http

METHODS = {"get", "post", "put", "patch", "delete"}
RAW_BODY = "application/octet-stream"


@pytest.fixture(scope="module")
def document():
    return build_api().document


def test_document_is_served_without_a_token(tmp_path):
    with api_server(tmp_path / "state") as server:
        status, body, headers = http("GET", server.url + "/v1/openapi.json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body["openapi"] == "3.1.0"
    assert body["info"]["title"] == "WonderCraft"


def test_document_is_valid_openapi_3_1(document):
    schemathesis.openapi.from_dict(document).validate()


def test_every_served_route_is_documented_and_every_documented_one_served(tmp_path, document):
    store = Store(tmp_path / "wondercraft.db")
    try:
        app = create_app(Settings(), store, admin_token="t" * 32)
        served = {
            (route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            # The dashboard's pages and files are served beside the API, not part of it.
            if route.method.lower() in METHODS and not route.resource.canonical.startswith("/dashboard")
        }
    finally:
        store.close()
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served == documented


def test_secured_operations_document_bearer_auth_and_their_errors(document):
    for path, item in document["paths"].items():
        for method, op in item.items():
            label = f"{method.upper()} {path}"
            responses = op["responses"]
            assert "default" in responses, label
            if op["security"]:
                assert op["security"] == [{"bearerAuth": []}], label
                assert "401" in responses, label
            assert op["x-access"] in ("open", "agent", "admin"), label
            if op["x-access"] == "admin":
                assert "403" in responses, label
            if op.get("parameters") or op.get("requestBody"):
                assert "400" in responses, label
            if op.get("requestBody"):
                assert {"413", "415"} <= set(responses), label
                content = op["requestBody"]["content"]
                if RAW_BODY in content:
                    # A raw upload (a dataset file), streamed by its handler.
                    assert content == {RAW_BODY: {"schema": {"type": "string", "format": "binary"}}}, label
                    continue
                assert content["application/json"]["schema"]["$ref"].startswith("#/components/schemas/"), (
                    label
                )


def test_every_parameter_has_a_bounded_schema(document):
    for path, item in document["paths"].items():
        for method, op in item.items():
            for param in op.get("parameters", []):
                schema = param["schema"]
                label = f"{method.upper()} {path} {param['name']}"
                if "$ref" in schema:
                    schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
                if schema.get("type") == "integer":
                    assert "minimum" in schema and "maximum" in schema, label
                elif schema.get("type") == "string":
                    assert "pattern" in schema or "enum" in schema, label
                else:
                    assert "enum" in schema, label


def test_request_bodies_reject_unknown_fields(document):
    schemas = document["components"]["schemas"]

    def closed(schema: dict, seen: set) -> None:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            if name in seen:
                return
            seen.add(name)
            schema = schemas[name]
        if schema.get("type") == "object" and "propertyNames" in schema:
            # A map (like an exec's env): its keys are constrained by pattern, its values by schema.
            assert isinstance(schema.get("additionalProperties"), dict) and "maxProperties" in schema, schema
        elif schema.get("type") == "object":
            assert schema.get("additionalProperties") is False, schema
            for sub in schema.get("properties", {}).values():
                closed(sub, seen)
        if schema.get("type") == "array":
            closed(schema["items"], seen)

    for item in document["paths"].values():
        for op in item.values():
            if "requestBody" in op and RAW_BODY not in op["requestBody"]["content"]:
                closed(op["requestBody"]["content"]["application/json"]["schema"], set())
