"""Sandbox lifecycle: create -> execute (any number of times) -> destroy.

`SandboxManager` composes the mechanisms in a fixed order: GPUs, cgroup, then
wc-init (namespaces, overlay root, /dev, /proc, pivot_root), then the named netns.
Each set-up step has its undo, and failures undo in reverse order. Nothing here
blocks the event loop for long: cgroup work runs in a thread, processes are
asyncio subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import re
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import native

from . import gpu as gpus
from . import mounts, network, process, uids
from .admission import Admission, AdmissionRefused
from .audit import ResourceRecord, parse_exec_status
from .cgroups.base import CgroupBackend, CgroupError, CgroupLimits, CgroupUsage, SandboxCgroup
from .errors import (  # noqa: F401 - re-exported: callers import them from here
    CapacityExhausted,
    InvalidSpec,
    SandboxError,
    SandboxNotRunning,
    StartFailed,
    UnknownExecution,
    UnknownSandbox,
)
from .privileges import ProcessIdentity
from .uids import UidRange

log = logging.getLogger("wondercraft.runtime")

TERMINATION_REASONS = ("timeout", "memory_limit", "pids_limit", "storage_limit", "lifetime", "killed")
SANDBOX_ID = re.compile(r"^sb-[0-9a-f]{12}$")
MONITOR_INTERVAL_S = 0.05
DEFAULT_OUTPUT_LIMIT = 1 << 20
SHIM_EXIT_TIMEOUT_S = 10.0
# After an execution's processes are killed, how long its pipes may stay open (a copy
# passed to another execution) before the service stops reading them.
PIPE_GRACE_S = 1.0
MAX_BACKGROUND_EXECUTIONS = 16
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The only environment the root launcher ever sees; what a sandbox's caller sets travels
# as data (environment_memfd) and is applied inside, after the privilege drop.
LAUNCHER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
# Writes to a running execution's stdin, then returns (start_background's stdin_source).
StdinSource = Callable[[asyncio.StreamWriter], Awaitable[None]]


def environment_memfd(environment: Mapping[str, str]) -> int:
    """A sealed-size memfd of NUL-separated NAME=VALUE entries for wc-init exec --env-fd."""
    block = b"".join(f"{key}={value}".encode() + b"\0" for key, value in environment.items())
    fd = os.memfd_create("wc-env", os.MFD_CLOEXEC)
    try:
        view = memoryview(block)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class ResourceCaps:
    cpu_cores: float = 2.0
    memory_mb: int = 4096
    pids: int = 256
    storage_mb: int = 512
    gpu_count: int = 0
    # Bytes per second on the block device holding the state dir (data and models), where
    # the host's hierarchy has an io controller; None: unlimited.
    io_read_bps: int | None = None
    io_write_bps: int | None = None

    def tightens(self, ceiling: ResourceCaps) -> bool:
        """Whether these caps are `ceiling` with cpu, memory and pids at most its own and all
        else the same: what a live sandbox can be retuned to (a warm one taken by a cycle)."""
        rest = dataclasses.replace(
            self, cpu_cores=ceiling.cpu_cores, memory_mb=ceiling.memory_mb, pids=ceiling.pids
        )
        return (
            rest == ceiling
            and self.cpu_cores <= ceiling.cpu_cores
            and self.memory_mb <= ceiling.memory_mb
            and self.pids <= ceiling.pids
        )

    def validate(self) -> None:
        checks = (
            ("cpu_cores", 0.01 <= self.cpu_cores <= 1024, "a number of cores between 0.01 and 1024"),
            ("memory_mb", 16 <= self.memory_mb <= 262144, "an integer number of MB between 16 and 262144"),
            ("pids", 8 <= self.pids <= 65536, "an integer between 8 and 65536"),
            ("storage_mb", 1 <= self.storage_mb <= 1048576, "an integer number of MB between 1 and 1048576"),
            ("gpu_count", 0 <= self.gpu_count <= 64, "an integer between 0 and 64"),
            ("io_read_bps", self.io_read_bps is None or self.io_read_bps >= 4096, "at least 4096 bytes/s"),
            ("io_write_bps", self.io_write_bps is None or self.io_write_bps >= 4096, "at least 4096 bytes/s"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise InvalidSpec(f"{name} must be {expected}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SandboxSpec:
    agent_id: str
    caps: ResourceCaps = field(default_factory=ResourceCaps)
    network: str = "isolated"
    lifetime_s: float = 3600.0
    binds: tuple[mounts.Bind, ...] = ()  # extra read-only mounts: data, base model
    identity: ProcessIdentity = field(default_factory=ProcessIdentity)
    env: Mapping[str, str] = field(default_factory=dict)
    hostname: str = "sandbox"


@dataclass
class ExecResult:
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    duration_ms: float
    termination_reason: str | None
    usage: dict  # ResourceRecord.as_dict(): this execution's cgroup, and the sandbox's so far
    execution_id: str | None = None


@dataclass
class Execution:
    """One run of a command in a sandbox, in its own child cgroup."""

    id: str  # "exec-N", N counting the sandbox's executions
    argv: list[str]
    started_at: float
    detached: bool = False
    cgroup: SandboxCgroup | None = None
    ending_reason: str | None = None  # "killed" once end_background() asked
    task: asyncio.Task | None = None  # background executions only
    result: ExecResult | None = None  # background executions, once ended
    oom_kills_counted: int = 0  # v1: this execution's OOM kills already added to the sandbox's
    end_requested: asyncio.Event = field(default_factory=asyncio.Event)  # end it now (DELETE, a cap)

    @property
    def running(self) -> bool:
        return self.result is None and (self.task is None or not self.task.done())


@dataclass
class Sandbox:
    id: str
    spec: SandboxSpec
    created_at: float
    expires_at: float
    status: str = "creating"  # creating, running, dead, destroyed
    init_pid: int | None = None
    netns: str | None = None
    gpus: list[gpus.Gpu] = field(default_factory=list)
    ending_reason: str | None = None
    final_record: dict | None = None
    executions: int = 0
    last_usage: CgroupUsage | None = None  # the cgroup's counters when last read (kept after it is gone)
    active_execs: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)  # where create and destroy spent time
    _cgroup: SandboxCgroup | None = None
    _shim: process.Child | None = None
    _lifetime_timer: asyncio.TimerHandle | None = None
    exec_oom_kills: int = 0  # v1: OOM kills counted in executions' cgroups (v2 counts them upwards)
    background: dict[str, Execution] = field(default_factory=dict)  # detached, until collected
    uid: int | None = None  # its own uid and gid, from the manager's range
    announced: bool = False  # on_created callbacks ran (create, or a warm pool's acquire)
    _running: dict[str, Execution] = field(default_factory=dict)
    _destroyed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def cgroup(self) -> SandboxCgroup | None:
        """The sandbox's cgroup (None before creation got that far); for audits and stats."""
        return self._cgroup

    @property
    def alive(self) -> bool:
        return (
            self.status == "running"
            and self._shim is not None
            and self._shim.returncode is None
            and self.init_pid is not None
            and os.path.exists(f"/proc/{self.init_pid}")
        )


