"""The OpenAPI 3.1 document, built from the declared operations: their parameters, bodies,
replies, and the error answers authentication and validation add to each."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .openapi import Operation, RouteTable

# Error answers every operation may give, by status: (components.responses name, description).
ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request does not match this document; the message names the field"),
    401: ("Unauthorized", "No bearer token, or one that is unknown or revoked"),
    403: ("Forbidden", "The token may not do this (admin only, or acting as another agent)"),
    404: ("NotFound", "No such resource, or one that belongs to another agent"),
    409: ("Conflict", "The resource already exists or is in the wrong state"),
    413: ("PayloadTooLarge", "The request body is over this operation's limit"),
    415: ("UnsupportedMediaType", "The request body's Content-Type is not the one the operation takes"),
    429: ("TooManyRequests", "A queue is full; retry after the Retry-After header's seconds"),
    503: ("ServiceUnavailable", "Overloaded or shutting down; retry later"),
}


def _error_statuses(op: Operation) -> list[int]:
    statuses = set(op.errors)
    has_body = op.body is not None or op.raw_body is not None
    if op.path_params or op.query or has_body:
        statuses.add(400)
    if op.access != "open":
        statuses.add(401)
    if op.access == "admin":
        statuses.add(403)
    if op.path_params:
        statuses.add(404)
    if has_body:
        statuses.update((413, 415))
    return sorted(statuses)


def build_document(
    operations: Sequence[Operation],
    tables: Sequence[RouteTable],
    components: Mapping[str, Mapping[str, Any]],
    title: str,
    version: str,
    description: str,
) -> dict[str, Any]:
    """The document of `operations`, tagged by the route tables they were declared in."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "security": [] if op.access == "open" else [{"bearerAuth": []}],
            # Who may call it: open (no token), agent (any valid token) or admin.
            "x-access": op.access,
        }
        if op.description:
            entry["description"] = op.description
        if op.access == "admin":
            entry["description"] = (entry.get("description", "") + "\n\nAdmin token only.").strip()
        parameters = [
            {
                "name": p.name,
                "in": "path",
                "required": True,
                "schema": copy.deepcopy(dict(p.schema)),
                **({"description": p.description} if p.description else {}),
            }
            for p in op.path_params
        ] + [
            {
                "name": p.name,
                "in": "query",
                "required": p.required,
                "schema": copy.deepcopy(dict(p.schema)),
                **({"description": p.description} if p.description else {}),
            }
            for p in op.query
        ]
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "description": f"At most {op.max_body_bytes} bytes",
                "content": {"application/json": {"schema": copy.deepcopy(dict(op.body))}},
            }
            if op.multipart is not None:
                entry["requestBody"]["content"]["multipart/form-data"] = {
                    "schema": copy.deepcopy(dict(op.multipart))
                }
        if op.raw_body is not None:
            entry["requestBody"] = {
                "required": True,
                "description": "The raw bytes, streamed; the operation's description gives its limit",
                "content": {op.raw_body: {"schema": {"type": "string", "format": "binary"}}},
            }
        responses: dict[str, Any] = {}
        for reply in op.replies:
            # Replies sharing a status are one answer in several media types (JSON or ONNX...).
            answer = responses.setdefault(str(reply.status), {"description": reply.description})
            if reply.schema is not None:
                answer.setdefault("content", {})[reply.media_type] = {
                    "schema": copy.deepcopy(dict(reply.schema))
                }
        for status in _error_statuses(op):
            responses[str(status)] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
        responses["default"] = {"$ref": "#/components/responses/Error"}
        entry["responses"] = responses
        paths.setdefault(op.path, {})[op.method.lower()] = entry

    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    error_responses: dict[str, Any] = {
        name: {"description": text, "content": error_content} for name, text in ERROR_RESPONSES.values()
    }
    error_responses["Unauthorized"]["headers"] = {
        "WWW-Authenticate": {"description": "The scheme to use: Bearer", "schema": {"type": "string"}}
    }
    error_responses["Error"] = {"description": "Any other error", "content": error_content}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": title, "version": version, "description": description},
        "tags": [{"name": t.tag, "description": t.description} for t in tables],
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(dict(components)),
            "responses": error_responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token, or an agent token from POST /v1/agents",
                }
            },
        },
    }
