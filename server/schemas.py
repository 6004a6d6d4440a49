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


def listing(key: str, item: str) -> dict[str, Any]:
    """An answer holding a list of `item` under `key`, with its length as `count`."""
    return {
        "type": "object",
        "required": [key, "count"],
        "additionalProperties": False,
        "properties": {key: {"type": "array", "items": ref(item)}, "count": NON_NEGATIVE_INT},
    }


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


AGENT_ID = {"type": "string", "pattern": ID_PATTERN, "description": "An agent's id"}
CYCLE_ID = {"type": "string", "pattern": ID_PATTERN, "description": "A training cycle's id"}
MODEL_TYPE_PATTERN = r"^(linear|logistic|softmax|mlp)(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$"
MODEL_NAME = {
    "type": "string",
    "pattern": MODEL_TYPE_PATTERN,
    "description": "A shared model's name: its modelType, a family optionally named (mlp:digits)",
}
SANDBOX_ID_PATTERN = r"^sb-[0-9a-f]{12}$"
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
    "AuditHistory": listing("entries", "AuditEntry"),
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

# ---- sandboxes ----
_CPU = {
    "type": "number",
    "exclusiveMinimum": 0,
    "maximum": 1024,
    "description": "CPU cores (fractions allowed)",
}
_MEMORY = {"type": "integer", "minimum": 16, "maximum": 262144, "description": "Memory in MB"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
TERMINATION_REASONS = [
    "timeout",
    "memory_limit",
    "pids_limit",
    "storage_limit",
    "lifetime",
    "killed",
    "destroyed",
    "lost",
]
CYCLE_STATUSES = ["queued", "running", "retrying", "completed", "failed", "aggregated"]

_TRAINING_PROPERTIES = {
    "agentId": ref("AgentId"),
    "dataBatch": {
        "type": "array",
        "minItems": 1,
        "maxItems": 100000,
        "items": {
            "type": "object",
            "required": ["x", "y"],
            "additionalProperties": False,
            "properties": {
                "x": {"type": "array", "minItems": 1, "maxItems": 65536, "items": {"type": "number"}},
                "y": {"type": "number"},
            },
        },
    },
    "modelType": ref("ModelName"),
    "trainingParams": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "learningRate": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
            "batchSize": {"type": "integer", "minimum": 1, "maximum": 65536},
            "epochs": {"type": "integer", "minimum": 1, "maximum": 1000},
        },
    },
    "modelConfig": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "inputDim": {"type": "integer", "minimum": 1, "maximum": 65536},
            "numClasses": {"type": "integer", "minimum": 1, "maximum": 10000},
            "hidden": {
                "type": "array",
                "maxItems": 16,
                "items": {"type": "integer", "minimum": 1, "maximum": 65536},
            },
        },
    },
    "resourceCaps": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"cpu": _CPU, "memory": _MEMORY},
    },
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
}

