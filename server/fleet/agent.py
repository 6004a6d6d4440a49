"""The runtime of one Ray node: a detached actor, pinned to its node, that owns the node's
sandbox manager (one per host, like the service's: one uid pool, one admission budget, one
orphan sweep). A learn-cycle task that lands on the node hands its attempt to this actor, which
fetches what its cache lacks, rebuilds the bind layout from the cache and runs the same
`run_attempt` the local executor runs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from runtime.sandbox import SandboxManager

from ..app import admission_from
from ..config import Settings, load_settings
from ..training.runner import AttemptSpec, CycleOutcome, Progress, run_attempt
from .cas import Content, NodeCache
from .names import NAMESPACE, SLOT, agent_name  # noqa: F401 - re-exported for the node side


class RemappedSandboxes:
    """The node's sandbox manager as run_attempt sees it: each bind whose source lies in a
    shipped content of the service's host is mounted from that content's copy in the cache.
    Whatever binds the runner builds, the layout inside the sandbox stays the same."""

    def __init__(self, manager: SandboxManager, where: dict[str, Path]) -> None:
        self._manager = manager
        self._where = where

    def _local(self, source: str) -> str:
        for shipped, local in self._where.items():
            if source == shipped:
                return str(local)
            if source.startswith(shipped.rstrip("/") + "/"):
                return str(local / source[len(shipped.rstrip("/")) + 1 :])
        raise ValueError(f"bind source {source} was not shipped to this node")

    async def create(self, spec, sandbox_id=None):
        binds = tuple(dataclasses.replace(b, source=self._local(b.source)) for b in spec.binds)
        return await self._manager.create(dataclasses.replace(spec, binds=binds), sandbox_id)

    def __getattr__(self, name):
        return getattr(self._manager, name)


class NodeAgent:
    """One per node (named agent_name(node id)); async, so cycles run side by side."""

    def __init__(self, state_dir: str, node_name: str, slots: int, gpus: int, preflight_ok: bool) -> None:
        self.settings = load_settings()  # this node's own budget, uids and rootfs
        settings = self.settings
        self.state_dir = Path(state_dir)
        self.node_name = node_name
        self.slots, self.gpus, self.preflight_ok = slots, gpus, preflight_ok
        self.manager = SandboxManager(
            self.state_dir,
            rootfs_image=Path(settings.rootfs_image) if settings.rootfs_image else None,
            output_limit_bytes=settings.sandbox_output_limit_bytes,
            admission=admission_from(settings),
            uid_range=settings.sandbox_uid_range,
            service_reserve_bytes=settings.sandbox_service_reserve_mb << 20,
        )
        self.cache = NodeCache(self.state_dir / "cas")
        self.running: dict[str, dict] = {}
        self.fetched: dict[str, int] = {}  # sha256 -> bytes, each fetched from the object store once
        self.completed = 0
        self.started_at = time.time()
        self._locks: dict[str, asyncio.Lock] = {}
        self._swept: dict | None = None

    async def start(self) -> dict:
        """Builds the sandbox layer and sweeps what an earlier run of this node left."""
        if self._swept is None:
            self._swept = await self.manager.start()
        return self._swept

    async def _ensure(self, content: Content, refs: list) -> Path:
        lock = self._locks.setdefault(content.sha256, asyncio.Lock())
        async with lock:
            if self.cache.has(content):
                return self.cache.path(content)
            data = await refs[0]  # from the object store, once per content per node
            path = await asyncio.to_thread(self.cache.store, content, data)
            self.fetched[content.sha256] = len(data)
            return path

    async def run(
        self, settings: Settings, spec: AttemptSpec, shipped: list[tuple[Content, list]]
    ) -> CycleOutcome:
        await self.start()
        where = {content.source: await self._ensure(content, refs) for content, refs in shipped}
        entry = {"cycleId": spec.cycle_id, "attempt": spec.attempt, "sandboxId": None, "progress": None,
                 "startedAt": time.time()}  # fmt: skip
        self.running[spec.cycle_id] = entry

        def on_sandbox(sandbox_id: str) -> None:
            entry["sandboxId"] = sandbox_id

        def on_progress(progress: Progress) -> None:
            entry["progress"] = progress.as_json()

        started = time.perf_counter()
        try:
            outcome = await run_attempt(
                settings, RemappedSandboxes(self.manager, where), spec,
                on_sandbox=on_sandbox, on_progress=on_progress,
            )  # fmt: skip
        finally:
            self.running.pop(spec.cycle_id, None)
        self.completed += 1
        outcome.result = {**outcome.result, "node": self.node_name,
                          "attemptSeconds": time.perf_counter() - started}  # fmt: skip
        return outcome

    def status(self) -> dict:
        return {
            "node": self.node_name,
            "slotsTotal": self.slots,
            "gpus": self.gpus,
            "preflightOk": self.preflight_ok,
            "running": [dict(e) for e in self.running.values()],
            "completed": self.completed,
            "fetched": dict(self.fetched),
            "sandboxes": len(self.manager.list()),
            "now": time.time(),
        }

    async def drain(self, timeout_s: float) -> int:
        """Waits (at most timeout_s) until no cycle runs here; the number still running."""
        deadline = time.monotonic() + timeout_s
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return len(self.running)
