"""Pre-warmed sandboxes: per resource profile, a few sandboxes already created, each with
a zygote (rootfs/wc_zygote.py) that has numpy (and torch, when the profile asks) and the
learn helper imported and waits for one job.

A learn cycle takes one (`acquire`); its inputs are attached read-only to the running
sandbox (runtime/attach.py), the job goes to the zygote, and the sandbox is destroyed when
the cycle ends (`WarmSandbox.run`). A warm sandbox serves exactly one cycle, for exactly
one agent, and is never reused. A miss (`acquire` returns None) means: take the cold path.

Everything else is a cold sandbox's: the sandbox is made by SandboxManager.create (caps,
cgroup, its own uid, netns, admission), the zygote is an execution like any other (wc-init
exec: caps dropped, no_new_privs, seccomp), and the audit row is written when the cycle
takes the sandbox, under the cycle's agent. The resource record covers the cycle only: the
zygote's counters at job start (CPU, I/O) are subtracted and the wall time starts there;
memory peaks include the imported libraries, as a cold cycle's do.

Idle warm sandboxes count against the admission budget under the pool's own agent; real
work evicts them when it would not fit (SandboxManager.reclaim), and refills back off
while the budget is full."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import attach, mounts
from .admission import HOST_CPU, HOST_GPUS, HOST_MEMORY, AdmissionRefused
from .errors import InvalidSpec, SandboxError, SandboxNotRunning
from .sandbox import ExecResult, Execution, ResourceCaps, Sandbox, SandboxManager, SandboxSpec

log = logging.getLogger("wondercraft.runtime.pool")

POOL_AGENT = "warm-pool"
ZYGOTE = f"{mounts.PROGRAM_DIR}/wc_zygote.py"
READY = "wondercraft-zygote: ready"
WARMUP_TIMEOUT_S = 120.0
REFILL_BACKOFF_S = 2.0
# A cycle that asks for less memory than its profile takes a warm sandbox only if this much
# stays free above what the zygote already holds.
RETUNE_HEADROOM_BYTES = 16 << 20
# Counters of a cumulative kind, subtracted from a cycle's record at job start.
CUMULATIVE = (
    "cpu_user_s",
    "cpu_system_s",
    "cpu_nr_throttled",
    "cpu_throttled_s",
    "io_read_bytes",
    "io_write_bytes",
)
PROFILE_IMPORTS = {"numpy": ("numpy", "wondercraft_learn"), "torch": ("numpy", "torch", "wondercraft_learn")}


@dataclass(frozen=True)
class WarmProfile:
    """Warm sandboxes of one shape: caps, the modules pre-imported, how many, how long idle."""

    name: str
    caps: ResourceCaps = field(default_factory=ResourceCaps)
    imports: tuple[str, ...] = PROFILE_IMPORTS["numpy"]
    size: int = 0
    idle_s: float = 600.0
    env: Mapping[str, str] = field(default_factory=dict)


def parse_profiles(text: str, caps: ResourceCaps, idle_s: float = 600.0) -> list[WarmProfile]:
    """ "numpy=2,torch=1" -> profiles (numpy: numpy and the learn helper; torch: torch too),
    all with `caps`. An empty text is no profile (the pool is off)."""
    profiles = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, size = entry.partition("=")
        if name not in PROFILE_IMPORTS or not size.isdigit() or int(size) > 64:
            raise InvalidSpec(f"warm pool entry {entry!r}: expected numpy=N or torch=N, N between 0 and 64")
        profiles.append(WarmProfile(name, caps, PROFILE_IMPORTS[name], int(size), idle_s))
    return profiles


def _subtract(after: Mapping, before: Mapping) -> dict:
    out = dict(after)
    for key in CUMULATIVE:
        if isinstance(after.get(key), int | float) and isinstance(before.get(key), int | float):
            out[key] = max(0, round(after[key] - before[key], 6))
    return out


# What a cycle's caller reads from its sandbox after the program ended and before the
# sandbox is destroyed (a learn cycle's /out): called with the sandbox and the result.
Collect = Callable[[Sandbox, ExecResult], Awaitable[Any]]


class CycleRun(NamedTuple):
    """One cycle's sandbox run: the result, whether a warm sandbox served it, and what
    `collect` returned (None without one)."""

    result: ExecResult
    warm: bool
    collected: Any = None


class WarmSandbox:
    """One pre-created sandbox whose zygote waits for one job."""

    def __init__(self, pool: WarmPool, profile: WarmProfile, sandbox: Sandbox) -> None:
        self.pool = pool
        self.profile = profile
        self.sandbox = sandbox
        self.execution: Execution | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self._job: asyncio.Future = asyncio.get_running_loop().create_future()
        self.warmup_ms: float | None = None
        self.idle_since = time.monotonic()
        self.taken = False
        self.timings_ms: dict[str, float] = {}  # where run() spent its time before the job went
        self._on_cycle_stderr: Callable[[str], None] | None = None

    @property
    def id(self) -> str:
        return self.sandbox.id

    async def _feed(self, stdin: asyncio.StreamWriter) -> None:
        """The zygote's stdin: one job line once a cycle sends it, then closed."""
        line = await self._job
        if line:
            stdin.write(line)
            await stdin.drain()

    def _on_stderr(self, line: str) -> None:
        if self._on_cycle_stderr is not None:
            self._on_cycle_stderr(line)
        elif line == READY and not self.ready.done():
            self.ready.set_result(None)

    @property
    def alive(self) -> bool:
        return self.sandbox.alive and self.execution is not None and self.execution.running

    async def run(
        self,
        binds: Sequence[mounts.Bind],
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        workdir: str = mounts.WORK_DIR,
        on_stderr_line: Callable[[str], None] | None = None,
        destroy_reason: str = "destroyed",
        collect: Collect | None = None,
    ) -> CycleRun:
        """Attach `binds` read-only, run argv in the zygote, then `collect` (what the cycle
        left in the sandbox), then destroy the sandbox. The result is SandboxManager.execute's,
        its usage covering this cycle only; usage["sandbox_record"] holds the sandbox's final
        record (destroy's). Raises SandboxError (the sandbox is gone then too) when the
        sandbox died while idle or an input cannot be attached."""
        manager = self.pool.manager
        result = collected = None
        mark = time.perf_counter()
        try:
            if not self.alive or self._job.done():
                raise SandboxNotRunning(f"warm sandbox {self.id} is no longer waiting for a job")
            if binds:
                await attach.attach_read_only_async(self.sandbox.init_pid, list(binds))
            mark = self._lap("warm_attach", mark)
            environment = manager._environment(self.sandbox, {**self.profile.env, **(env or {})})
            job = json.dumps({"argv": list(argv), "env": environment, "cwd": workdir}).encode() + b"\n"
            execution = self.execution
            before = execution.cgroup.usage().as_dict() if execution.cgroup is not None else {}
            began = time.monotonic()
            self._on_cycle_stderr = on_stderr_line or (lambda line: None)
            self._job.set_result(job)
            self._lap("warm_job_sent", mark)
            try:
                await asyncio.wait_for(asyncio.shield(execution.task), timeout_s)
            except TimeoutError:
                execution.ending_reason = "timeout"
                execution.end_requested.set()
            result = self._cycle_result(await manager.end_background(self.id, execution.id), before, began)
            if collect is not None:
                collected = await collect(self.sandbox, result)
        finally:
            record = await self.pool._discard(self, destroy_reason)
        result.usage["sandbox_record"] = record
        return CycleRun(result, True, collected)

    def _lap(self, step: str, since: float) -> float:
        now = time.perf_counter()
        self.timings_ms[step] = round((now - since) * 1000, 3)
        return now

    def _cycle_result(self, result: ExecResult, before: dict, began: float) -> ExecResult:
        usage = dict(result.usage)
        cgroup = _subtract(usage.get("cgroup") or {}, before)
        usage["cgroup"] = cgroup
        # The CPU of this cycle is the execution cgroup's growth since the job was sent.
        # wait4()'s figures for the zygote include its warm-up and are computed by another
        # clock than the cgroup's, so the two are never subtracted from each other.
        for key in ("cpu_user_s", "cpu_system_s"):
            if isinstance(cgroup.get(key), int | float) and isinstance(before.get(key), int | float):
                usage[key] = cgroup[key]
        if usage.get("cpu_user_s") is not None or usage.get("cpu_system_s") is not None:
            usage["cpu_s"] = (usage.get("cpu_user_s") or 0.0) + (usage.get("cpu_system_s") or 0.0)
        wall_s = round(time.monotonic() - began, 6)
        usage["wall_s"] = wall_s
        usage["warm"] = {"profile": self.profile.name, "warmup_ms": self.warmup_ms}
        stderr = result.stderr
        ready = (READY + "\n").encode()
        if stderr.startswith(ready):
            stderr = stderr[len(ready) :]
        return dataclasses.replace(result, stderr=stderr, usage=usage, duration_ms=round(wall_s * 1000, 3))