COMPONENTS.update(
    {
        "SandboxId": {"type": "string", "pattern": SANDBOX_ID_PATTERN, "description": "A sandbox's id"},
        "PetalTrainingRequest": {
            "type": "object",
            "required": ["dataBatch", "modelType"],
            "additionalProperties": False,
            "properties": _TRAINING_PROPERTIES,
        },
        "SandboxCreateRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "agentId": ref("AgentId"),
                "resourceCaps": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "cpu": _CPU,
                        "memory": _MEMORY,
                        "gpu": {"type": "integer", "minimum": 0, "maximum": 64},
                    },
                },
                "trainingConfig": ref("PetalTrainingRequest"),
                "network": {"enum": ["isolated"], "description": "isolated: loopback only (the default)"},
                "storageMB": {"type": "integer", "minimum": 1, "maximum": 1048576},
                "lifetimeSeconds": {"type": "integer", "minimum": 1, "maximum": 604800},
            },
        },
        "SandboxExecuteRequest": {
            "type": "object",
            "required": ["sandboxId", "command"],
            "additionalProperties": False,
            "properties": {
                "sandboxId": ref("SandboxId"),
                "command": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1024,
                    "items": {"type": "string", "maxLength": 65536, "pattern": "^[^\\u0000]*$"},
                    "description": "argv: the program and its arguments (no shell)",
                },
                "timeoutSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
                "env": {
                    "type": "object",
                    "maxProperties": 128,
                    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"},
                    "additionalProperties": {
                        "type": "string",
                        "maxLength": 65536,
                        "pattern": "^[^\\u0000]*$",
                    },
                },
                "stdin": {"type": "string", "maxLength": 1048576},
                "detach": {
                    "type": "boolean",
                    "description": "Run in the background: answer 202 at once; listed in the sandbox's "
                    "status, ended by DELETE /v1/sandbox/{sandboxId}/executions/{executionId}",
                },
            },
        },
        "ResourceUsage": {
            "type": "object",
            "description": "The kernel's own accounting (cgroup counters, wait4 rusage); null where not exposed",
            "properties": {
                "cpuSeconds": _NULLABLE_NUMBER,
                "memoryPeakBytes": _NULLABLE_INT,
                "pidsPeak": _NULLABLE_INT,
                "oomKills": _NULLABLE_INT,
                "pidsLimitHits": _NULLABLE_INT,
                "wallSeconds": _NULLABLE_NUMBER,
            },
        },
        "Sandbox": {
            "type": "object",
            "required": ["sandboxId", "agentId", "status", "resourceCaps", "createdAt", "expiresAt"],
            "properties": {
                "sandboxId": ref("SandboxId"),
                "agentId": ref("AgentId"),
                "status": {"enum": ["creating", "running", "destroying", "destroyed", "dead"]},
                "resourceCaps": {"type": "object"},
                "network": {"type": "string"},
                "createdAt": ref("TimestampMs"),
                "expiresAt": ref("TimestampMs"),
                "executions": NON_NEGATIVE_INT,
                "trainingConfig": {"type": "object"},
                "resourceUsage": ref("ResourceUsage"),
                "finalResourceRecord": {"type": "object"},
            },
        },
        "SandboxList": listing("sandboxes", "Sandbox"),
        "ExecResult": {
            "type": "object",
            "required": [
                "exitCode",
                "signal",
                "stdout",
                "stderr",
                "truncated",
                "durationMs",
                "terminationReason",
                "resourceUsage",
            ],
            "properties": {
                "sandboxId": ref("SandboxId"),
                "exitCode": _NULLABLE_INT,
                "signal": _NULLABLE_INT,
                "stdout": {"type": "string"},
                "stderr": {"type": "string"},
                "truncated": {"type": "boolean"},
                "durationMs": {"type": "number", "minimum": 0},
                "terminationReason": {"anyOf": [{"enum": TERMINATION_REASONS}, {"type": "null"}]},
                "resourceUsage": ref("ResourceUsage"),
            },
        },
        # ---- petals ----
        "TrainAccepted": {
            "type": "object",
            "required": ["cycleId", "status", "baseVersion"],
            "additionalProperties": False,
            "properties": {
                "cycleId": ref("CycleId"),
                "status": {"enum": ["queued"]},
                "baseVersion": NON_NEGATIVE_INT,
            },
        },
        "CycleStatus": {
            "type": "object",
            "required": ["cycleId", "agentId", "modelType", "status", "attempts", "baseVersion", "progress"],
            "properties": {
                "cycleId": ref("CycleId"),
                "agentId": ref("AgentId"),
                "modelType": ref("ModelName"),
                "status": {"enum": CYCLE_STATUSES},
                "attempts": NON_NEGATIVE_INT,
                "sandboxId": {"anyOf": [ref("SandboxId"), {"type": "null"}]},
                "baseVersion": NON_NEGATIVE_INT,
                "resultVersion": _NULLABLE_INT,
                "progress": {"type": "object"},
                "result": {"type": "object"},
                "error": {"type": "object"},
            },
        },
        "SharedModel": {
            "type": "object",
            "required": ["modelType", "version", "currentVersion", "signature", "metadata", "parameters"],
            "properties": {
                "modelType": ref("ModelName"),
                "version": NON_NEGATIVE_INT,
                "currentVersion": NON_NEGATIVE_INT,
                "signature": {"type": "object"},
                "metadata": {"type": "object"},
                "parameters": {"type": "object"},
            },
        },
        "PredictRequest": {
            "type": "object",
            "required": ["modelType", "inputs"],
            "additionalProperties": False,
            "properties": {
                "modelType": ref("ModelName"),
                "version": NON_NEGATIVE_INT,
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 10000,
                    "items": {"type": "array", "minItems": 1, "maxItems": 65536, "items": {"type": "number"}},
                },
            },
        },
        "PredictResult": {
            "type": "object",
            "required": ["modelType", "version", "outputs", "provider"],
            "additionalProperties": False,
            "properties": {
                "modelType": ref("ModelName"),
                "version": NON_NEGATIVE_INT,
                "outputs": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "provider": {"type": "string"},
            },
        },
        "ValidationSetRequest": {
            "type": "object",
            "required": ["modelType", "dataBatch"],
            "additionalProperties": False,
            "properties": {"modelType": ref("ModelName"), "dataBatch": _TRAINING_PROPERTIES["dataBatch"]},
        },
        "ValidationSetRegistered": {
            "type": "object",
            "required": ["modelType", "samples"],
            "additionalProperties": False,
            "properties": {"modelType": ref("ModelName"), "samples": NON_NEGATIVE_INT},
        },
        "RollbackRequest": {
            "type": "object",
            "required": ["modelType", "version"],
            "additionalProperties": False,
            "properties": {"modelType": ref("ModelName"), "version": NON_NEGATIVE_INT},
        },
        "RollbackResult": {
            "type": "object",
            "required": ["modelType", "currentVersion", "sha256"],
            "additionalProperties": False,
            "properties": {
                "modelType": ref("ModelName"),
                "currentVersion": NON_NEGATIVE_INT,
                "sha256": {"type": "string", "pattern": SHA256_PATTERN},
            },
        },
        "ModelVersions": {
            "type": "object",
            "required": ["modelType", "currentVersion", "versions"],
            "additionalProperties": False,
            "properties": {
                "modelType": ref("ModelName"),
                "currentVersion": NON_NEGATIVE_INT,
                "versions": {"type": "array", "items": {"type": "object"}},
            },
        },
    }
)

