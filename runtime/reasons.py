"""Why the runtime ended a sandbox or one of its runs: the one list the runtime, the service's
schemas and the admin tool share. Kept free of any import so every layer may use it."""

from __future__ import annotations

from enum import StrEnum


class TerminationReason(StrEnum):
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    PIDS_LIMIT = "pids_limit"
    STORAGE_LIMIT = "storage_limit"
    LIFETIME = "lifetime"
    KILLED = "killed"
    DESTROYED = "destroyed"
    LOST = "lost"


# Ends a run can meet while its sandbox lives on (destroyed and lost end the sandbox itself).
RUN_ENDS = tuple(
    r for r in TerminationReason if r not in (TerminationReason.DESTROYED, TerminationReason.LOST)
)
