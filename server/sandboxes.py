"""The /v1/sandbox service: sandboxes an agent creates, executes in and destroys, with
caps checked against resourceLimits, a row per sandbox in the store (its spec and the
kernel's final resource record), audit entries and per-sandbox metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path

from runtime import mounts
from runtime.admission import AdmissionRefused
from runtime.sandbox import (
    CapacityExhausted,
    ExecResult,
    InvalidSpec,
    ResourceCaps,
    Sandbox,
    SandboxManager,
    SandboxNotRunning,
    SandboxSpec,
    StartFailed,
    UnknownExecution,
    UnknownSandbox,
)

from .config import Settings
from .errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from .sandbox_views import (
    background_view,
    caps_within_limits,
    final_record,
    over_budget,
    resource_usage,
    sandbox_view,
)
from .staging import cycle_binds, write_inputs
from .store import Store

log = logging.getLogger("wondercraft.sandboxes")

DEFAULT_EXEC_TIMEOUT_S = 60.0
USAGE_TTL_S = 0.25
ACTIVE = ("running",)


class SandboxService:
    def __init__(self, settings: Settings, store: Store, state_dir: Path, runtime: SandboxManager, *,
                 audit=None, metrics=None, petals=None) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.audit = audit
        self.metrics = metrics
        self.petals = petals
        self._inputs = Path(state_dir) / "sandbox-inputs"
        self._training: dict[str, dict] = {}
        self._usage_cache: dict[str, tuple[float, asyncio.Future]] = {}
        # Every sandbox, made for the API or for a learn cycle, gets a row and metrics.
        runtime.on_created.append(self._created)
        runtime.on_destroyed.append(self._destroyed)

    async def start(self) -> None:
        """Sandboxes a previous run left marked running are gone (the orphan sweep removed
        what remained of them): record that."""
        self._inputs.mkdir(parents=True, exist_ok=True)

        def mark_lost() -> int:
            now = time.time()
            rows = self.store.query(
                "SELECT sandbox_id FROM sandboxes WHERE status IN ('creating', 'running')"
            )
            for row in rows:
                self.store.execute(
                    "UPDATE sandboxes SET status = 'destroyed', destroyed_at = ?, usage = ? WHERE sandbox_id = ?",
                    (now, json.dumps({"terminationReason": "lost"}), row["sandbox_id"]),
                )
                shutil.rmtree(self._inputs / row["sandbox_id"], ignore_errors=True)
            return len(rows)

        lost = await asyncio.to_thread(mark_lost)
        if lost:
            log.warning("sandboxes lost in a restart", extra={"count": lost})

    # ---------------------------------------------------------------- create --

    def _caps(self, body: dict) -> ResourceCaps:
        requested = body.get("resourceCaps") or {}
        storage = body.get("storageMB", self.settings.sandbox_default_storage_mb)
        return caps_within_limits(self.settings, requested, storage_mb=storage)

    async def create(self, agent_id: str, body: dict) -> dict:
        caps = self._caps(body)
        lifetime = body.get("lifetimeSeconds", self.settings.sandbox_max_lifetime_s)
        if lifetime > self.settings.sandbox_max_lifetime_s:
            raise BadRequest(
                f"lifetimeSeconds is {lifetime}, above SANDBOX_MAX_LIFETIME of {self.settings.sandbox_max_lifetime_s}"
            )
        binds: tuple[mounts.Bind, ...] = ()
        training = None
        if body.get("trainingConfig") is not None:
            training, binds = await self._prepare_training(agent_id, body["trainingConfig"])
        spec = SandboxSpec(agent_id=agent_id, caps=caps, network=body.get("network", "isolated"),
                           lifetime_s=float(lifetime), binds=binds)  # fmt: skip
        try:
            sandbox = await self.runtime.create(spec, sandbox_id=training["sandboxId"] if training else None)
        except InvalidSpec as exc:
            raise BadRequest(str(exc)) from None
        except AdmissionRefused as exc:
            self._drop_inputs(training)
            raise over_budget(exc) from None
        except CapacityExhausted as exc:
            self._drop_inputs(training)
            raise Conflict(str(exc)) from None
        except StartFailed as exc:
            # The launcher's words name steps, never host paths or pids.
            self._drop_inputs(training)
            log.warning("sandbox could not start", extra={"error": str(exc)})
            raise ServiceUnavailable(str(exc)) from None
        except Exception:
            self._drop_inputs(training)
            log.exception("sandbox could not be created")
            # The details (cgroup paths, errnos) stay in the service's log.
            raise ServiceUnavailable(
                "the sandbox could not be created; the service log has the details"
            ) from None
        if training:
            self._training[sandbox.id] = training
            await asyncio.to_thread(self._save_view, sandbox)
        return self._view(sandbox)

    def _drop_inputs(self, training: dict | None) -> None:
        if training:
            shutil.rmtree(self._inputs / training["sandboxId"], ignore_errors=True)

    async def _created(self, sandbox: Sandbox) -> None:
        view = self._view(sandbox)
        await asyncio.to_thread(self._insert, sandbox, view)
        if self.audit is not None:
            body = {"sandboxId": sandbox.id, "resourceCaps": view["resourceCaps"]}
            await self.audit.append("sandbox_created", None, body, agent_id=sandbox.spec.agent_id)
        if self.metrics is not None:
            self.metrics.sandboxes_created.inc()
            self.metrics.sandboxes_active.set(self._active_count())

    async def _destroyed(self, sandbox: Sandbox, record: dict) -> None:
        final = self._final(record)
        view = self._view(sandbox)
        view["status"] = "destroyed"

        def persist() -> None:
            self.store.execute(
                "UPDATE sandboxes SET status = 'destroyed', destroyed_at = ?, usage = ?, spec = ? WHERE sandbox_id = ?",
                (time.time(), json.dumps(final), json.dumps(view), sandbox.id),
            )
            shutil.rmtree(self._inputs / sandbox.id, ignore_errors=True)

        await asyncio.to_thread(persist)
        self._training.pop(sandbox.id, None)
        self._usage_cache.pop(sandbox.id, None)
        if self.audit is not None:
            body = {"sandboxId": sandbox.id, **final}
            await self.audit.append("sandbox_destroyed", None, body, agent_id=sandbox.spec.agent_id)
        if self.metrics is not None:
            self.metrics.sandboxes_destroyed.labels(reason=final["terminationReason"] or "destroyed").inc()
            self.metrics.forget_sandbox(sandbox.id)
            self.metrics.sandboxes_active.set(self._active_count())

    async def _prepare_training(self, agent_id: str, config: dict) -> tuple[dict, tuple[mounts.Bind, ...]]:
        if self.petals is None:
            raise BadRequest("trainingConfig needs the petals service")
        import secrets

        info, request, x, y = await self.petals.prepare(config, agent_id)
        base = await asyncio.to_thread(self.petals.models.version, info.name, info.current_version)
        sandbox_id = f"sb-{secrets.token_hex(6)}"
        cycle_dir = self._inputs / sandbox_id
        await asyncio.to_thread(write_inputs, cycle_dir, request, x, y)
        training = {
            "sandboxId": sandbox_id,
            "modelType": info.name,
            "baseVersion": base.version,
            # A model's own program is its entrypoint, run from /program; else the stock one.
            "command": list((info.program or {}).get("entrypoint") or self.settings.learn_command),
            "seed": request["seed"],
        }
        data_dir = None
        if "datasetId" in request:
            datasets = self.petals.preparer.datasets
            data_dir = datasets.directory(await asyncio.to_thread(datasets.get, request["datasetId"]))
        program_dir = (info.program or {}).get("programDir")
        return training, cycle_binds(cycle_dir, base.path, data_dir=data_dir, program_dir=program_dir)

    def _view(self, sandbox: Sandbox) -> dict:
        return sandbox_view(sandbox, self._training.get(sandbox.id))

    @staticmethod
    def _final(record: dict) -> dict:
        return final_record(record)

    def _save_view(self, sandbox: Sandbox) -> None:
        self.store.execute(
            "UPDATE sandboxes SET spec = ? WHERE sandbox_id = ?",
            (json.dumps(self._view(sandbox)), sandbox.id),
        )

    def _insert(self, sandbox: Sandbox, view: dict) -> None:
        self.store.execute(
            "INSERT INTO sandboxes(sandbox_id, agent_id, status, spec, created_at, expires_at) VALUES(?, ?, ?, ?, ?, ?)",
            (sandbox.id, sandbox.spec.agent_id, sandbox.status, json.dumps(view), sandbox.created_at, sandbox.expires_at),
        )  # fmt: skip

    def _active_count(self) -> int:
        return sum(1 for s in self.runtime.list() if s.status == "running")

    def forget_destroyed(self) -> None:
        """Destroyed sandboxes live on in the store only (the lifetime reaper leaves them in memory)."""
        for sandbox in list(self.runtime.list()):
            if sandbox.status == "destroyed":
                self.runtime.forget(sandbox.id)

    # ------------------------------------------------------------ queries --

    def owner_of(self, sandbox_id: str) -> str | None:
        try:
            return self.runtime.get(sandbox_id).spec.agent_id
        except UnknownSandbox:
            rows = self.store.query("SELECT agent_id FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,))
            return rows[0]["agent_id"] if rows else None

    async def status(self, sandbox_id: str) -> dict:
        try:
            sandbox = self.runtime.get(sandbox_id)
        except UnknownSandbox:
            return await asyncio.to_thread(self._stored, sandbox_id)
        view = self._view(sandbox)
        if sandbox.status == "running":
            view["resourceUsage"] = await self._live_usage(sandbox)
            view["healthy"] = sandbox.alive
        return view

    async def _live_usage(self, sandbox: Sandbox) -> dict:
        """The kernel's counters, at most USAGE_TTL_S old: a status poll storm shares one
        read of the cgroup files instead of sending every request to a worker thread."""
        cached = self._usage_cache.get(sandbox.id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < USAGE_TTL_S:
            return await asyncio.shield(cached[1])
        future = asyncio.ensure_future(
            asyncio.to_thread(lambda: resource_usage({"cgroup": self.runtime.usage(sandbox.id).as_dict()}))
        )
        self._usage_cache[sandbox.id] = (now, future)
        return await asyncio.shield(future)

    def _stored(self, sandbox_id: str) -> dict:
        rows = self.store.query("SELECT * FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,))
        if not rows:
            raise NotFound(f"no sandbox {sandbox_id!r}")
        row = rows[0]
        view = json.loads(row["spec"])
        view["status"] = row["status"]
        if row["usage"]:
            view["finalResourceRecord"] = json.loads(row["usage"])
        return view

    async def list_keys(self, agent_id: str | None, status: str | None) -> list[tuple[float, str]]:
        """(created_at, sandbox_id) of every matching sandbox: what a page of the list is cut from."""

        def query() -> list[tuple[float, str]]:
            sql, params = "SELECT created_at, sandbox_id FROM sandboxes WHERE 1 = 1", []
            if agent_id is not None:
                sql += " AND agent_id = ?"
                params.append(agent_id)
            if status is not None:
                sql += " AND status = ?"
                params.append(status)
            return [(float(row["created_at"]), row["sandbox_id"]) for row in self.store.query(sql, params)]

        return await asyncio.to_thread(query)

    # ------------------------------------------------------------ execute --

    async def execute(self, body: dict) -> dict:
        """Run a command and wait for it; with detach: true, start it in the background and
        answer at once (it is listed in the sandbox's status and ended by DELETE)."""
        sandbox_id = body["sandboxId"]
        timeout = body.get("timeoutSeconds", None if body.get("detach") else DEFAULT_EXEC_TIMEOUT_S)
        try:
            if body.get("detach"):
                execution = await self.runtime.start_background(
                    sandbox_id, body["command"], timeout_s=None if timeout is None else float(timeout),
                    env=body.get("env") or {}, stdin=(body.get("stdin") or "").encode(),
                )  # fmt: skip
                return {"sandboxId": sandbox_id, **background_view(execution)}
            result: ExecResult = await self.runtime.execute(
                sandbox_id,
                body["command"],
                timeout_s=float(timeout),
                env=body.get("env") or {},
                stdin=(body.get("stdin") or "").encode(),
            )
        except CapacityExhausted as exc:
            raise Conflict(str(exc)) from None
        except UnknownSandbox:
            stored = await asyncio.to_thread(self._stored, sandbox_id)  # NotFound when never seen
            raise Conflict(f"sandbox {sandbox_id} is {stored['status']}, not running") from None
        except SandboxNotRunning as exc:
            raise Conflict(str(exc)) from None
        except InvalidSpec as exc:
            raise BadRequest(str(exc)) from None
        return self._exec_reply(sandbox_id, result)

    def _exec_reply(self, sandbox_id: str, result: ExecResult) -> dict:
        usage = resource_usage(result.usage)
        if self.metrics is not None and "sandbox" in usage:
            totals = usage["sandbox"]
            self.metrics.set_sandbox_usage(
                sandbox_id, cpu_seconds=totals["cpuSeconds"], memory_bytes=totals["memoryCurrentBytes"],
                memory_peak_bytes=totals["memoryPeakBytes"], pids=None,
            )  # fmt: skip
        return {
            "sandboxId": sandbox_id,
            "executionId": result.execution_id,
            "exitCode": result.exit_code,
            "signal": result.signal,
            "stdout": result.stdout.decode(errors="replace"),
            "stderr": result.stderr.decode(errors="replace"),
            "truncated": result.truncated,
            "durationMs": result.duration_ms,
            "terminationReason": result.termination_reason,
            "resourceUsage": usage,
        }

    async def end_execution(self, sandbox_id: str, execution_id: str) -> dict:
        """End a background execution (everything it started) and return its result."""
        try:
            result = await self.runtime.end_background(sandbox_id, execution_id)
        except UnknownSandbox:
            stored = await asyncio.to_thread(self._stored, sandbox_id)  # NotFound when never seen
            raise NotFound(
                f"sandbox {sandbox_id} is {stored['status']}; its executions ended with it"
            ) from None
        except UnknownExecution as exc:
            raise NotFound(str(exc)) from None
        if result is None:
            raise Conflict(f"background execution {execution_id} could not start")
        return self._exec_reply(sandbox_id, result)

    # ------------------------------------------------------------ destroy --

    async def destroy(self, sandbox_id: str, reason: str = "destroyed") -> dict:
        """Destroy a live sandbox (its row is written by the runtime's callback), or return
        the stored record of one already gone; unknown ids are a 404."""
        try:
            await self.runtime.destroy(sandbox_id, reason=reason)
        except UnknownSandbox:
            return await asyncio.to_thread(self._stored, sandbox_id)
        self.runtime.forget(sandbox_id)
        return await asyncio.to_thread(self._stored, sandbox_id)

    async def refresh_metrics(self) -> None:
        if self.metrics is None:
            return
        running = [s for s in self.runtime.list() if s.status == "running"]

        def read() -> list[tuple[str, dict]]:
            return [(s.id, resource_usage({"cgroup": self.runtime.usage(s.id).as_dict()})) for s in running]

        for sandbox_id, usage in await asyncio.to_thread(read):
            self.metrics.set_sandbox_usage(
                sandbox_id, cpu_seconds=usage["cpuSeconds"], memory_bytes=usage["memoryCurrentBytes"],
                memory_peak_bytes=usage["memoryPeakBytes"], pids=usage.get("pidsCurrent"),
            )  # fmt: skip
        self.metrics.sandboxes_active.set(len(running))
        if self.runtime.admission is not None:
            totals = self.runtime.admission.totals()
            for resource, key in (("memory_mb", "memoryMB"), ("cpu_cores", "cpuCores"), ("gpus", "gpus")):
                self.metrics.admission_committed.labels(resource=resource).set(totals[key]["committed"])
                self.metrics.admission_budget.labels(resource=resource).set(totals[key]["budget"])

    async def destroy_all(self) -> None:
        for sandbox in list(self.runtime.list()):
            if sandbox.status != "destroyed":
                try:
                    await self.destroy(sandbox.id, reason="killed")
                except Exception:
                    log.exception(
                        "sandbox could not be destroyed at shutdown", extra={"sandbox_id": sandbox.id}
                    )