# ---- admin (wondercraft-ctl) ----
_COUNTS = {"type": "object", "additionalProperties": NON_NEGATIVE_INT}
_NULLABLE_COUNT = {"anyOf": [NON_NEGATIVE_INT, {"type": "null"}]}
_AUDIT_VERDICTS = ["within", "hit", "throttled", "full", "mismatch", "unknown"]

COMPONENTS.update(
    {
        "AdminStatus": {
            "type": "object",
            "required": [
                "status",
                "version",
                "cgroupMode",
                "uptimeSeconds",
                "pid",
                "instance",
                "stateDir",
                "sandboxes",
                "cycles",
                "models",
                "agents",
                "gpus",
                "shutdownGraceSeconds",
            ],
            "additionalProperties": False,
            "properties": {
                "status": {"const": "ok"},
                "version": {"type": "string"},
                "cgroupMode": {"enum": ["v1", "v2", "hybrid", "none"]},
                "uptimeSeconds": {"type": "number", "minimum": 0},
                "pid": {"type": "integer", "minimum": 1},
                "instance": {"type": "string", "description": "Prefix of this instance's cgroups and netns"},
                "stateDir": {"type": "string"},
                "sandboxes": {
                    "type": "object",
                    "required": ["running", "byStatus"],
                    "additionalProperties": False,
                    "properties": {"running": NON_NEGATIVE_INT, "byStatus": _COUNTS},
                },
                "cycles": {
                    "type": "object",
                    "required": ["queued", "running", "maxConcurrent", "byStatus"],
                    "additionalProperties": False,
                    "properties": {
                        "queued": {**NON_NEGATIVE_INT, "description": "The queue depth"},
                        "running": NON_NEGATIVE_INT,
                        "maxConcurrent": NON_NEGATIVE_INT,
                        "byStatus": _COUNTS,
                    },
                },
                "models": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["modelType", "currentVersion", "versions"],
                        "additionalProperties": False,
                        "properties": {
                            "modelType": ref("ModelName"),
                            "currentVersion": NON_NEGATIVE_INT,
                            "versions": NON_NEGATIVE_INT,
                        },
                    },
                },
                "agents": {
                    "type": "object",
                    "required": ["active", "revoked"],
                    "additionalProperties": False,
                    "properties": {"active": NON_NEGATIVE_INT, "revoked": NON_NEGATIVE_INT},
                },
                "gpus": {
                    "type": "object",
                    "required": ["total", "free"],
                    "additionalProperties": False,
                    "properties": {"total": NON_NEGATIVE_INT, "free": NON_NEGATIVE_INT},
                },
                "admission": {
                    "type": ["object", "null"],
                    "description": "Committed to live sandboxes against the host budget (memoryMB, cpuCores, "
                    "gpus: {committed, budget}), the per-agent quota and each agent's share",
                },
                "shutdownGraceSeconds": {"type": "number", "minimum": 0},
            },
        },
        "CycleList": listing("cycles", "CycleStatus"),
        "SandboxSample": {
            "type": "object",
            "required": [
                "sandboxId",
                "agentId",
                "cycleId",
                "cpuCores",
                "cpuSeconds",
                "memoryCurrentBytes",
                "memoryPeakBytes",
                "memoryLimitBytes",
                "pidsCurrent",
                "pidsLimit",
                "ioReadBytes",
                "ioWriteBytes",
                "oomKills",
                "sampledAt",
            ],
            "additionalProperties": False,
            "properties": {
                "sandboxId": ref("SandboxId"),
                "agentId": ref("AgentId"),
                "cycleId": {"anyOf": [ref("CycleId"), {"type": "null"}]},
                "cpuCores": {"type": "number", "exclusiveMinimum": 0},
                "cpuSeconds": {**_NULLABLE_NUMBER, "description": "CPU time used so far"},
                "memoryCurrentBytes": _NULLABLE_COUNT,
                "memoryPeakBytes": _NULLABLE_COUNT,
                "memoryLimitBytes": NON_NEGATIVE_INT,
                "pidsCurrent": _NULLABLE_COUNT,
                "pidsLimit": NON_NEGATIVE_INT,
                "ioReadBytes": _NULLABLE_COUNT,
                "ioWriteBytes": _NULLABLE_COUNT,
                "oomKills": NON_NEGATIVE_INT,
                "sampledAt": {"type": "number", "minimum": 0, "description": "Unix time of the sample (s)"},
            },
        },
        "SandboxStats": listing("sandboxes", "SandboxSample"),
        "CleanupReport": {
            "type": "object",
            "required": ["expired", "dead", "orphans", "removed"],
            "additionalProperties": False,
            "properties": {
                "expired": {"type": "array", "items": ref("SandboxId"), "description": "Past their lifetime"},
                "dead": {"type": "array", "items": ref("SandboxId"), "description": "Whose init had died"},
                "orphans": {
                    "type": "object",
                    "required": ["cgroups", "netns"],
                    "additionalProperties": False,
                    "properties": {
                        "cgroups": {"type": "array", "items": {"type": "string"}},
                        "netns": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "removed": NON_NEGATIVE_INT,
            },
        },
        "AuditCheck": {
            "type": "object",
            "required": ["resource", "unit", "cap", "enforced", "used", "verdict", "note"],
            "additionalProperties": False,
            "properties": {
                "resource": {"enum": ["memory", "cpu", "pids", "storage", "gpu"]},
                "unit": {"type": "string"},
                "cap": _NULLABLE_NUMBER,
                "enforced": {
                    **_NULLABLE_NUMBER,
                    "description": "What the kernel holds (live sandboxes only)",
                },
                "used": _NULLABLE_NUMBER,
                "verdict": {"enum": _AUDIT_VERDICTS},
                "note": {"type": "string"},
            },
        },
        "SandboxAudit": {
            "type": "object",
            "required": [
                "sandboxId",
                "agentId",
                "status",
                "source",
                "terminationReason",
                "caps",
                "enforced",
                "usage",
                "checks",
                "ok",
            ],
            "additionalProperties": False,
            "properties": {
                "sandboxId": ref("SandboxId"),
                "agentId": ref("AgentId"),
                "status": {"type": "string"},
                "source": {
                    "enum": ["live", "final", "lost"],
                    "description": "live: read from the kernel now; final: the record kept at destroy; "
                    "lost: the service stopped without destroying it",
                },
                "terminationReason": {"type": ["string", "null"]},
                "caps": {"type": "object"},
                "enforced": {"type": ["object", "null"]},
                "usage": {"type": "object"},
                "checks": {"type": "array", "items": ref("AuditCheck")},
                "ok": {
                    "type": "boolean",
                    "description": "false when the kernel holds other limits than the caps",
                },
            },
        },
        "HostFinding": {
            "type": "object",
            "required": ["kind", "name", "state", "instance", "owner", "detail"],
            "additionalProperties": False,
            "properties": {
                "kind": {"enum": ["cgroup", "mount", "netns", "link", "process"]},
                "name": {"type": "string"},
                "state": {"enum": ["known", "orphaned"]},
                "instance": {"type": ["string", "null"]},
                "owner": {"type": ["string", "null"]},
                "detail": {"type": "object"},
            },
        },
        "HostAudit": {
            "type": "object",
            "required": ["mode", "instance", "services", "findings", "orphans", "known"],
            "additionalProperties": False,
            "properties": {
                "mode": {"enum": ["online", "offline"]},
                "instance": {"type": ["string", "null"]},
                "services": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["pid", "instance", "stateDir"],
                        "additionalProperties": False,
                        "properties": {
                            "pid": {"type": "integer", "minimum": 1},
                            "instance": {"type": "string"},
                            "stateDir": {"type": "string"},
                        },
                    },
                },
                "findings": {"type": "array", "items": ref("HostFinding")},
                "orphans": NON_NEGATIVE_INT,
                "known": NON_NEGATIVE_INT,
            },
        },
    }
)
