"""Supervision of one manager's sandboxes: a periodic pass that reaps sandboxes past
their lifetime (a backstop for the per-sandbox timers), destroys sandboxes whose
init died, and sweeps orphaned cgroups and netns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from .sandbox import SandboxManager

log = logging.getLogger("wondercraft.supervisor")
DESTROY_WAIT_S = 30.0


@dataclass
class SweepReport:
    expired: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    orphans: dict = field(default_factory=dict)


async def supervise_once(manager: SandboxManager) -> SweepReport:
    report = SweepReport()
    report.expired = await manager.reap_expired()
    for sandbox in manager.list():
        if sandbox.status == "running" and not sandbox.alive:
            report.dead.append(sandbox.id)
            await manager.destroy(sandbox.id, reason="killed")
        elif sandbox.status in ("dead", "destroying"):
            # Its init's watcher got there first (and names the reason): the pass ends
            # once that destroy has.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sandbox._destroyed.wait(), DESTROY_WAIT_S)
    report.orphans = await manager.sweep_orphans()
    for sandbox in manager.list():
        if sandbox.status == "destroyed":
            manager.forget(sandbox.id)  # its record lives in the store
    return report


class Supervisor:
    """Runs `supervise_once` every `interval_s` until stopped."""

    def __init__(self, manager: SandboxManager, interval_s: float) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                report = await supervise_once(self.manager)
                if report.expired or report.dead:
                    log.info("supervisor pass", extra={"expired": report.expired, "dead": report.dead})
            except Exception:
                log.exception("supervisor pass failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
