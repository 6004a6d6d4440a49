"""The service's words, defined once: cycle statuses, why a cycle failed, how a round ended,
model families, id patterns and cap bounds. Schemas, services and error messages take their
lists from here; an error message names the allowed words, never a regex."""

from __future__ import annotations

import re
from enum import StrEnum

from runtime.reasons import RUN_ENDS, TerminationReason

__all__ = [
    "TerminationReason",
    "CycleStatus",
    "FailureReason",
    "RoundOutcome",
    "ClosedBy",
    "ModelFamily",
    "SandboxStatus",
    "names",
]


def names(words) -> str:
    """'a, b or c': an enum's (or any list's) values for an error message."""
    values = [str(w) for w in words]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


class CycleStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    AGGREGATED = "aggregated"


# A cycle in one of these still holds (or waits for) a slot.
ACTIVE_STATUSES = (CycleStatus.QUEUED, CycleStatus.RUNNING, CycleStatus.RETRYING)
RUNNING_STATUSES = (CycleStatus.RUNNING, CycleStatus.RETRYING)


class FailureReason(StrEnum):
    """A failed cycle's error.reason: the runtime's termination reasons and the service's own."""

    TIMEOUT = TerminationReason.TIMEOUT.value
    MEMORY_LIMIT = TerminationReason.MEMORY_LIMIT.value
    PIDS_LIMIT = TerminationReason.PIDS_LIMIT.value
    STORAGE_LIMIT = TerminationReason.STORAGE_LIMIT.value
    LIFETIME = TerminationReason.LIFETIME.value
    KILLED = TerminationReason.KILLED.value
    CRASHED = "crashed"
    BAD_OUTPUT = "bad_output"  # the program's /out broke the contract: never retried, never aggregated
    SANDBOX_START = "sandbox_start"
    OVER_BUDGET = "over_budget"  # the host's admission budget could never hold the job's caps
    INTERNAL = "internal"
    LOST = "lost"
    INTERRUPTED = "interrupted"
    STALE_BASE = "stale_base"
    ROUND_EXPIRED = "round_expired"
    MODEL_DELETED = "model_deleted"
    NODE_LOST = "node_lost"  # executor ray: the node running the attempt died or left


# Ends of a cycle that retrying cannot fix: a cap was hit or someone killed it.
NOT_RETRIED = tuple(FailureReason(r.value) for r in RUN_ENDS)


class RoundOutcome(StrEnum):
    """What happened to a completed cycle's update (its result.round.outcome)."""

    COMMITTED = "committed"
    REJECTED = "rejected"
    EXCLUDED = "excluded"  # screened out before aggregation (its result.screening says why)


class ClosedBy(StrEnum):
    """Why a round closed: enough clients, its deadline with minClients, or its deadline with
    fewer (allowPartial)."""

    THRESHOLD = "threshold"
    DEADLINE = "deadline"
    PARTIAL = "partial"


class ModelFamily(StrEnum):
    LINEAR = "linear"
    LOGISTIC = "logistic"
    SOFTMAX = "softmax"
    MLP = "mlp"


class SandboxStatus(StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"
    DEAD = "dead"


# ---- JSON spelling ----


def camel_key(name: str) -> str:
    """`memory_mb` -> `memoryMB`, `duration_ms` -> `durationMs`: a Python name as the API spells it."""
    head, *rest = name.split("_")
    return head + "".join("MB" if part == "mb" else part.capitalize() for part in rest)


def camel_keys(value):
    """A JSON-ready value with every object key in camelCase (records from runtime and kernels)."""
    if isinstance(value, dict):
        return {camel_key(k) if isinstance(k, str) else k: camel_keys(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [camel_keys(v) for v in value]
    return value


# ---- ids and names ----
# Ids travel in URLs and may end up in file or cgroup names: no '/', no leading '.', no ':'.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ID_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
MODEL_LABEL = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
# A built-in family's model (family or family:name), or a model with its own program: a plain
# name (no colon) registered with POST /v1/petals/models as multipart.
MODEL_NAME_PATTERN = rf"^(({'|'.join(ModelFamily)})(:{MODEL_LABEL})?|{MODEL_LABEL})$"
MODEL_NAME_RULE = (
    f"a model family ({names(ModelFamily)}), optionally named as family:name, or the name of a "
    "model with its own program (names of 1 to 64 letters, digits, '.', '_' or '-')"
)
FAMILY_MODEL_NAME = re.compile(rf"^({'|'.join(ModelFamily)})(:{MODEL_LABEL})?$")
MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
SANDBOX_ID_PATTERN = r"^sb-[0-9a-f]{12}$"
DATASET_ID_PATTERN = r"^ds-[0-9a-f]{12}$"
DATASET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

AUDIT_KIND_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
NO_NUL_PATTERN = "^[^\\u0000]*$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# Each pattern in words, for error messages: they name what is allowed, never the regex.
PATTERN_RULES = {
    ID_PATTERN: ID_RULE,
    MODEL_NAME_PATTERN: MODEL_NAME_RULE,
    SANDBOX_ID_PATTERN: "'sb-' and 12 lowercase hex digits",
    DATASET_ID_PATTERN: "'ds-' and 12 lowercase hex digits",
    DATASET_NAME_PATTERN: "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit",
    SHA256_PATTERN: "64 lowercase hex digits",
    AUDIT_KIND_PATTERN: "1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a letter",
    NO_NUL_PATTERN: "any characters but NUL",
    ENV_NAME_PATTERN: "1 to 128 letters, digits or '_', not starting with a digit",
}

# ---- cap bounds (what any request may ask; a host's resourceLimits may allow less) ----
CPU_CORES_MAX = 1024
MEMORY_MB_MIN = 16
MEMORY_MB_MAX = 262144
GPU_COUNT_MAX = 64
STORAGE_MB_MAX = 1048576
LIFETIME_S_MAX = 604800
# Epochs one training job may ask for (trainingParams.epochs), and so PETALS_DEFAULT_EPOCHS too.
EPOCHS_MAX = 1000

# ---- round policy bounds ----
MIN_CLIENTS_MAX = 10000
ROUND_SECONDS_MAX = 86400.0
