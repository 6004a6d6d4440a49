"""The JSON Schemas (2020-12) of every request and answer body: the `components.schemas` of
the OpenAPI document, and what requests and emitted events are validated against. One module
per area; a new endpoint's types go in its area's module, its operation beside its handler."""

from __future__ import annotations

from typing import Any

from .admin import ADMIN
from .base import (
    AGENT_ID,
    AUDIT_KIND_PATTERN,
    CYCLE_ID,
    LIMIT,
    MAX_LIST_LIMIT,
    MAX_SEQ,
    MAX_TIMESTAMP_MS,
    MODEL_NAME,
    NON_NEGATIVE_INT,
    SEQ,
    TELEMETRY_EVENT_KINDS,
    TIMESTAMP_MS,
    extended,
    listing,
    nullable,
    ref,
)
from .core import CORE
from .datasets import DATASET_ID, DATASET_ID_PATTERN, DATASET_NAME, DATASETS
from .petals import CYCLE_STATUSES, PETALS
from .sandboxes import SANDBOXES, TERMINATION_REASONS

COMPONENTS: dict[str, dict[str, Any]] = {**CORE, **DATASETS, **SANDBOXES, **PETALS, **ADMIN}

__all__ = [
    "AGENT_ID",
    "AUDIT_KIND_PATTERN",
    "COMPONENTS",
    "CYCLE_ID",
    "CYCLE_STATUSES",
    "DATASET_ID",
    "DATASET_ID_PATTERN",
    "DATASET_NAME",
    "LIMIT",
    "MAX_LIST_LIMIT",
    "MAX_SEQ",
    "MAX_TIMESTAMP_MS",
    "MODEL_NAME",
    "NON_NEGATIVE_INT",
    "SEQ",
    "TELEMETRY_EVENT_KINDS",
    "TERMINATION_REASONS",
    "TIMESTAMP_MS",
    "extended",
    "listing",
    "nullable",
    "ref",
]
