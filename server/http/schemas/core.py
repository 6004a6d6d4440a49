"""Schemas shared by every area, and those of the system, agents, telemetry and the audit
history."""

from __future__ import annotations

from typing import Any

from .base import (
    AGENT_ID,
    AUDIT_KIND_PATTERN,
    CYCLE_ID,
    MODEL_NAME,
    NON_NEGATIVE_INT,
    SEQ,
    SHA256_PATTERN,
    TELEMETRY_EVENT_KINDS,
    TIMESTAMP_MS,
    extended,
    listing,
    nullable,
    paged,
    ref,
)

_MODEL_AUTHOR = {"type": "boolean", "description": "May define shared models (POST /v1/petals/models)"}
_AGENT = {
    "type": "object",
    "required": ["agentId", "active", "createdAt", "revokedAt", "modelAuthor"],
    "additionalProperties": False,
    "properties": {
        "agentId": {"$ref": "#/components/schemas/AgentId"},
        "active": {"type": "boolean"},
        "createdAt": {"$ref": "#/components/schemas/TimestampMs"},
        "revokedAt": {"anyOf": [{"$ref": "#/components/schemas/TimestampMs"}, {"type": "null"}]},
        "modelAuthor": _MODEL_AUTHOR,
        "standing": {
            "type": "object",
            "description": "How the agent's updates fared in screening: totals, and per model",
            "properties": {
                "updates": {"type": "integer", "minimum": 0},
                "exclusions": {"type": "integer", "minimum": 0},
                "consecutiveExclusions": {"type": "integer", "minimum": 0},
                "lastNorm": {"type": ["number", "null"]},
                "suspendedModels": {"type": "array", "items": {"type": "string"}},
                "models": {"type": "array", "items": {"type": "object"}},
            },
        },
    },
}

_TELEMETRY_INPUT = {
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
}

CORE: dict[str, dict[str, Any]] = {
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
        "properties": {"agentId": ref("AgentId"), "modelAuthor": _MODEL_AUTHOR},
    },
    "AgentUpdateRequest": {
        "type": "object",
        "required": ["modelAuthor"],
        "additionalProperties": False,
        "properties": {"modelAuthor": _MODEL_AUTHOR},
    },
    "Agent": _AGENT,
    "AgentCreated": extended(
        _AGENT,
        required=("token",),
        revokedAt={"type": "null"},
        token={
            "type": "string",
            "description": "The agent's bearer token. Shown only in this answer; only its hash is kept.",
        },
    ),
    "AgentReinstateRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"modelType": {"$ref": "#/components/schemas/ModelName"}},
    },
    "AgentReinstated": {
        "type": "object",
        "required": ["agentId", "reinstated"],
        "additionalProperties": False,
        "properties": {
            "agentId": {"$ref": "#/components/schemas/AgentId"},
            "reinstated": {"type": "array", "items": {"type": "string"}},
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
                "description": "Seconds the cycle took",
            },
            "epochs": {"type": "integer", "minimum": 0, "maximum": 10000},
            "lossPerEpoch": {"type": "array", "maxItems": 1000, "items": {"type": "number"}},
        },
    },
    "TelemetryEventInput": _TELEMETRY_INPUT,
    "TelemetryEvent": extended(
        _TELEMETRY_INPUT,
        required=("seq", "timestamp"),
        seq={**SEQ, "description": "Position in the telemetry stream (the SSE event id)"},
        timestamp=ref("TimestampMs"),
        error={"type": "string"},
    ),
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
    "TelemetryPage": listing("events", "TelemetryEvent"),
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
    "AuditHistory": paged("entries", "AuditEntry"),
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