class WarmPool:
    """Warm sandboxes per profile, refilled in the background."""

    def __init__(
        self,
        manager: SandboxManager,
        profiles: Sequence[WarmProfile],
        *,
        metrics=None,
        lifetime_s: float = 7200.0,
        output_limit_bytes: int | None = None,
    ) -> None:
        """metrics: the service's Metrics (warm_pool_* entries) or None; lifetime_s: the
        longest a warm sandbox lives, idle and cycle together (its sandbox lifetime);
        output_limit_bytes: the stdout/stderr cap of its cycles (the manager's default)."""
        self.output_limit_bytes = output_limit_bytes or manager.output_limit_bytes
        self.manager = manager
        self.profiles = {p.name: p for p in profiles if p.size > 0}
        self.metrics = metrics
        self.lifetime_s = lifetime_s
        self._idle: dict[str, list[WarmSandbox]] = {name: [] for name in self.profiles}
        self._warming: dict[str, int] = dict.fromkeys(self.profiles, 0)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()  # warm-ups and expiries under way
        self._closing = False
        self.stats = {name: {"hits": 0, "misses": 0, "warmups": 0, "warmupMs": []} for name in self.profiles}

    @property
    def enabled(self) -> bool:
        return bool(self.profiles)

    def start(self) -> None:
        """Start refilling (a background task; nothing here waits for a sandbox)."""
        if self.enabled and self._task is None:
            if self.manager.reclaim is None:
                self.manager.reclaim = self.reclaim
            self._task = asyncio.get_running_loop().create_task(self._refill_forever())

    async def close(self) -> None:
        """Stop refilling and destroy every idle warm sandbox."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for name in self.profiles:
            while self._idle[name]:
                await self._discard(self._idle[name].pop(), "killed")
        if self.manager.reclaim == self.reclaim:
            self.manager.reclaim = None

    # ------------------------------------------------------------ acquire --

    def fits(self, profile: str, caps: ResourceCaps) -> bool:
        """Whether a warm sandbox of `profile` can serve a cycle with `caps`: the same storage,
        GPUs and I/O caps, and cpu, memory and pids at most the profile's (they are tightened
        to the cycle's when it takes one)."""
        held = self.profiles.get(profile)
        return held is not None and caps.tightens(held.caps)

    async def acquire(
        self, profile: str, agent_id: str, caps: ResourceCaps | None = None
    ) -> WarmSandbox | None:
        """A warm sandbox of `profile` for `agent_id`, with `caps` when given (see fits), announced
        under that agent, or None (no such profile, none ready, the agent's quota refuses it, or
        the zygote holds too much memory for the cycle's cap): go cold then."""
        warm = None
        idle = self._idle.get(profile)
        while idle:
            candidate = idle.pop(0)
            if candidate.alive:
                warm = candidate
                break
            await self._discard(candidate, "killed")
        if warm is not None:
            try:
                taken = await self._hand_over(warm, agent_id, caps or warm.sandbox.spec.caps)
            except (SandboxError, OSError) as exc:
                log.warning(
                    "warm sandbox could not be handed over", extra={"sandbox_id": warm.id, "error": str(exc)}
                )
                await self._discard(warm, "killed")
                warm = None
            else:
                if not taken:
                    idle.insert(0, warm)
                    warm = None
        self._count(profile, "hits" if warm is not None else "misses")
        self._wake.set()
        return warm

    async def _hand_over(self, warm: WarmSandbox, agent_id: str, caps: ResourceCaps) -> bool:
        """Move the reservation and the sandbox to the cycle's agent (its quota applies), its
        caps tightened to the cycle's."""
        sandbox = warm.sandbox
        held = sandbox.spec.caps
        if caps != held:
            current = self.manager.usage(sandbox.id).memory_current_bytes
            if current is None or current + RETUNE_HEADROOM_BYTES > caps.memory_mb << 20:
                return False
        admission = self.manager.admission
        if admission is not None:
            admission.release(sandbox.id)
            try:
                admission.admit(
                    sandbox.id, agent_id, memory_mb=caps.memory_mb, cpu_cores=caps.cpu_cores,
                    gpus=caps.gpu_count, expires_at=sandbox.expires_at,
                )  # fmt: skip
            except AdmissionRefused:
                admission.admit(
                    sandbox.id, POOL_AGENT, memory_mb=held.memory_mb, cpu_cores=held.cpu_cores,
                    gpus=held.gpu_count, expires_at=sandbox.expires_at,
                )  # fmt: skip
                return False
        warm.taken = True
        if caps != held:
            self.manager.retune(sandbox, caps)
        sandbox.spec = dataclasses.replace(sandbox.spec, agent_id=agent_id)
        await self.manager.announce(sandbox)
        return True

    def count_miss(self, profile: str) -> None:
        self._count(profile, "misses")

    def _count(self, profile: str, what: str) -> None:
        if profile in self.stats:
            self.stats[profile][what] += 1
        if self.metrics is not None:
            getattr(self.metrics, f"warm_pool_{what}").labels(profile).inc()
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            for name, idle in self._idle.items():
                self.metrics.warm_pool_idle.labels(name).set(len(idle))

    def idle_count(self, profile: str) -> int:
        return len(self._idle.get(profile, ()))

    def status(self) -> dict:
        """For /metrics and ctl status: per profile its size, idle, warming and counters."""
        out = {}
        for name, profile in self.profiles.items():
            stats = self.stats[name]
            times = sorted(stats["warmupMs"])
            out[name] = {
                "size": profile.size, "idle": len(self._idle[name]), "warming": self._warming[name],
                "hits": stats["hits"], "misses": stats["misses"], "warmups": stats["warmups"],
                "warmupMsP50": times[len(times) // 2] if times else None,
                "memoryMB": profile.caps.memory_mb, "imports": list(profile.imports),
            }  # fmt: skip
        return out

    # ------------------------------------------------------------- evict --

    async def reclaim(self, refused: AdmissionRefused, agent_id: str) -> bool:
        """Real work comes first: destroy the longest-idle warm sandbox when a host budget
        refuses a create (never for the pool's own refills, nor for an agent's quota)."""
        if agent_id == POOL_AGENT or refused.budget not in (HOST_MEMORY, HOST_CPU, HOST_GPUS):
            return False
        candidates = [w for idle in self._idle.values() for w in idle]
        if not candidates:
            return False
        oldest = min(candidates, key=lambda w: w.idle_since)
        self._idle[oldest.profile.name].remove(oldest)
        await self._discard(oldest, "killed")
        return True

    async def _discard(self, warm: WarmSandbox, reason: str) -> dict | None:
        if not warm._job.done():
            warm._job.set_result(b"")
        try:
            record = await self.manager.destroy(warm.id, reason=reason)
        except SandboxError:
            record = None
        self.manager.forget(warm.id)
        self._wake.set()
        return record

    # ------------------------------------------------------------ refill --

    async def _refill_forever(self) -> None:
        while not self._closing:
            self._wake.clear()
            self._expire_idle()
            for name, profile in self.profiles.items():
                while len(self._idle[name]) + self._warming[name] < profile.size:
                    self._warming[name] += 1
                    task = asyncio.get_running_loop().create_task(self._warm_one(profile))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            next_expiry = min(
                (
                    w.idle_since + w.profile.idle_s - time.monotonic()
                    for idle in self._idle.values()
                    for w in idle
                ),
                default=60.0,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, next_expiry))

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for idle in self._idle.values():
            for warm in [w for w in idle if now - w.idle_since >= w.profile.idle_s or not w.alive]:
                idle.remove(warm)
                task = asyncio.get_running_loop().create_task(self._discard(warm, "lifetime"))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _warm_one(self, profile: WarmProfile) -> None:
        """Create one warm sandbox and wait for its zygote; on a full budget, back off."""
        warm = None
        try:
            began = time.monotonic()
            spec = SandboxSpec(agent_id=POOL_AGENT, caps=profile.caps, lifetime_s=self.lifetime_s)
            sandbox = await self.manager.create(spec, announce=False)
            warm = WarmSandbox(self, profile, sandbox)
            env = {"PYTHONPATH": mounts.PROGRAM_DIR, **profile.env}
            warm.execution = await self.manager.start_background(
                sandbox.id, ["python", ZYGOTE, ",".join(profile.imports)], env=env,
                stdin_source=warm._feed, on_stderr_line=warm._on_stderr,
                output_limit_bytes=self.output_limit_bytes,
            )  # fmt: skip
            done, _ = await asyncio.wait(
                (warm.ready, warm.execution.task),
                timeout=WARMUP_TIMEOUT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not warm.ready.done():
                raise SandboxError(f"zygote of {sandbox.id} did not become ready")
            warm.warmup_ms = round((time.monotonic() - began) * 1000, 3)
            warm.idle_since = time.monotonic()
            stats = self.stats[profile.name]
            stats["warmups"] += 1
            stats["warmupMs"] = [*stats["warmupMs"][-99:], warm.warmup_ms]
            if self.metrics is not None:
                self.metrics.warm_pool_warmup.labels(profile.name).observe(warm.warmup_ms / 1000)
            if self._closing:
                raise asyncio.CancelledError
            self._idle[profile.name].append(warm)
            warm = None
            self._gauge()
        except AdmissionRefused:
            await asyncio.sleep(REFILL_BACKOFF_S)
        except asyncio.CancelledError:
            pass
        except (SandboxError, OSError) as exc:
            log.warning("warm sandbox could not start", extra={"profile": profile.name, "error": str(exc)})
            await asyncio.sleep(REFILL_BACKOFF_S)
        finally:
            self._warming[profile.name] -= 1
            if warm is not None:
                await self._discard(warm, "killed")
            self._wake.set()


async def run_cycle(
    manager: SandboxManager,
    pool: WarmPool | None,
    profile: str,
    spec: SandboxSpec,
    argv: Sequence[str],
    *,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    on_stderr_line: Callable[[str], None] | None = None,
    output_limit_bytes: int | None = None,
    on_sandbox: Callable[[str], None] | None = None,
    collect: Collect | None = None,
) -> CycleRun:
    """One learn cycle's sandbox, warm when the pool has one of `profile` that fits spec's
    caps (spec.binds attached read-only, spec.env applied), cold otherwise. `on_sandbox` hears
    the sandbox's id once the cycle has one; `collect` runs after the program ended, before
    the sandbox goes. Either way the sandbox is destroyed and forgotten before this returns
    and result.usage["sandbox_record"] is its final record. A cold create's AdmissionRefused
    and SandboxError reach the caller."""
    warm = None
    if pool is not None and profile in pool.profiles:
        limit = output_limit_bytes or manager.output_limit_bytes
        if pool.fits(profile, spec.caps) and spec.network == "isolated" and limit == pool.output_limit_bytes:
            warm = await pool.acquire(profile, spec.agent_id, spec.caps)
        else:
            pool.count_miss(profile)  # a shape the pool does not keep: cold, and counted
    if warm is not None:
        if on_sandbox is not None:
            on_sandbox(warm.id)
        try:
            return await warm.run(
                spec.binds, argv, env={**spec.env, **(env or {})}, timeout_s=timeout_s,
                on_stderr_line=on_stderr_line, collect=collect,
            )  # fmt: skip
        except SandboxError as exc:  # it died idle, or an input could not be attached
            log.warning("warm sandbox failed, going cold", extra={"sandbox_id": warm.id, "error": str(exc)})
    sandbox = await manager.create(spec)
    if on_sandbox is not None:
        on_sandbox(sandbox.id)
    collected = None
    try:
        result = await manager.execute(
            sandbox.id, argv, timeout_s=timeout_s, env=env, on_stderr_line=on_stderr_line,
            output_limit_bytes=output_limit_bytes,
        )  # fmt: skip
        if collect is not None:
            collected = await collect(sandbox, result)
    finally:
        record = await manager.destroy(sandbox.id, reason="destroyed")
        manager.forget(sandbox.id)
    result.usage["sandbox_record"] = record
    return CycleRun(result, False, collected)
