"""A synchronous handle on a SandboxManager with a WarmPool, for tests: SyncManager's API,
where every execute() runs in a fresh warm sandbox (a pool hit), through its zygote, and
that sandbox is destroyed afterwards. So the sandbox batteries' probes, which take a
sandbox and execute commands in it, run unchanged against pooled sandboxes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from runtime.pool import WarmPool, WarmProfile
from runtime.sandbox import ExecResult, ResourceCaps
from tests.helpers import wait_until
from tests.sandboxes import SyncManager

CAPS = ResourceCaps(cpu_cores=1.0, memory_mb=1024, pids=128, storage_mb=128)


@dataclasses.dataclass
class PooledBox:
    """Stands for "a sandbox" in a probe: the last warm sandbox an execute used."""

    id: str = "pooled"
    uid: int | None = None
    init_pid: int | None = None
    binds: tuple = ()  # attached to each warm sandbox an execute takes


class PooledSandboxes(SyncManager):
    def __init__(self, state_dir: Path, size: int = 2, caps: ResourceCaps = CAPS, **kwargs) -> None:
        super().__init__(state_dir, **kwargs)
        self.profile = WarmProfile("numpy", caps, size=size)
        self.pool: WarmPool = self.call(self._pool())
        self.hits = 0

    async def _pool(self) -> WarmPool:
        pool = WarmPool(self.manager, [self.profile])
        pool.start()
        return pool

    def wait_warm(self, count: int = 1) -> None:
        wait_until(lambda: self.pool.idle_count("numpy") >= count, 120, "warm sandboxes ready")

    def acquire(self, agent_id: str = "test-agent"):
        self.wait_warm()
        warm = self.call(self.pool.acquire("numpy", agent_id))
        assert warm is not None, "a warm sandbox was ready but acquire missed"
        self.hits += 1
        return warm

    def create(self, spec=None, **spec_fields) -> PooledBox:
        assert set(spec_fields) <= {"binds"}, "a warm sandbox has its profile's caps"
        return PooledBox(binds=tuple(spec_fields.get("binds", ())))

    def execute(self, sandbox: PooledBox, argv: list[str], *, binds=(), **kwargs) -> ExecResult:
        binds = (*sandbox.binds, *binds)
        assert not kwargs.pop("stdin", b""), "a warm sandbox's stdin is its job channel"
        if argv[:4] == ["python", "-I", "-S", "-c"]:
            argv = ["python", "-c", *argv[4:]]  # in the zygote's own interpreter
        warm = self.acquire()
        sandbox.id, sandbox.uid, sandbox.init_pid = warm.id, warm.sandbox.uid, warm.sandbox.init_pid
        return self.call(
            warm.run(list(binds), argv, timeout_s=kwargs.pop("timeout_s", 60.0), **kwargs)
        ).result

    def destroy(self, sandbox, reason: str = "killed") -> dict:
        return {}

    def close(self) -> None:
        try:
            self.call(self.pool.close())
        finally:
            super().close()