def instance_name(state_dir: Path) -> str:
    """A short stable name for one service instance (one state dir), used as a prefix."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]


def _lap(sandbox: Sandbox, step: str, since: float) -> float:
    now = time.perf_counter()
    sandbox.timings_ms[step] = round((now - since) * 1000, 3)
    return now


def block_device(path: Path) -> str | None:
    """ "MAJ:MIN" of the block device a path lives on, or None (tmpfs, hostfs, overlay...)."""
    device = os.stat(path).st_dev
    numbers = f"{os.major(device)}:{os.minor(device)}"
    return numbers if os.path.exists(f"/sys/dev/block/{numbers}") else None


def _limits(caps: ResourceCaps, device: str | None) -> CgroupLimits:
    io_read = {device: caps.io_read_bps} if device and caps.io_read_bps else {}
    io_write = {device: caps.io_write_bps} if device and caps.io_write_bps else {}
    return CgroupLimits(
        cpu_cores=caps.cpu_cores, memory_mb=caps.memory_mb, pids_max=caps.pids,
        io_read_bps=io_read, io_write_bps=io_write,
    )  # fmt: skip


class _Capture:
    """One output pipe read to EOF, keeping at most `limit` bytes and draining the rest so
    the writer never blocks; what was read stays here if reading is cut short."""

    def __init__(self, limit: int, on_line: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.on_line = on_line
        self._kept = bytearray()
        self._total = 0
        self._pending = b""

    @property
    def data(self) -> bytes:
        return bytes(self._kept)

    @property
    def truncated(self) -> bool:
        return self._total > self.limit

    async def drain(self, stream: asyncio.StreamReader) -> None:
        try:
            while chunk := await stream.read(65536):
                self._total += len(chunk)
                if len(self._kept) < self.limit:
                    self._kept += chunk[: self.limit - len(self._kept)]
                if self.on_line is not None:
                    self._pending += chunk
                    *lines, self._pending = self._pending.split(b"\n")
                    for line in lines:
                        self.on_line(line[:4096].decode(errors="replace"))
                    self._pending = self._pending[-4096:]
        finally:
            if self.on_line is not None and self._pending:
                self.on_line(self._pending.decode(errors="replace"))
                self._pending = b""


def _task_result(task: asyncio.Task) -> ExecResult | None:
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


class SandboxManager:
    """Owns every sandbox of one service instance."""

    def __init__(
        self,
        state_dir: Path,
        *,
        cgroups: CgroupBackend | None = None,
        instance: str | None = None,
        gpu_allocator: gpus.GpuAllocator | None = None,
        output_limit_bytes: int = DEFAULT_OUTPUT_LIMIT,
        rootfs_image: Path | None = None,
        launcher: Path | None = None,
        admission: Admission | None = None,
        uid_range: UidRange | str | None = uids.DEFAULT_RANGE,
        service_reserve_bytes: int | None = None,
    ) -> None:
        """admission: the host budget and agent quotas every create is checked against
        (None: unchecked); uid_range: where each sandbox's own uid comes from (None: all
        run as their spec's identity); service_reserve_bytes: memory the service protects
        for itself (memory.min on v2) and an OOM score below its sandboxes'."""
        self.state_dir = Path(state_dir).resolve()
        self.instance = instance or instance_name(self.state_dir)
        self._cgroups = cgroups
        self.gpus = gpu_allocator or gpus.GpuAllocator.from_host()
        self.output_limit_bytes = output_limit_bytes
        self._rootfs = self.state_dir / "rootfs"
        self._lower = self._rootfs / "lower"
        self._stage = self._rootfs / "stage"
        self.rootfs_image = Path(rootfs_image).resolve() if rootfs_image else None
        self._system_binds = mounts.system_binds(self.rootfs_image)
        self._sandboxes: dict[str, Sandbox] = {}
        self.admission = admission
        if isinstance(uid_range, str):
            uid_range = UidRange.parse(uid_range)
        self.uids = uids.UidAllocator(uid_range) if uid_range is not None else None
        self.service_reserve_bytes = service_reserve_bytes
        self.protection: dict = {}
        # Refused unless statically linked: it runs as root in the host's namespaces.
        self._launcher = str(native.checked_launcher(launcher))
        self._trace_args: list[str] = []
        self._trace_fds: tuple[int, ...] = ()
        self._started = False
        self._block_device: str | None = None
        # Async callbacks the service registers: on_created(sandbox), on_destroyed(sandbox, record).
        self.on_created: list[Callable[[Sandbox], Awaitable[None]]] = []
        self.on_destroyed: list[Callable[[Sandbox, dict], Awaitable[None]]] = []
        # Frees budget when a create does not fit (the warm pool evicts idle sandboxes):
        # reclaim(refusal, agent_id) -> whether anything was freed, so admission is retried.
        self.reclaim: Callable[[AdmissionRefused, str], Awaitable[bool]] | None = None

    # ---------------------------------------------------------------- setup --

    @property
    def cgroups(self) -> CgroupBackend:
        if self._cgroups is None:
            from .cgroups import open_backend

            self._cgroups = open_backend(self.instance)
        return self._cgroups

    @property
    def netns_prefix(self) -> str:
        return f"wc-{self.instance}-"

    async def start(self) -> dict:
        """Build the lower layer, prepare cgroups, and sweep what a crashed run left."""
        await asyncio.to_thread(self._start_sync)
        self._started = True
        return await self.sweep_orphans()

    def _start_sync(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._block_device = block_device(self.state_dir)
        mounts.build_skeleton(self._lower, self.rootfs_image)
        self._stage.mkdir(parents=True, exist_ok=True)
        self.cgroups.prepare()
        if self.service_reserve_bytes is not None:
            self.protection = self.cgroups.protect_service(self.service_reserve_bytes)

    async def sweep_orphans(self) -> dict:
        """Remove cgroups and netns with this instance's prefix that no live sandbox owns."""
        live = set(self._sandboxes)

        def sweep() -> dict:
            removed = {"cgroups": [], "netns": []}
            for name in self.cgroups.list_names():
                if name not in live:
                    cgroup = self.cgroups.open(name)
                    if cgroup is not None:
                        cgroup.destroy()
                        removed["cgroups"].append(name)
            for name in network.list_names(self.netns_prefix):
                if name[len(self.netns_prefix) :] not in live:
                    network.remove(name)
                    removed["netns"].append(name)
            return removed

        removed = await asyncio.to_thread(sweep)
        if removed["cgroups"] or removed["netns"]:
            log.warning("removed orphans", extra={"orphans": removed})
        return removed

    # --------------------------------------------------------------- create --

    def get(self, sandbox_id: str) -> Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise UnknownSandbox(f"no sandbox {sandbox_id!r}")
        return sandbox

    def list(self) -> list[Sandbox]:
        return list(self._sandboxes.values())

    async def create(
        self, spec: SandboxSpec, sandbox_id: str | None = None, *, announce: bool = True
    ) -> Sandbox:
        """Create and start a sandbox. announce=False (a warm pool's sandbox, whose agent
        is not known yet) holds back the on_created callbacks until announce() is called;
        one never announced is destroyed without on_destroyed callbacks too."""
        if not self._started:
            await self.start()
        spec.caps.validate()
        if spec.network not in network.NETWORK_MODES:
            raise InvalidSpec(
                f"network must be one of {', '.join(network.NETWORK_MODES)}, got {spec.network!r}"
            )
        if not 1 <= spec.lifetime_s <= 7 * 86400:
            raise InvalidSpec(f"lifetime must be between 1 and 604800 seconds, got {spec.lifetime_s!r}")
        sandbox_id = sandbox_id or f"sb-{secrets.token_hex(6)}"
        if not SANDBOX_ID.match(sandbox_id) or sandbox_id in self._sandboxes:
            raise InvalidSpec(f"sandbox id {sandbox_id!r} is malformed or already in use")
        now = time.time()
        if self.admission is not None:
            await self._admit(sandbox_id, spec, now)
        sandbox = Sandbox(sandbox_id, spec, created_at=now, expires_at=now + spec.lifetime_s)
        self._sandboxes[sandbox_id] = sandbox
        try:
            if self.uids is not None:
                try:
                    sandbox.uid = self.uids.allocate()
                except uids.UidsExhausted as exc:
                    raise CapacityExhausted(str(exc)) from None
            try:
                sandbox.gpus = self.gpus.allocate(spec.caps.gpu_count, sandbox_id)
            except gpus.GpuUnavailable as exc:
                raise CapacityExhausted(str(exc)) from None
            mark = time.perf_counter()
            limits = _limits(spec.caps, self._block_device)
            # A few mkdirs and writes in cgroupfs (~0.3 ms): cheaper inline than a thread trip.
            sandbox._cgroup = self.cgroups.create(sandbox_id, limits, executions=True)
            mark = _lap(sandbox, "create_cgroup", mark)
            await self._start_init(sandbox)
            mark = _lap(sandbox, "create_init", mark)
            sandbox.netns = network.netns_name(self.instance, sandbox_id)
            network.attach(sandbox.netns, sandbox.init_pid)
            _lap(sandbox, "create_netns", mark)
        except BaseException:
            try:
                await self._teardown(sandbox, reason="killed")
            finally:
                self._sandboxes.pop(sandbox_id, None)
            raise
        sandbox.status = "running"
        sandbox.last_usage = CgroupUsage()  # a new cgroup has counted nothing yet
        loop = asyncio.get_running_loop()
        sandbox._lifetime_timer = loop.call_later(
            spec.lifetime_s, lambda: loop.create_task(self.destroy(sandbox_id, reason="lifetime"))
        )
        loop.create_task(self._watch_init(sandbox))
        if announce:
            await self.announce(sandbox)
        return sandbox

    def retune(self, sandbox: Sandbox, caps: ResourceCaps) -> None:
        """Tighten a running sandbox's cpu, memory and pids caps to `caps` (a warm sandbox
        taken by a cycle that asks for less than its profile); its spec then names `caps`, so
        its environment, record and limits are the cycle's. Only cpu, memory and pids may
        differ, each at most the current cap; anything else raises InvalidSpec."""
        current = sandbox.spec.caps
        if not caps.tightens(current):
            raise InvalidSpec(f"caps {caps} do not fit within sandbox {sandbox.id}'s {current}")
        self.cgroups.retune(sandbox._cgroup, _limits(caps, self._block_device))
        sandbox.spec = dataclasses.replace(sandbox.spec, caps=caps)

    async def announce(self, sandbox: Sandbox) -> None:
        """Run the on_created callbacks (the service's row, audit and metrics) once."""
        if sandbox.announced:
            return
        sandbox.announced = True
        for callback in self.on_created:
            await callback(sandbox)

    async def _admit(self, sandbox_id: str, spec: SandboxSpec, now: float) -> None:
        """Reserve the sandbox's budget; where it does not fit, `reclaim` (the warm pool)
        may free room (idle warm sandboxes) and the reservation is tried again."""
        caps = spec.caps
        while True:
            try:
                self.admission.admit(
                    sandbox_id, spec.agent_id, memory_mb=caps.memory_mb, cpu_cores=caps.cpu_cores,
                    gpus=caps.gpu_count, expires_at=now + spec.lifetime_s,
                )  # fmt: skip
                return
            except AdmissionRefused as refused:
                if self.reclaim is None or not await self.reclaim(refused, spec.agent_id):
                    raise

    def _create_args(self, sandbox: Sandbox) -> list[str]:
        spec = sandbox.spec
        args = [
            self._launcher, *self._trace_args, "create", "--stage", str(self._stage), "--lower", mounts.lower_dirs(self._lower, self.rootfs_image),
            "--hostname", spec.hostname, "--storage-bytes", str(spec.caps.storage_mb << 20),
            "--shm-bytes", str(min(64, spec.caps.storage_mb) << 20),
            "--uid", str(self._identity(sandbox).uid), "--gid", str(self._identity(sandbox).gid),
            "--writable", mounts.WORK_DIR, "--writable", mounts.OUT_DIR, "--ready-fd", "1",
        ]  # fmt: skip
        if spec.network == "isolated":
            args.append("--isolate-net")
        for bind in [*self._system_binds, *spec.binds]:
            args += ["--bind", bind.arg()]
        for node in [*mounts.DEFAULT_DEVICES, *self.gpus.device_binds(sandbox.gpus)]:
            args += ["--dev", node]
        return args + self._cgroup_args(sandbox._cgroup.init_procs_files)

    def _cgroup_args(self, procs_files: list[str]) -> list[str]:
        """How the launcher puts its child in a cgroup: on v2 born there (clone3 with
        CLONE_INTO_CGROUP: no migration, whose RCU grace period was the tail of every start
        and exec), on v1 moved through each hierarchy's cgroup.procs."""
        if self.cgroups.mode == "v2" and len(procs_files) == 1:
            return ["--cgroup-into", os.path.dirname(procs_files[0])]
        return [arg for path in procs_files for arg in ("--cgroup-procs", path)]

    def _identity(self, sandbox: Sandbox) -> ProcessIdentity:
        """What the sandbox's processes run as: its own uid and gid when it was given one."""
        identity = sandbox.spec.identity
        if sandbox.uid is None:
            return identity
        return dataclasses.replace(identity, uid=sandbox.uid, gid=sandbox.uid)

    def trace_to(self, fd: int | None) -> None:
        """Have the launcher write its step timings to fd (the benchmark's breakdown)."""
        self._trace_args = [] if fd is None else ["--trace-fd", str(fd)]
        self._trace_fds = () if fd is None else (fd,)

    async def _start_init(self, sandbox: Sandbox) -> None:
        shim = await process.spawn(
            self._create_args(sandbox), stdout=True, env=LAUNCHER_ENV, pass_fds=self._trace_fds
        )
        sandbox._shim = shim
        line = (await shim.stdout.readline()).decode(errors="replace").strip()
        if not line.startswith("ready "):
            await shim.wait()
            raise StartFailed(f"sandbox {sandbox.id} could not start: {line or 'launcher exited'}")
        sandbox.init_pid = int(line.split()[1])

    async def _watch_init(self, sandbox: Sandbox) -> None:
        """If PID 1 dies on its own (OOM group kill, a crash), the sandbox is dead: clean it up."""
        await sandbox._shim.wait()
        if sandbox.status == "running":
            sandbox.status = "dead"
            reason = None
            usage = await asyncio.to_thread(self._usage, sandbox) if sandbox._cgroup else None
            if usage is not None and usage.oom_kills:
                reason = "memory_limit"
            log.warning("sandbox init exited", extra={"sandbox_id": sandbox.id, "reason": reason})
            await self.destroy(sandbox.id, reason=reason or "killed")

    # -------------------------------------------------------------- execute --

    async def execute(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes = b"",
        workdir: str = mounts.WORK_DIR,
        output_limit_bytes: int | None = None,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> ExecResult:
        """Run argv and wait for it. It returns by timeout_s (plus a short grace for the
        pipes), whatever the process tree does; when it returns, everything it started
        is gone (its cgroup is killed and removed)."""
        sandbox = self.get(sandbox_id)
        execution = self._begin(sandbox, argv, detached=False)
        sandbox.active_execs += 1
        try:
            return await self._execute(
                sandbox, execution, argv, timeout_s=timeout_s, env=env, stdin=stdin, workdir=workdir,
                output_limit_bytes=output_limit_bytes, on_stderr_line=on_stderr_line,
            )  # fmt: skip
        finally:
            sandbox.active_execs -= 1
            sandbox._running.pop(execution.id, None)

    async def start_background(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes = b"",
        workdir: str = mounts.WORK_DIR,
        output_limit_bytes: int | None = None,
        stdin_source: StdinSource | None = None,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> Execution:
        """Start argv as a background (detached) execution and return at once. It runs in
        its own cgroup until it ends, end_background() ends it, or the sandbox goes; it is
        listed in sandbox.background until end_background() collects it. stdin_source,
        instead of stdin: a coroutine given the execution's stdin, which writes to it while
        the execution runs and closes it (a warm sandbox's zygote receives its job so)."""
        sandbox = self.get(sandbox_id)
        if len(sandbox.background) >= MAX_BACKGROUND_EXECUTIONS:
            raise CapacityExhausted(
                f"sandbox {sandbox_id} already has {MAX_BACKGROUND_EXECUTIONS} background executions; "
                "end one first"
            )
        self._check_runnable(sandbox, argv)
        execution = self._begin(sandbox, argv, detached=True)
        sandbox.background[execution.id] = execution
        sandbox.active_execs += 1
        started = asyncio.get_running_loop().create_future()

        async def run() -> ExecResult:
            try:
                return await self._execute(
                    sandbox, execution, argv, timeout_s=timeout_s, env=env, stdin=stdin, workdir=workdir,
                    output_limit_bytes=output_limit_bytes, on_stderr_line=on_stderr_line, started=started,
                    stdin_source=stdin_source,
                )  # fmt: skip
            finally:
                sandbox.active_execs -= 1
                sandbox._running.pop(execution.id, None)
                if not started.done():
                    started.set_result(None)

        execution.task = asyncio.get_running_loop().create_task(run())
        execution.task.add_done_callback(lambda task: setattr(execution, "result", _task_result(task)))
        await asyncio.shield(started)  # the launcher is running (or failed) by now
        if execution.task.done():
            execution.task.result()  # raises what the start raised
        return execution

    async def end_background(self, sandbox_id: str, execution_id: str) -> ExecResult:
        """End a background execution (everything in its cgroup) and collect its result."""
        sandbox = self.get(sandbox_id)
        execution = sandbox.background.get(execution_id)
        if execution is None:
            raise UnknownExecution(f"sandbox {sandbox_id} has no background execution {execution_id!r}")
        if execution.task is not None and not execution.task.done():
            execution.ending_reason = execution.ending_reason or "killed"
            execution.end_requested.set()
        result = await asyncio.shield(execution.task)
        sandbox.background.pop(execution_id, None)
        return result

    def _begin(self, sandbox: Sandbox, argv: Sequence[str], *, detached: bool) -> Execution:
        sandbox.executions += 1
        execution = Execution(
            id=f"exec-{sandbox.executions}", argv=list(argv), started_at=time.time(), detached=detached
        )
        sandbox._running[execution.id] = execution
        return execution

    @staticmethod
    def _check_runnable(sandbox: Sandbox, argv: Sequence[str]) -> None:
        if not sandbox.alive:
            raise SandboxNotRunning(f"sandbox {sandbox.id} is {sandbox.status}, not running")
        if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise InvalidSpec("command must be a non-empty list of strings without NUL bytes")

    async def _end_until_gone(self, execution: Execution, launcher: process.Child) -> None:
        """Kill the execution until its launcher has seen the main process die: a child
        that had not joined its cgroup yet when the first kill came is caught by the next."""
        while launcher.returncode is None:
            await self._end(execution)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(launcher.wait(), 0.2)

    async def _end(self, execution: Execution) -> None:
        """Kill everything in an execution's cgroup (and wait until it is empty)."""
        cgroup = execution.cgroup
        if cgroup is not None:
            with contextlib.suppress(CgroupError, OSError):
                await asyncio.to_thread(cgroup.kill)

    async def _execute(
        self,
        sandbox: Sandbox,
        execution: Execution,
        argv: Sequence[str],
        *,
        timeout_s: float | None,
        env: Mapping[str, str] | None,
        stdin: bytes,
        workdir: str,
        output_limit_bytes: int | None,
        on_stderr_line: Callable[[str], None] | None,
        started: asyncio.Future | None = None,
        stdin_source: StdinSource | None = None,
    ) -> ExecResult:
        self._check_runnable(sandbox, argv)
        environment = self._environment(sandbox, env or {})
        limit = output_limit_bytes or self.output_limit_bytes
        began = time.monotonic()
        if sandbox.active_execs > 1 or sandbox.last_usage is None:
            baseline = await asyncio.to_thread(self._usage, sandbox)
        else:
            # Nothing runs in the sandbox between execs (PID 1 only waits), so its counters
            # are still those read at the end of the previous exec.
            baseline = sandbox.last_usage
        # A full upper layer at the start is not this exec's doing (it may be here to clean up).
        storage_was_full = self._storage_full(sandbox)
        # A few mkdirs in cgroupfs: cheaper inline than a thread trip.
        mark = time.perf_counter()
        try:
            execution.cgroup = sandbox._cgroup.create_execution(execution.id)
        except CgroupError:
            raise SandboxNotRunning(f"sandbox {sandbox.id} is ending, not running") from None
        _lap(sandbox, "exec_cgroup", mark)
        try:
            return await self._run(
                sandbox, execution, argv, environment, baseline, storage_was_full, began,
                timeout_s=timeout_s, stdin=stdin, workdir=workdir, limit=limit,
                on_stderr_line=on_stderr_line, started=started, stdin_source=stdin_source,
            )  # fmt: skip
        finally:
            # Whatever it left (a setsid daemon, a process that closed its pipes) ends with it.
            cgroup = execution.cgroup
            mark = time.perf_counter()
            try:
                cgroup.destroy()
            except (CgroupError, OSError):
                with contextlib.suppress(CgroupError, OSError):
                    await asyncio.to_thread(cgroup.destroy)
            _lap(sandbox, "exec_cgroup_remove", mark)

    async def _run(
        self,
        sandbox: Sandbox,
        execution: Execution,
        argv: Sequence[str],
        environment: dict[str, str],
        baseline: CgroupUsage,
        storage_was_full: bool,
        began: float,
        *,
        timeout_s: float | None,
        stdin: bytes,
        workdir: str,
        limit: int,
        on_stderr_line: Callable[[str], None] | None,
        started: asyncio.Future | None,
        stdin_source: StdinSource | None = None,
    ) -> ExecResult:
        mark = time.perf_counter()
        env_fd = environment_memfd(environment)
        status_r, status_w = os.pipe()
        try:
            proc = await process.spawn(
                [
                    self._launcher, *self._trace_args, "exec", "--target", str(sandbox.init_pid),
                    *self._cgroup_args(execution.cgroup.procs_files),
                    *self._identity(sandbox).exec_args(), "--workdir", workdir, "--status-fd", str(status_w),
                    "--env-fd", str(env_fd), "--", *argv,
                ],
                stdin=True, stdout=True, stderr=True, pass_fds=(status_w, env_fd, *self._trace_fds),
                env=LAUNCHER_ENV,
            )  # fmt: skip
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
            os.close(env_fd)
        if started is not None and not started.done():
            started.set_result(None)
        mark = _lap(sandbox, "exec_spawn", mark)
        loop = asyncio.get_running_loop()
        status_reader = await process.read_fd(status_r)
        status_lines: list[str] = []
        violation: list[str] = []
        out, err = _Capture(limit), _Capture(limit, on_stderr_line)

        async def read_status() -> None:
            while line := await status_reader.readline():
                status_lines.append(line.decode(errors="replace").strip())

        async def feed_stdin() -> None:
            if stdin_source is not None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await stdin_source(proc.stdin)
                proc.stdin.close()
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if stdin:
                    proc.stdin.write(stdin)
                    await proc.stdin.drain()
            proc.stdin.close()

        async def monitor() -> None:
            while True:
                await asyncio.sleep(MONITOR_INTERVAL_S)
                reason = self._violation(sandbox, execution, baseline, storage_was_full=storage_was_full)
                if reason:
                    violation.append(reason)
                    execution.end_requested.set()
                    return

        async def finished() -> None:
            # The launcher reports the main process's end; the pipes close once nothing
            # of the execution holds them any more. (Shielded: a deadline must not cancel
            # the readers, which keep what was read.)
            await proc.wait()
            await asyncio.gather(*(asyncio.shield(task) for task in readers))

        readers = [loop.create_task(out.drain(proc.stdout)), loop.create_task(err.drain(proc.stderr))]
        helpers = [loop.create_task(read_status()), loop.create_task(feed_stdin())]
        watcher = loop.create_task(monitor())
        ran = loop.create_task(finished())
        asked = loop.create_task(execution.end_requested.wait())
        timed_out = False
        try:
            await asyncio.wait((ran, asked), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if not ran.done():
                timed_out = not asked.done()
                await self._end_until_gone(execution, proc)
            # Processes of another execution may hold a copy of the pipes (passed over a
            # socket): after a short grace the service stops reading them.
            await asyncio.wait(readers, timeout=PIPE_GRACE_S)
        except asyncio.CancelledError:
            proc.kill()  # its child has PR_SET_PDEATHSIG: it dies too, joined or not
            await asyncio.shield(self._end(execution))
            raise
        finally:
            for task in (watcher, ran, asked, *readers):
                task.cancel()
            proc.close_pipes()
            await asyncio.gather(watcher, ran, asked, *readers, *helpers, return_exceptions=True)
        mark = _lap(sandbox, "exec_wait", mark)
        status = parse_exec_status(status_lines)
        # A dozen reads of in-memory cgroup files (~0.15 ms): cheaper here than a thread trip.
        exec_usage = self._exec_usage(sandbox, execution)
        usage = self._usage(sandbox)
        if sandbox.active_execs == 1:
            sandbox.last_usage = usage
        if status["error"] and status["exit_code"] is None and status["signal"] is None:
            status["exit_code"] = 125
        stderr = err.data
        if status["error"]:
            stderr += f"wondercraft: {status['error']}\n".encode()
        reason = sandbox.ending_reason or execution.ending_reason or (violation[0] if violation else None)
        if reason is None and timed_out:
            reason = "timeout"
        if reason is None:
            reason = self._violation(
                sandbox, execution, baseline, usage, exec_usage, storage_was_full=storage_was_full
            )
        _lap(sandbox, "exec_usage", mark)
        accounting = status["accounting"]
        record = ResourceRecord(
            wall_s=round(time.monotonic() - began, 6),
            exit_code=status["exit_code"],
            signal=status["signal"],
            termination_reason=reason,
            cpu_user_s=accounting.cpu_user_s,
            cpu_system_s=accounting.cpu_system_s,
            max_rss_bytes=accounting.max_rss_bytes,
            cgroup=exec_usage.as_dict(),
            sandbox_cgroup=usage.as_dict(),
            limits=vars(sandbox.spec.caps).copy(),
        )
        return ExecResult(
            exit_code=status["exit_code"],
            signal=status["signal"],
            stdout=out.data,
            stderr=stderr,
            truncated=out.truncated or err.truncated,
            duration_ms=round(record.wall_s * 1000, 3),
            termination_reason=reason,
            usage=record.as_dict(),
            execution_id=execution.id,
        )

    def _exec_usage(self, sandbox: Sandbox, execution: Execution) -> CgroupUsage:
        """This execution's own counters (its cgroup still exists here, emptied or not)."""
        try:
            usage = execution.cgroup.usage()
        except (CgroupError, OSError):
            return CgroupUsage()
        if self.cgroups.mode == "v1":
            # v1 counts an OOM kill only in the victim's own memory cgroup, not its parents.
            sandbox.exec_oom_kills += usage.oom_kills - execution.oom_kills_counted
            execution.oom_kills_counted = usage.oom_kills
        return usage

    def usage(self, sandbox_id: str) -> CgroupUsage:
        """The kernel's counters for a sandbox now (its last ones once it is gone)."""
        return self._usage(self.get(sandbox_id))

    def _usage(self, sandbox: Sandbox) -> CgroupUsage:
        """The sandbox's counters so far, its executions' included; once destroy removed
        its cgroup, the counters it had when killed."""
        try:
            usage = sandbox._cgroup.usage()
        except (CgroupError, OSError, AttributeError):
            return sandbox.last_usage or CgroupUsage()
        usage.oom_kills += sandbox.exec_oom_kills
        return usage

    def _environment(self, sandbox: Sandbox, extra: Mapping[str, str]) -> dict[str, str]:
        venv_bin = os.path.join(mounts.python_dirs()[-1], "bin")
        environment = {
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": mounts.WORK_DIR,
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "WONDERCRAFT_SANDBOX_ID": sandbox.id,
            # Thread pools (OpenMP, BLAS, torch's intra-op) size themselves to the host's cores,
            # not the cap: a 1-core sandbox on a 64-core host would run 64 throttled threads.
            "OMP_NUM_THREADS": str(max(1, math.ceil(sandbox.spec.caps.cpu_cores))),
        }
        environment.update(gpus.visible_devices_env(sandbox.gpus))
        for source in (sandbox.spec.env, extra):
            for key, value in source.items():
                if not ENV_NAME.match(key) or not isinstance(value, str) or "\0" in value:
                    raise InvalidSpec(f"environment variable {key!r} has an invalid name or value")
                environment[key] = value
        return environment

    def _violation(
        self,
        sandbox: Sandbox,
        execution: Execution,
        baseline: CgroupUsage,
        usage: CgroupUsage | None = None,
        exec_usage: CgroupUsage | None = None,
        *,
        storage_was_full: bool,
    ) -> str | None:
        """A cap this execution ran into, judged from the kernel's counters: an OOM kill in
        its own cgroup, a failed fork or a full upper layer in the sandbox since `baseline`."""
        if sandbox._cgroup is None:
            return None
        if exec_usage is None:
            exec_usage = self._exec_usage(sandbox, execution)
        if exec_usage.oom_kills > 0:
            return "memory_limit"
        if usage is None:
            usage = self._usage(sandbox)
        # v1 counts a refused fork in the forking cgroup (the execution's), v2 in the one
        # whose limit refused it (the sandbox's) and its parents.
        if exec_usage.pids_max_events > 0 or usage.pids_max_events > baseline.pids_max_events:
            return "pids_limit"
        if not storage_was_full and self._storage_full(sandbox):
            return "storage_limit"
        return None

    @staticmethod
    def _storage_full(sandbox: Sandbox) -> bool:
        # statfs on an overlay reports its upper layer: the size-capped tmpfs.
        try:
            stats = os.statvfs(f"/proc/{sandbox.init_pid}/root/")
        except OSError:
            return False
        return stats.f_blocks > 0 and stats.f_bavail == 0

    # -------------------------------------------------------------- destroy --

    async def destroy(self, sandbox_id: str, reason: str = "killed") -> dict:
        """Kill everything in the sandbox and remove what it was made of. Idempotent."""
        sandbox = self.get(sandbox_id)
        if sandbox.status == "destroying":
            await sandbox._destroyed.wait()
        if sandbox.final_record is not None:
            return sandbox.final_record
        sandbox.ending_reason = sandbox.ending_reason or reason
        sandbox.status = "destroying"
        try:
            record = await self._teardown(sandbox, reason=sandbox.ending_reason)
            sandbox.final_record = record
        finally:
            sandbox.status = "destroyed"
            sandbox._destroyed.set()
        for callback in self.on_destroyed if sandbox.announced else ():
            try:
                await callback(sandbox, record)
            except Exception:
                log.exception("on_destroyed callback failed", extra={"sandbox_id": sandbox.id})
        return record

    async def _teardown(self, sandbox: Sandbox, *, reason: str) -> dict:
        """Undo create in reverse order; safe on a half-created sandbox."""
        if sandbox._lifetime_timer is not None:
            sandbox._lifetime_timer.cancel()
        usage = None
        mark = time.perf_counter()
        shim = sandbox._shim
        if shim is not None and shim.returncode is None and sandbox.init_pid:
            # PID 1's death makes the kernel kill everything in its pid namespace; its
            # pid cannot be reused meanwhile, since the shim has not reaped it yet.
            with contextlib.suppress(ProcessLookupError):
                os.kill(sandbox.init_pid, signal.SIGKILL)
        if shim is not None:
            try:
                await asyncio.wait_for(shim.wait(), SHIM_EXIT_TIMEOUT_S)
            except TimeoutError:
                shim.kill()
                await shim.wait()
        mark = _lap(sandbox, "destroy_kill", mark)

        # The counters read at the end of the last exec are final if nothing ran since: no
        # exec is running and the last one left only PID 1 (which only waits) behind.
        # Otherwise they are read again once everything is dead.
        last = sandbox.last_usage
        fresh = (
            sandbox.active_execs == 0
            and sandbox.executions > 0
            and last is not None
            and last.pids_current is not None
            and last.pids_current <= 1
        )

        def reap() -> CgroupUsage | None:
            # One trip to a worker thread for the rest: the cgroup is normally empty by now
            # (a process that escaped the pid namespace cannot exist; kill() makes sure),
            # its counters are read, then the netns and the cgroup go.
            if sandbox._cgroup is None:
                measured = None
            elif fresh:
                with contextlib.suppress(CgroupError, OSError):
                    sandbox._cgroup.kill()
                measured = sandbox.last_usage
            else:
                measured = self._kill_and_measure(sandbox)
            if sandbox.netns:
                network.remove(sandbox.netns)
            if sandbox._cgroup is not None:
                sandbox._cgroup.destroy()
            return measured

        try:
            if fresh and sandbox._cgroup is not None and self._remove_at_once(sandbox):
                # Nothing left to kill or wait for: no trip to a worker thread (one trip
                # is ~0.1 ms, and its wake-up a tail of its own on a busy host).
                usage = sandbox.last_usage
            else:
                usage = await asyncio.to_thread(reap)
        finally:
            # The budget frees at once; the uid only once its cgroup is gone (reap
            # returned): until then something of the sandbox might still run as it.
            if self.admission is not None:
                self.admission.release(sandbox.id)
            self.gpus.release(sandbox.id)
        if sandbox.uid is not None and self.uids is not None:
            self.uids.release(sandbox.uid)
        if usage is not None:
            sandbox.last_usage = usage
        _lap(sandbox, "destroy_reap", mark)
        return {
            "sandbox_id": sandbox.id,
            "termination_reason": reason,
            "wall_s": round(time.time() - sandbox.created_at, 6),
            "executions": sandbox.executions,
            "cgroup": usage.as_dict() if usage else {},
            "limits": vars(sandbox.spec.caps).copy(),
        }

    @staticmethod
    def _remove_at_once(sandbox: Sandbox) -> bool:
        """Remove the netns and an already empty cgroup without waiting; False (nothing
        lost) when the cgroup still holds something, for the worker thread to kill."""
        try:
            if not sandbox._cgroup.remove_if_empty():
                return False
            if sandbox.netns:
                network.remove(sandbox.netns)
        except (CgroupError, OSError):
            return False
        return True

    def _kill_and_measure(self, sandbox: Sandbox) -> CgroupUsage:
        with contextlib.suppress(CgroupError, OSError):
            sandbox._cgroup.kill()
        return self._usage(sandbox)

    async def reap_expired(self) -> list[str]:
        """Backstop for the per-sandbox timers: destroy every sandbox past its lifetime."""
        now = time.time()
        expired = [s.id for s in self._sandboxes.values() if s.status == "running" and s.expires_at <= now]
        for sandbox_id in expired:
            await self.destroy(sandbox_id, reason="lifetime")
        return expired

    def forget(self, sandbox_id: str) -> None:
        """Drop a destroyed sandbox from memory (its record lives in the store)."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is not None and sandbox.status == "destroyed":
            del self._sandboxes[sandbox_id]

    async def close(self) -> None:
        """Destroy every sandbox and remove the instance's cgroup parents."""
        for sandbox_id in list(self._sandboxes):
            with contextlib.suppress(SandboxError):
                await self.destroy(sandbox_id, reason="killed")
        self._sandboxes.clear()
        if self._cgroups is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._cgroups.teardown)
