"""The training service: jobs become cycles, the scheduler runs them, and one consumer feeds
every round event to the round book and applies its decisions one at a time. Nothing that
runs a cycle calls round logic: it persists the cycle's end and queues an event. A closed
round aggregates in its own task and queues its result as one more event.

Stale deltas are rejected, not down-weighted: a version only mixes updates computed from
the same parameters."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

from runtime.sandbox import SandboxManager

from ..config import Settings
from ..errors import NotFound, TooManyRequests
from ..staging import write_inputs
from ..storage import cycles as cycle_rows
from ..storage.cycles import Cycle
from ..storage.models import ModelStore
from ..store import Store
from ..vocabulary import ACTIVE_STATUSES, RUNNING_STATUSES, CycleStatus, FailureReason
from . import caps, rounds, standing
from .aggregate import RoundResult, aggregate_round
from .catalog import ModelCatalog, policy_of
from .executors import executor_from
from .prepare import JobPreparer, PreparedJob
from .runner import AttemptSpec, CycleOutcome, Progress, Verdict
from .scheduler import CycleHooks, RetryPolicy, Scheduler
from .shared_model import SharedModels

log = logging.getLogger("wondercraft.training")


class TrainingService:
    def __init__(
        self, settings: Settings, store: Store, state_dir: Path, sandboxes: SandboxManager, *,
        telemetry=None, audit=None, metrics=None, executor=None, pool=None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.executor = executor or executor_from(settings, sandboxes, pool)
        self.store = store
        self.sandboxes = sandboxes
        self.telemetry = telemetry
        self.audit = audit
        self.metrics = metrics
        self.models = ModelStore(store, Path(state_dir))
        self.shared = SharedModels(self.models, audit)
        self._events: asyncio.Queue[rounds.Event] = asyncio.Queue()
        self.book = rounds.RoundBook()
        self.catalog = ModelCatalog(settings, store, self.models, self._events.put_nowait, audit)
        self.preparer = JobPreparer(settings, self.models, self.catalog.announce)  # datasets: set by the app
        self._work_dir = Path(state_dir) / "cycles"
        self._cycles: dict[str, Cycle] = {}  # live ones; finished ones are read from the store
        self._consumer: asyncio.Task | None = None
        self._aggregations: set[asyncio.Task] = set()
        self._wakes: dict[str, asyncio.TimerHandle] = {}
        self._stopping = False
        retry = RetryPolicy(settings.petals_max_retries, settings.petals_retry_base_delay_s)
        hooks = CycleHooks(self._attempt, lambda cid: self._cycles[cid].attempts, self._retrying,
                           self._finished, self._interrupted)  # fmt: skip
        self.scheduler = Scheduler(settings.max_concurrent_cycles, retry, hooks)
        # Test hook: a closing round first waits (at most this many seconds) until another
        # cycle of its base, not among its members, has completed: it forces that interleaving.
        self._hold_round_close_s = float(os.environ.get("WONDERCRAFT_TEST_HOLD_ROUND_CLOSE", "0") or 0)

    # ---- lifecycle ----

    async def start(self) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        recovered = await asyncio.to_thread(self._load)
        self._consumer = asyncio.get_running_loop().create_task(self._consume())
        for cycle in recovered:
            self._track(cycle)
        self.scheduler.start()

    def _load(self) -> list[Cycle]:
        """The book learns every model; cycles a previous run left unfinished are queued again
        (completed ones whose round had not closed too: their deltas lived in memory only, and
        the seed makes the re-run give the same deltas). Attempt counts stay, so the retry
        policy bounds cycles that keep being interrupted."""
        agents = cycle_rows.agents_by_model(self.store)
        for info in self.models.list_models():
            self.book.handle(rounds.ModelAdded(info.name, info.current_version, policy_of(self.settings, info),
                                               frozenset(agents.get(info.name, ()))))  # fmt: skip
        recovered = []
        for cycle in cycle_rows.unfinished(self.store):
            cycle.status, cycle.result = CycleStatus.QUEUED, None
            if not (self._work_dir / cycle.cycle_id / "job.json").exists():
                self._fail_blocking(cycle, FailureReason.LOST, "the cycle's inputs were lost in a restart")
            elif cycle.attempts > self.settings.petals_max_retries:
                message = f"interrupted {cycle.attempts} times (service restarts); giving up"
                self._fail_blocking(cycle, FailureReason.INTERRUPTED, message)
            else:
                cycle_rows.update(self.store, cycle)
                recovered.append(cycle)
        return recovered

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop taking work; running cycles get `grace_s` to finish, then their sandboxes die."""
        self._stopping = True
        await self.scheduler.stop(grace_s)
        for timer in self._wakes.values():
            timer.cancel()
        # What the last cycles reported is applied first: their round may still close and commit.
        drained_by = time.monotonic() + max(1.0, grace_s)
        while not self._events.empty() and time.monotonic() < drained_by:
            await asyncio.sleep(0.01)
        if self._aggregations:
            await asyncio.wait(self._aggregations, timeout=max(1.0, grace_s))
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        await self.executor.close()

    # ---- models (defined in catalog.py) ----

    async def create_model(self, created_by: str | None, body: dict) -> dict:
        return await self.catalog.create(created_by, body)

    async def create_program_model(self, created_by: str | None, upload) -> dict:
        return await self.catalog.create_with_program(created_by, upload, self._work_dir.parent)

    async def list_models(self, viewer: str | None = None) -> dict:
        return await self.catalog.list(viewer)

    async def delete_model(self, name: str) -> dict:
        in_flight = sum(1 for c in self._cycles.values() if c.model_name == name)
        return await self.catalog.delete(name, in_flight, self.book.closing(name) is not None)

    # ---- submission ----

    async def prepare(self, body: dict, agent_id: str | None = None) -> PreparedJob:
        """A PetalTrainingRequest checked against its model (see prepare.py)."""
        return await self.preparer.prepare(body, agent_id)

    def dataset_in_use(self, dataset_id: str) -> bool:
        """The DatasetService's hook: a queued or running cycle trains on the dataset."""
        return any(c.request.get("datasetId") == dataset_id and c.status in ACTIVE_STATUSES
                   for c in self._cycles.values())  # fmt: skip

    async def submit(self, agent_id: str, body: dict) -> dict:
        if self._stopping:
            raise TooManyRequests("the service is shutting down; retry on another host", retry_after_s=5)
        depth = self.settings.petals_max_queue_depth
        if len(self.scheduler.queue) >= depth:
            raise TooManyRequests(f"the training queue is full ({depth} cycles waiting); retry later",
                                  retry_after_s=max(1, int(self.settings.petals_retry_base_delay_s * 4)))  # fmt: skip
        info, request, x, y = await self.prepare(body, agent_id)
        await asyncio.to_thread(standing.check_admission, self, agent_id, info)
        cycle = Cycle(f"cy-{secrets.token_hex(8)}", agent_id, info.name, CycleStatus.QUEUED, request,
                      info.current_version, time.time())  # fmt: skip
        try:
            await asyncio.to_thread(write_inputs, self._work_dir / cycle.cycle_id, request, x, y)
            await asyncio.to_thread(cycle_rows.insert, self.store, cycle)
        except BaseException:
            await asyncio.to_thread(self.cleanup_inputs, cycle.cycle_id)
            raise
        self._track(cycle)
        return {"cycleId": cycle.cycle_id, "status": "queued", "baseVersion": cycle.base_version}

    def _track(self, cycle: Cycle) -> None:
        """Enrolled in its round (events keep their order) and queued to run."""
        self._cycles[cycle.cycle_id] = cycle
        self._events.put_nowait(
            rounds.Enrolled(
                cycle.cycle_id, cycle.model_name, cycle.base_version, cycle.agent_id, time.monotonic()
            )
        )
        self.scheduler.put(cycle.agent_id, cycle.cycle_id)
        self._set_gauges()

    def get(self, cycle_id: str) -> dict:
        cycle = self._cycles.get(cycle_id) or cycle_rows.get(self.store, cycle_id)
        if cycle is None:
            raise NotFound(f"no training cycle {cycle_id!r}")
        return cycle.as_json()

    def owner_of(self, cycle_id: str) -> str | None:
        cycle = self._cycles.get(cycle_id)
        return cycle.agent_id if cycle is not None else cycle_rows.owner(self.store, cycle_id)

    def cleanup_inputs(self, cycle_id: str) -> None:
        shutil.rmtree(self._work_dir / cycle_id, ignore_errors=True)

    # ---- the scheduler's hooks: a cycle's own state, never its round ----

    async def _attempt(self, cycle_id: str) -> CycleOutcome:
        cycle = self._cycles[cycle_id]
        cycle.attempts += 1
        cycle.status, cycle.error, cycle.progress = CycleStatus.RUNNING, None, {}
        await self._persist(cycle)
        self._set_gauges()
        base = await asyncio.to_thread(self.models.version, cycle.model_name, cycle.base_version)
        data_dir = None
        if "datasetId" in cycle.request:  # kept while the cycle is active (dataset_in_use)
            dataset = await asyncio.to_thread(self.preparer.datasets.get, cycle.request["datasetId"])
            data_dir = str(self.preparer.datasets.directory(dataset))
        program = (await asyncio.to_thread(self.models.require, cycle.model_name)).program or {}
        spec = AttemptSpec(cycle.cycle_id, cycle.agent_id, cycle.attempts, cycle.request,
                           self._work_dir / cycle.cycle_id, base.path, cycle.base_version, data_dir,
                           program.get("programDir"), tuple(program.get("entrypoint") or ()),
                           program.get("warmProfile") or "numpy")  # fmt: skip

        def on_progress(progress: Progress) -> None:
            cycle.progress = progress.as_json()

        return await self.executor.run(spec, on_sandbox=lambda sid: setattr(cycle, "sandbox_id", sid),
                                       on_progress=on_progress, on_node=lambda n: setattr(cycle, "node", n))  # fmt: skip

    async def _retrying(self, cycle_id: str, delay_s: float, outcome: CycleOutcome) -> None:
        cycle = self._cycles[cycle_id]
        waits = outcome.verdict == Verdict.WAIT
        if waits:
            cycle.attempts -= 1  # it never started: a full host is not the cycle's failure
        cycle.status = CycleStatus.QUEUED if waits else CycleStatus.RETRYING
        cycle.error = {"reason": str(outcome.reason), "message": outcome.message,
                       "retryInSeconds": round(delay_s, 3)}  # fmt: skip
        if outcome.result:
            cycle.result = outcome.result
        await self._persist(cycle)
        if not waits:
            log.warning(
                "learn cycle will be retried", extra={"cycle_id": cycle_id, "attempt": cycle.attempts}
            )
            self._emit(cycle, "training_cycle_failed", error=f"{outcome.reason} (attempt {cycle.attempts})")

    async def _interrupted(self, cycle_id: str) -> None:
        cycle = self._cycles.get(cycle_id)
        if cycle is not None and cycle.status in RUNNING_STATUSES:
            cycle.status = CycleStatus.QUEUED  # picked up again by the next start
            await self._persist(cycle)

    async def _finished(self, cycle_id: str, outcome: CycleOutcome) -> None:
        cycle = self._cycles[cycle_id]
        if outcome.verdict == Verdict.COMPLETED:
            cycle.deltas, cycle.num_samples = outcome.deltas, outcome.result["numSamples"]
            cycle.result, cycle.status = outcome.result, CycleStatus.COMPLETED
            await self._persist(cycle)
            self._emit(cycle, "training_cycle_completed")
            self._count(cycle, "completed")
            self._events.put_nowait(rounds.Completed(cycle_id, time.monotonic()))
        else:
            await self._fail(cycle, outcome.reason or FailureReason.INTERNAL, outcome.message, outcome.result)
            self._events.put_nowait(rounds.Failed(cycle_id, time.monotonic()))

    async def _fail(
        self, cycle: Cycle, reason: FailureReason, message: str, result: dict | None = None
    ) -> None:
        cycle.status, cycle.deltas = CycleStatus.FAILED, None
        cycle.error = caps.cycle_error(reason, message, result, cycle.request, self.settings)
        if result:
            cycle.result = {**(cycle.result or {}), **result}
        await self._persist(cycle)
        log.warning(
            "learn cycle failed", extra={"cycle_id": cycle.cycle_id, "reason": str(reason), "detail": message}
        )
        self._emit(cycle, "training_cycle_failed", error=f"{reason}: {message}")
        self._retire(cycle)
        self._count(cycle, "failed")

    def _fail_blocking(self, cycle: Cycle, reason: FailureReason, message: str) -> None:
        cycle.status, cycle.error = CycleStatus.FAILED, {"reason": str(reason), "message": message}
        cycle_rows.update(self.store, cycle)

    # ---- the one consumer ----

    async def _consume(self) -> None:
        while True:
            event = await self._events.get()
            try:
                for decision in self.book.handle(event):
                    await self._apply(decision)
            except Exception:
                log.exception("a round event could not be applied", extra={"event": repr(event)[:500]})

    async def _apply(self, decision: rounds.Decision) -> None:
        if isinstance(decision, rounds.Wake):
            self._wake_at(decision.model, decision.at)
        elif isinstance(decision, rounds.Reject):
            for cycle_id in decision.cycle_ids:
                cycle = self._cycles.get(cycle_id)
                if cycle is not None:
                    await self._fail(cycle, decision.reason, decision.message)
        else:
            # In agent order, not finishing order: the same round gives the same model bit for bit.
            members = sorted((self._cycles[c] for c in decision.members), key=lambda c: (c.agent_id, c.cycle_id))  # fmt: skip
            task = asyncio.get_running_loop().create_task(self._aggregate(decision, members))
            self._aggregations.add(task)
            task.add_done_callback(self._aggregations.discard)

    def _wake_at(self, model: str, at: float) -> None:
        previous = self._wakes.pop(model, None)
        if previous is not None:
            previous.cancel()
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - time.monotonic()) + 0.001
        self._wakes[model] = loop.call_later(
            delay, lambda: self._events.put_nowait(rounds.Deadline(model, time.monotonic()))
        )

    async def _aggregate(self, close: rounds.Close, members: list[Cycle]) -> None:
        """Aggregate, vote, commit (or not), record; then hand the result back as an event."""
        version = None
        try:
            if self._hold_round_close_s > 0:
                await self._hold_until_another_completes(close)
            result: RoundResult = await aggregate_round(self, close, members)
            version = result.version
        except Exception:
            log.exception("a round could not be aggregated", extra={"round": close.round_id})
            for cycle in members:
                cycle.deltas = None
                await self._fail(
                    cycle, FailureReason.INTERNAL, "the round could not be aggregated; see the log"
                )
        finally:
            for cycle in members:
                self._retire(cycle)
            self._events.put_nowait(rounds.Committed(close.model, close.round_id, version, time.monotonic()))

    async def _hold_until_another_completes(self, close: rounds.Close) -> None:
        ids = set(close.members)
        deadline = time.monotonic() + self._hold_round_close_s
        while time.monotonic() < deadline:
            others = {
                c.status for c in self._cycles.values()
                if c.model_name == close.model and c.base_version == close.base_version and c.cycle_id not in ids
            }  # fmt: skip
            if CycleStatus.COMPLETED in others or not others & set(ACTIVE_STATUSES):
                return
            await asyncio.sleep(0.02)

    async def rollback(self, model_name: str, version: int) -> dict:
        target = await asyncio.to_thread(self.models.rollback, model_name, version)
        self._events.put_nowait(rounds.VersionChanged(model_name, version, time.monotonic()))
        if self.audit is not None:
            await self.audit.append("model_rollback", model_name, {"version": version})
        return {"modelType": model_name, "currentVersion": target.version, "sha256": target.sha256}

    # ---- bookkeeping ----

    async def _persist(self, cycle: Cycle) -> None:
        await asyncio.to_thread(cycle_rows.update, self.store, cycle)

    def persist_blocking(self, cycle: Cycle, conn=None) -> None:
        cycle_rows.update(self.store, cycle, conn)

    def _retire(self, cycle: Cycle) -> None:
        """A cycle with nothing left to do lives on in the store only."""
        self._cycles.pop(cycle.cycle_id, None)
        self._set_gauges()

    def _count(self, cycle: Cycle, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.record_cycle(outcome, time.time() - cycle.created_at)

    def _set_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.training_queue_depth.set(len(self.scheduler.queue))
            self.metrics.training_cycles_running.set(self.scheduler.slots_in_use)

    def slots(self) -> dict:
        return {"slotsInUse": self.scheduler.slots_in_use, "maxConcurrent": self.scheduler.slots_total}

    def _emit(self, cycle: Cycle, event: str, error: str | None = None) -> None:
        if self.telemetry is None:
            return
        body: dict = {"event": event, "cycleId": cycle.cycle_id, "agentId": cycle.agent_id}
        result = cycle.result or {}
        if result.get("deltas"):
            body["deltas"] = result["deltas"]
        if result.get("metrics"):
            metrics = result["metrics"]
            accuracy = metrics.get("accuracy")
            body["metrics"] = {
                k: v for k, v in {
                    "loss": metrics.get("loss"),
                    "accuracy": min(1.0, max(0.0, accuracy)) if accuracy is not None else None,
                    "duration": metrics.get("durationSeconds"),
                    "epochs": len(result.get("epochs", [])),
                }.items() if v is not None
            }  # fmt: skip
        if error:
            body["error"] = error[:4096]
        try:
            self.telemetry.emit(body)
        except Exception:
            log.exception("telemetry event refused", extra={"cycle_id": cycle.cycle_id})
