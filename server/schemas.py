"""The JSON Schemas (2020-12) of every request and answer body: the `components.schemas` of
the OpenAPI document, and what requests and emitted events are validated against.
A new endpoint's types go here; its operation is declared beside its handler."""

from __future__ import annotations

from typing import Any

# Ids travel in URLs and may end up in file or cgroup names: no '/', no leading '.', no ':'.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
AUDIT_KIND_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# 9999-12-31T23:59:59.999Z: any larger millisecond timestamp is a mistake.
MAX_TIMESTAMP_MS = 253402300799999
MAX_SEQ = 2**53 - 1
MAX_LIST_LIMIT = 1000

# What the seed's TrainingTelemetryEvent.event may be; adding a kind here is all a new one needs.
TELEMETRY_EVENT_KINDS = ["training_cycle_completed", "training_cycle_failed"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


AGENT_ID = {"type": "string", "pattern": ID_PATTERN, "description": "An agent's id"}
CYCLE_ID = {"type": "string", "pattern": ID_PATTERN, "description": "A training cycle's id"}
MODEL_NAME = {"type": "string", "pattern": ID_PATTERN, "description": "A shared model's name (modelType)"}
TIMESTAMP_MS = {
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_TIMESTAMP_MS,
    "description": "Milliseconds since the Unix epoch",
}
SEQ = {"type": "integer", "minimum": 1, "maximum": MAX_SEQ}
LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": 100}
NON_NEGATIVE_INT = {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}

COMPONENTS: dict[str, dict[str, Any]] = {
    # ---- shared ----
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "description": "Stable machine-readable code"},
                    "message": {"type": "string", "description": "What was wrong and what was expected"},
                    "details": {"type": "object", "description": "Per-field problems and the like"},
                },
            }
        },
    },
    "AgentId": AGENT_ID,
    "CycleId": CYCLE_ID,
    "ModelName": MODEL_NAME,
    "TimestampMs": TIMESTAMP_MS,
    # ---- system ----
    "Health": {
        "type": "object",
        "required": ["status", "version", "cgroupMode", "uptimeSeconds"],
        "additionalProperties": False,
        "properties": {
            "status": {"const": "ok"},
            "version": {"type": "string"},
            "cgroupMode": {"enum": ["v1", "v2", "hybrid"]},
            "uptimeSeconds": {"type": "number", "minimum": 0},
        },
    },
    # ---- agents ----
    "AgentCreateRequest": {
        "type": "object",
        "required": ["agentId"],
        "additionalProperties": False,
        "properties": {"agentId": ref("AgentId")},
    },
    "Agent": {
        "type": "object",
        "required": ["agentId", "active", "createdAt", "revokedAt"],
        "additionalProperties": False,
        "properties": {
            "agentId": ref("AgentId"),
            "active": {"type": "boolean"},
            "createdAt": ref("TimestampMs"),
            "revokedAt": nullable(ref("TimestampMs")),
        },
    },
    "AgentCreated": {
        "type": "object",
        "required": ["agentId", "active", "createdAt", "revokedAt", "token"],
        "additionalProperties": False,
        "properties": {
            "agentId": ref("AgentId"),
            "active": {"type": "boolean"},
            "createdAt": ref("TimestampMs"),
            "revokedAt": {"type": "null"},
            "token": {
                "type": "string",
                "description": "The agent's bearer token. Shown only in this answer; only its hash is kept.",
            },
        },
    },
    "AgentList": {
        "type": "object",
        "required": ["agents"],
        "additionalProperties": False,
        "properties": {"agents": {"type": "array", "items": ref("Agent")}},
    },
    # ---- telemetry (the seed's TrainingTelemetryEvent) ----
    "TelemetryEventKind": {"enum": TELEMETRY_EVENT_KINDS},
    "DeltasSummary": {
        "type": "object",
        "description": "A summary of a cycle's model deltas (the deltas themselves are not telemetry)",
        "additionalProperties": False,
        "properties": {
            "parameterCount": NON_NEGATIVE_INT,
            "tensorCount": NON_NEGATIVE_INT,
            "l2Norm": {"type": "number", "minimum": 0},
            "maxAbs": {"type": "number", "minimum": 0},
            "sha256": {"type": "string", "pattern": SHA256_PATTERN},
            "baseVersion": NON_NEGATIVE_INT,
        },
    },
    "TrainingMetrics": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "loss": {"type": "number"},
            "accuracy": {"type": "number", "minimum": 0, "maximum": 1},
            "duration": {
                "type": "number",
                "minimum": 0,
                "maximum": 315576000000,
                "description": "Milliseconds the cycle took",
            },
            "epochs": {"type": "integer", "minimum": 0, "maximum": 10000},
            "lossPerEpoch": {"type": "array", "maxItems": 1000, "items": {"type": "number"}},
        },
    },
    "TelemetryEventInput": {
        "type": "object",
        "required": ["event", "agentId"],
        "additionalProperties": False,
        "properties": {
            "event": ref("TelemetryEventKind"),
            "cycleId": ref("CycleId"),
            "agentId": ref("AgentId"),
            "timestamp": ref("TimestampMs"),
            "deltas": ref("DeltasSummary"),
            "metrics": ref("TrainingMetrics"),
            "error": {"type": "string", "maxLength": 4096},
        },
    },
    "TelemetryEvent": {
        "type": "object",
        "required": ["seq", "event", "agentId", "timestamp"],
        "additionalProperties": False,
        "properties": {
            "seq": {**SEQ, "description": "Position in the telemetry stream (the SSE event id)"},
            "event": ref("TelemetryEventKind"),
            "cycleId": ref("CycleId"),
            "agentId": ref("AgentId"),
            "timestamp": ref("TimestampMs"),
            "deltas": ref("DeltasSummary"),
            "metrics": ref("TrainingMetrics"),
            "error": {"type": "string"},
        },
    },
    "TelemetryBatch": {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "events": {"type": "array", "minItems": 1, "maxItems": 1000, "items": ref("TelemetryEventInput")}
        },
    },
    "TelemetryAccepted": {
        "type": "object",
        "required": ["accepted", "events"],
        "additionalProperties": False,
        "properties": {
            "accepted": NON_NEGATIVE_INT,
            "events": {"type": "array", "items": ref("TelemetryEvent")},
        },
    },
    "TelemetryPage": {
        "type": "object",
        "required": ["events", "count"],
        "additionalProperties": False,
        "properties": {
            "events": {"type": "array", "items": ref("TelemetryEvent")},
            "count": NON_NEGATIVE_INT,
        },
    },
    # ---- consensus history / audit ----
    "AuditEntry": {
        "type": "object",
        "required": [
            "seq",
            "kind",
            "modelName",
            "agentId",
            "body",
            "createdAt",
            "prevHash",
            "entryHash",
        ],
        "additionalProperties": False,
        "properties": {
            "seq": SEQ,
            "kind": {"type": "string", "pattern": AUDIT_KIND_PATTERN},
            "modelName": nullable({"type": "string"}),
            "agentId": nullable({"type": "string"}),
            "body": {"type": "object"},
            "createdAt": ref("TimestampMs"),
            "prevHash": {"type": "string", "pattern": SHA256_PATTERN},
            "entryHash": {"type": "string", "pattern": SHA256_PATTERN},
        },
    },
    "AuditHistory": {
        "type": "object",
        "required": ["entries", "count"],
        "additionalProperties": False,
        "properties": {
            "entries": {"type": "array", "items": ref("AuditEntry")},
            "count": NON_NEGATIVE_INT,
        },
    },
    "AuditVerification": {
        "type": "object",
        "required": ["ok", "entries", "headSeq", "headHash"],
        "additionalProperties": False,
        "properties": {
            "ok": {"type": "boolean"},
            "entries": {**NON_NEGATIVE_INT, "description": "Entries checked before stopping"},
            "headSeq": nullable(SEQ),
            "headHash": {"type": "string", "pattern": SHA256_PATTERN},
            "firstBadSeq": {**SEQ, "description": "The first entry found edited, inserted or missing"},
            "reason": {"type": "string"},
        },
    },
}
