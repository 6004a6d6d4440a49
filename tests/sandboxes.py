"""A synchronous handle on a SandboxManager for tests: the manager's event loop runs
in one background thread for the whole module (launchers die with the thread that
started them, so one long-lived thread keeps them alive)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from runtime.sandbox import ExecResult, Sandbox, SandboxManager, SandboxSpec
from tests.leftovers import RUN


class SyncManager:
    def __init__(self, state_dir: Path, **kwargs) -> None:
        RUN.register_state_dir(state_dir)
        if kwargs.get("instance"):
            RUN.register_instance(kwargs["instance"])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbox-loop", daemon=True)
        self._thread.start()
        self.manager: SandboxManager = self.call(self._make(state_dir, kwargs))

    @staticmethod
    async def _make(state_dir: Path, kwargs: dict) -> SandboxManager:
        manager = SandboxManager(state_dir, **kwargs)
        await manager.start()
        return manager

    def call(self, coroutine, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def create(self, spec: SandboxSpec | None = None, **spec_fields) -> Sandbox:
        return self.call(self.manager.create(spec or SandboxSpec(agent_id="test-agent", **spec_fields)))

    def execute(self, sandbox: Sandbox, argv: list[str], **kwargs) -> ExecResult:
        return self.call(self.manager.execute(sandbox.id, argv, **kwargs))

    def sh(self, sandbox: Sandbox, script: str, **kwargs) -> ExecResult:
        return self.execute(sandbox, ["sh", "-c", script], **kwargs)

    def destroy(self, sandbox: Sandbox, reason: str = "killed") -> dict:
        return self.call(self.manager.destroy(sandbox.id, reason=reason))

    def close(self) -> None:
        try:
            self.call(self.manager.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
