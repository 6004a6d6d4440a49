"""Schemas of the sandbox API: create, execute, status, the kernel's resource usage."""

from __future__ import annotations

from typing import Any

from ... import vocabulary as words
from ...vocabulary import ENV_NAME_PATTERN, NO_NUL_PATTERN, SANDBOX_ID_PATTERN
from .base import NON_NEGATIVE_INT, paged, ref

_CPU = {
    "type": "number",
    "exclusiveMinimum": 0,
    "maximum": words.CPU_CORES_MAX,
    "description": "CPU cores (fractions allowed)",
}
_MEMORY = {
    "type": "integer",
    "minimum": words.MEMORY_MB_MIN,
    "maximum": words.MEMORY_MB_MAX,
    "description": "Memory in MB",
}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
TERMINATION_REASONS = [str(r) for r in words.TerminationReason]

SANDBOXES: dict[str, dict[str, Any]] = {
    "SandboxId": {"type": "string", "pattern": SANDBOX_ID_PATTERN, "description": "A sandbox's id"},
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
                    "gpu": {"type": "integer", "minimum": 0, "maximum": words.GPU_COUNT_MAX},
                },
            },
            "trainingConfig": ref("PetalTrainingRequest"),
            "network": {"enum": ["isolated"], "description": "isolated: loopback only (the default)"},
            "storageMB": {"type": "integer", "minimum": 1, "maximum": words.STORAGE_MB_MAX},
            "lifetimeSeconds": {"type": "integer", "minimum": 1, "maximum": words.LIFETIME_S_MAX},
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
                "items": {"type": "string", "maxLength": 65536, "pattern": NO_NUL_PATTERN},
                "description": "argv: the program and its arguments (no shell)",
            },
            "timeoutSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
            "env": {
                "type": "object",
                "maxProperties": 128,
                "propertyNames": {"pattern": ENV_NAME_PATTERN},
                "additionalProperties": {
                    "type": "string",
                    "maxLength": 65536,
                    "pattern": NO_NUL_PATTERN,
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
            "status": {"enum": [str(s) for s in words.SandboxStatus]},
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
    "SandboxList": paged("sandboxes", "Sandbox"),
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
}
