"""Schemas of what the admin tool asks beyond the seed's API: status, cycles, live samples,
the orphan sweep, sandbox and host audits."""

from __future__ import annotations

from typing import Any

from .base import NON_NEGATIVE_INT, listing, paged, ref
from .sandboxes import _NULLABLE_NUMBER

_COUNTS = {"type": "object", "additionalProperties": NON_NEGATIVE_INT}
_NULLABLE_COUNT = {"anyOf": [NON_NEGATIVE_INT, {"type": "null"}]}
_AUDIT_VERDICTS = ["within", "hit", "throttled", "full", "mismatch", "unknown"]

ADMIN: dict[str, dict[str, Any]] = {
    "WarmPoolProfile": {
        "type": "object",
        "required": [
            "size",
            "idle",
            "warming",
            "hits",
            "misses",
            "warmups",
            "warmupMsP50",
            "memoryMB",
            "imports",
        ],
        "additionalProperties": False,
        "properties": {
            "size": {**NON_NEGATIVE_INT, "description": "Warm sandboxes the pool keeps ready"},
            "idle": {**NON_NEGATIVE_INT, "description": "Ready now, waiting for a cycle"},
            "warming": {**NON_NEGATIVE_INT, "description": "Being created and importing"},
            "hits": {**NON_NEGATIVE_INT, "description": "Cycles a warm sandbox served"},
            "misses": {**NON_NEGATIVE_INT, "description": "Cycles of this profile that went cold"},
            "warmups": NON_NEGATIVE_INT,
            "warmupMsP50": {**_NULLABLE_NUMBER, "description": "Median time to create one and import"},
            "memoryMB": NON_NEGATIVE_INT,
            "imports": {"type": "array", "items": {"type": "string"}},
        },
    },
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
            "warmPool": {
                "anyOf": [
                    {"type": "object", "additionalProperties": ref("WarmPoolProfile")},
                    {"type": "null"},
                ],
                "description": "The warm pool per profile (WARM_POOL); null when it is off",
            },
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
                "required": ["queued", "running", "maxConcurrent", "slotsInUse", "byStatus"],
                "additionalProperties": False,
                "properties": {
                    "queued": {**NON_NEGATIVE_INT, "description": "The queue depth"},
                    "running": NON_NEGATIVE_INT,
                    "maxConcurrent": NON_NEGATIVE_INT,
                    "slotsInUse": {**NON_NEGATIVE_INT, "description": "Cycles holding a slot now"},
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
            "shutdownGraceSeconds": {"type": "number", "minimum": 0},
            "admission": {
                "type": ["object", "null"],
                "description": "Committed to live sandboxes against the host budget (memoryMB, cpuCores, "
                "gpus: {committed, budget}), the per-agent quota and each agent's share",
            },
        },
    },
    "CycleList": paged("cycles", "CycleStatus"),
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
    "NodeList": {
        "type": "object",
        "required": ["executor", "nodes", "count"],
        "additionalProperties": False,
        "properties": {
            "executor": {"enum": ["local", "ray"]},
            "nodes": {"type": "array", "items": ref("Node")},
            "count": NON_NEGATIVE_INT,
        },
    },
    "Node": {
        "type": "object",
        "required": [
            "nodeId",
            "name",
            "address",
            "alive",
            "slotsTotal",
            "slotsInUse",
            "gpus",
            "runningCycles",
            "lastHeartbeat",
        ],
        "additionalProperties": False,
        "properties": {
            "nodeId": {"type": "string"},
            "name": {"type": "string"},
            "address": {"type": ["string", "null"]},
            "alive": {"type": "boolean"},
            "preflightOk": {"type": ["boolean", "null"]},
            "slotsTotal": NON_NEGATIVE_INT,
            "slotsInUse": NON_NEGATIVE_INT,
            "gpus": NON_NEGATIVE_INT,
            "runningCycles": {"type": "array", "items": {"type": "string"}},
            "completedCycles": NON_NEGATIVE_INT,
            "lastHeartbeat": {
                "type": ["integer", "null"],
                "description": "ms since the epoch its agent last answered",
            },
        },
    },
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
