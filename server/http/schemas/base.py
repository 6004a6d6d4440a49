"""The pieces every area's schemas are built from: references, list answers, ids, timestamps,
sequence numbers and bounds."""

from __future__ import annotations

from typing import Any

from ...vocabulary import AUDIT_KIND_PATTERN, ID_PATTERN, MODEL_NAME_PATTERN, SHA256_PATTERN

__all__ = ["AUDIT_KIND_PATTERN", "SHA256_PATTERN"]  # re-exported for the area modules

# 9999-12-31T23:59:59.999Z: any larger millisecond timestamp is a mistake.
MAX_TIMESTAMP_MS = 253402300799999
MAX_SEQ = 2**53 - 1
MAX_LIST_LIMIT = 1000

# What the seed's TrainingTelemetryEvent.event may be; adding a kind here is all a new one needs.
TELEMETRY_EVENT_KINDS = ["training_cycle_completed", "training_cycle_failed", "training_update_excluded"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def listing(key: str, item: str) -> dict[str, Any]:
    """An answer holding a list of `item` under `key`, with its length as `count`."""
    return {
        "type": "object",
        "required": [key, "count"],
        "additionalProperties": False,
        "properties": {key: {"type": "array", "items": ref(item)}, "count": NON_NEGATIVE_INT},
    }


def paged(key: str, item: str) -> dict[str, Any]:
    """A page of a list: `listing` with the cursor of the next page (null on the last one)."""
    return extended(listing(key, item), ("nextCursor",), nextCursor=NEXT_CURSOR)


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


AGENT_ID = {"type": "string", "pattern": ID_PATTERN, "description": "An agent's id"}
CYCLE_ID = {"type": "string", "pattern": ID_PATTERN, "description": "A training cycle's id"}
MODEL_NAME = {
    "type": "string",
    "pattern": MODEL_NAME_PATTERN,
    "description": "A shared model's name: its modelType, a family optionally named (mlp:digits)",
}
TIMESTAMP_MS = {
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_TIMESTAMP_MS,
    "description": "Milliseconds since the Unix epoch",
}
SEQ = {"type": "integer", "minimum": 1, "maximum": MAX_SEQ}
LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": 100}
NON_NEGATIVE_INT = {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}
NEXT_CURSOR = {
    "anyOf": [{"type": "string"}, {"type": "null"}],
    "description": "Give it as `cursor` for the next page; null: this is the last page",
}


def extended(schema: dict[str, Any], required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    """An object schema with more (or replaced) properties; `required` names the new required ones."""
    return {**schema, "required": [*schema["required"], *(k for k in required if k not in schema["required"])],
            "properties": {**schema["properties"], **properties}}  # fmt: skip
