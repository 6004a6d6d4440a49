"""Where an attempt of a learn cycle runs: `local` (this host's sandbox manager, the default)
or `ray` (a Ray task on a node of a cluster, server/fleet/). The training service calls one
executor and never knows which: rounds, retries, aggregation and the model store stay with
it either way. Selected by WONDERCRAFT_EXECUTOR; the local one needs no Ray."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from runtime.pool import WarmPool
from runtime.sandbox import SandboxManager

from ..config import Settings
from .runner import AttemptSpec, CycleOutcome, Progress, run_attempt


class Executor(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def run(
        self,
        spec: AttemptSpec,
        *,
        on_sandbox: Callable[[str], None],
        on_progress: Callable[[Progress], None],
        on_node: Callable[[str], None],
    ) -> CycleOutcome: ...

    async def nodes(self) -> list[dict]: ...


class LocalExecutor:
    """Every attempt in a sandbox of this host: a warm one from `pool` when it has one that
    fits, else a cold one."""

    name = "local"

    def __init__(self, settings: Settings, sandboxes: SandboxManager, pool: WarmPool | None = None) -> None:
        self.settings = settings
        self.sandboxes = sandboxes
        self.pool = pool

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def run(self, spec, *, on_sandbox, on_progress, on_node) -> CycleOutcome:
        return await run_attempt(
            self.settings,
            self.sandboxes,
            spec,
            on_sandbox=on_sandbox,
            on_progress=on_progress,
            pool=self.pool,
        )

    async def nodes(self) -> list[dict]:
        return []


def executor_from(settings: Settings, sandboxes: SandboxManager, pool: WarmPool | None = None) -> Executor:
    """The executor WONDERCRAFT_EXECUTOR names; Ray is imported only when it is `ray` (whose
    nodes run their cycles cold: the warm pool is this host's)."""
    if settings.executor == "ray":
        from ..fleet.executor import RayExecutor

        return RayExecutor(settings)
    return LocalExecutor(settings, sandboxes, pool)
