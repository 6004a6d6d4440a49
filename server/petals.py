"""Petal training: training jobs become learn cycles run in sandboxes; completed cycles
against the same base version form a round; a round's deltas are aggregated into a
candidate that validators vote on; an approved candidate becomes the next version.

Stale deltas are rejected, not down-weighted: a cycle that completes after its round
closed (its base is older than the current version) is marked failed with the reason
`stale_base`, so a version only ever mixes updates computed from the same parameters."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import aggregation
from rootfs import models
from runtime import mounts
from runtime.sandbox import ResourceCaps, SandboxError, SandboxManager, SandboxSpec

from . import consensus
from .config import Settings
from .errors import BadRequest, Conflict, NotFound, TooManyRequests
from .model_store import ModelInfo, ModelStore
from .onnx_export import OnnxRunner, to_onnx
from .sandboxes import caps_within_limits
from .store import Store

log = logging.getLogger("wondercraft.petals")

MODEL_TYPE = re.compile(r"^(linear|logistic|softmax|mlp)(?::([A-Za-z0-9][A-Za-z0-9._-]{0,63}))?$")
CYCLE_STATUSES = ("queued", "running", "retrying", "completed", "failed", "aggregated")
# Ends of a cycle that retrying cannot fix: a cap was hit or someone killed it.
NOT_RETRIED = ("memory_limit", "pids_limit", "storage_limit", "timeout", "lifetime", "killed")
DEFAULT_HIDDEN = (32,)
MAX_RESULT_BYTES = 256 << 20


@dataclass
class Progress:
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    accuracy: float | None = None


@dataclass
class Cycle:
    cycle_id: str
    agent_id: str
    model_name: str
    status: str
    request: dict
    base_version: int
    created_at: float
    attempts: int = 0
    sandbox_id: str | None = None
    result: dict | None = None
    error: dict | None = None
    result_version: int | None = None
    progress: Progress = field(default_factory=Progress)
    deltas: dict[str, np.ndarray] | None = None  # held until the round closes
    num_samples: int = 0

    def as_json(self) -> dict:
        body = {
            "cycleId": self.cycle_id,
            "agentId": self.agent_id,
            "modelType": self.model_name,
            "status": self.status,
            "attempts": self.attempts,
            "sandboxId": self.sandbox_id,
            "baseVersion": self.base_version,
            "resultVersion": self.result_version,
            "createdAt": int(self.created_at * 1000),
            "progress": {
                "epoch": self.progress.epoch,
                "epochs": self.progress.epochs,
                "loss": self.progress.loss,
                "accuracy": self.progress.accuracy,
            },
        }
        if self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        return body


def parse_model_type(model_type: str) -> tuple[str, str]:
    """(family, shared model name): `mlp:digits` -> ("mlp", "mlp:digits")."""
    match = MODEL_TYPE.match(model_type)
    if not match:
        raise BadRequest(
            f"modelType must be linear, logistic, softmax or mlp, optionally named as family:name "
            f"(name of letters, digits, '.', '_' or '-'), got {model_type[:80]!r}"
        )
    return match.group(1), model_type


def _deltas_summary(deltas: dict[str, np.ndarray], base_version: int) -> dict:
    flat = [t.astype(np.float64).ravel() for t in deltas.values()]
    summary: dict[str, Any] = {
        "parameterCount": int(sum(t.size for t in flat)),
        "tensorCount": len(deltas),
        "sha256": hashlib.sha256(b"".join(t.astype(np.float32).tobytes() for t in flat)).hexdigest(),
        "baseVersion": base_version,
    }
    norm = math.sqrt(sum(float(np.dot(t, t)) for t in flat))
    if math.isfinite(norm):
        summary["l2Norm"] = norm
        summary["maxAbs"] = float(max((np.abs(t).max() for t in flat if t.size), default=0.0))
    return summary


class FairQueue:
    """Round-robin across agents: each agent's jobs wait in its own line."""

    def __init__(self) -> None:
        self._lines: OrderedDict[str, deque[str]] = OrderedDict()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def put(self, agent_id: str, cycle_id: str) -> None:
        self._lines.setdefault(agent_id, deque()).append(cycle_id)
        self._ready.set()

    async def get(self) -> str:
        while not self._lines:
            self._ready.clear()
            await self._ready.wait()
        agent_id, line = next(iter(self._lines.items()))
        cycle_id = line.popleft()
        del self._lines[agent_id]
        if line:
            self._lines[agent_id] = line  # to the back: the next agent goes first
        return cycle_id


class PetalsService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        state_dir: Path,
        sandboxes: SandboxManager,
        *,
        telemetry=None,
        audit=None,
        metrics=None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.state_dir = Path(state_dir)
        self.sandboxes = sandboxes
        self.telemetry = telemetry
        self.audit = audit
        self.metrics = metrics
        self.models = ModelStore(store, self.state_dir)
        self.onnx = OnnxRunner()
        self._cycles: dict[str, Cycle] = {}
        self._queue = FairQueue()
        self._slots = asyncio.Semaphore(settings.max_concurrent_cycles)
        self._tasks: set[asyncio.Task] = set()
        self._round_checks: set[asyncio.Task] = set()
        self._dispatcher: asyncio.Task | None = None
        self._round_locks: dict[str, asyncio.Lock] = {}
        self._round_timers: dict[tuple[str, int], asyncio.TimerHandle] = {}
        self._closed_rounds: set[tuple[str, int]] = set()
        self._stopping = False
        self._work_dir = self.state_dir / "cycles"
        # Test hook: a closing round first waits (at most this many seconds) until another
        # cycle of its base has completed, which forces the close/complete interleaving.
        self._hold_round_close_s = float(os.environ.get("WONDERCRAFT_TEST_HOLD_ROUND_CLOSE", "0") or 0)

    # ------------------------------------------------------------ lifecycle --

    async def start(self) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._recover)
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    def _recover(self) -> None:
        """Cycles a previous run left queued or running go back in the queue, and so do
        completed ones whose round had not closed (their deltas lived in memory only; the
        seed makes the re-run give the same deltas). Attempt counts stay, so the retry
        policy bounds cycles that keep being interrupted too."""
        rows = self.store.query(
            "SELECT * FROM cycles WHERE status IN ('queued', 'running', 'retrying', 'completed') ORDER BY created_at"
        )
        for row in rows:
            if row["status"] == "completed" and "round" in json.loads(row["result"] or "{}"):
                continue  # its round closed: nothing is owed to it
            cycle = Cycle(
                row["cycle_id"], row["agent_id"], row["model_name"], "queued", json.loads(row["request"]),
                row["base_version"], row["created_at"], attempts=row["attempts"],
            )  # fmt: skip
            if not (self._work_dir / cycle.cycle_id / "data" / "job.json").exists():
                self._set_failed_blocking(cycle, "lost", "the cycle's inputs were lost in a restart")
                continue
            if cycle.attempts > self.settings.petals_max_retries:
                self._set_failed_blocking(
                    cycle, "interrupted", f"interrupted {cycle.attempts} times (service restarts); giving up"
                )
                continue
            self._cycles[cycle.cycle_id] = cycle
            self._persist_blocking(cycle)
            self._queue.put(cycle.agent_id, cycle.cycle_id)

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop taking work; running cycles get `grace_s` to finish, then their sandboxes die."""
        self._stopping = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        for timer in self._round_timers.values():
            timer.cancel()
        running = [t for t in self._tasks if not t.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # ----------------------------------------------------------- submission --

    def _signature(
        self, family: str, body: dict, first: dict, existing: ModelInfo | None
    ) -> models.Signature:
        config = body.get("modelConfig") or {}
        if existing is not None and not config:
            # The data's width is compared with the model's by ensure(): a mismatch is a 409.
            return models.Signature(
                family, len(first["x"]), existing.signature.num_classes, existing.signature.hidden
            )
        input_dim = int(config.get("inputDim", len(first["x"])))
        if family in ("linear", "logistic"):
            num_classes = int(config.get("numClasses", 1))
        elif "numClasses" in config:
            num_classes = int(config["numClasses"])
        elif existing is not None:
            num_classes = existing.signature.num_classes
        else:
            num_classes = int(max(item["y"] for item in body["dataBatch"])) + 1
        hidden: tuple[int, ...] = ()
        if family == "mlp":
            hidden = tuple(
                int(h)
                for h in config.get("hidden", existing.signature.hidden if existing else DEFAULT_HIDDEN)
            )
        elif config.get("hidden"):
            raise BadRequest(f"modelConfig.hidden applies to mlp models only, not {family}")
        if family in ("softmax", "mlp") and num_classes < 2:
            raise BadRequest(f"modelConfig.numClasses must be at least 2 for {family}, got {num_classes}")
        if family in ("linear", "logistic") and num_classes != 1:
            raise BadRequest(f"modelConfig.numClasses must be 1 for {family}, got {num_classes}")
        signature = models.Signature(family, input_dim, num_classes, hidden)
        sizes = signature.layer_sizes()
        parameters = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        if parameters > self.settings.petals_max_model_parameters:
            raise BadRequest(
                f"modelConfig describes {parameters} parameters, above PETALS_MAX_MODEL_PARAMETERS "
                f"({self.settings.petals_max_model_parameters})"
            )
        return signature

    @staticmethod
    def _batch(signature: models.Signature, items: list) -> tuple[np.ndarray, np.ndarray]:
        """The data batch as arrays; the first bad item is named."""
        if not items:
            raise BadRequest("dataBatch must hold at least one item")
        xs = np.empty((len(items), signature.input_dim), dtype=np.float32)
        ys = np.empty(len(items), dtype=np.float32)
        for index, item in enumerate(items):
            x, y = item.get("x"), item.get("y")
            if not isinstance(x, list) or len(x) != signature.input_dim:
                got = len(x) if isinstance(x, list) else type(x).__name__
                raise BadRequest(
                    f"dataBatch[{index}].x must be a list of {signature.input_dim} numbers, got {got}"
                )
            row = np.asarray(x, dtype=np.float64) if all(_is_number(v) for v in x) else None
            if row is None or not np.isfinite(row).all() or np.abs(row).max(initial=0) > 3.0e38:
                raise BadRequest(f"dataBatch[{index}].x must hold finite float32 numbers")
            if not _is_number(y) or not math.isfinite(float(y)):
                raise BadRequest(f"dataBatch[{index}].y must be a finite number, got {y!r}")
            label = float(y)
            if signature.family == "logistic" and label not in (0.0, 1.0):
                raise BadRequest(f"dataBatch[{index}].y must be 0 or 1 for logistic models, got {y!r}")
            if signature.family in ("softmax", "mlp") and (
                not label.is_integer() or not 0 <= label < signature.num_classes
            ):
                raise BadRequest(
                    f"dataBatch[{index}].y must be a class label 0..{signature.num_classes - 1}, got {y!r}"
                )
            xs[index] = row
            ys[index] = label
        return xs, ys

    async def prepare(self, body: dict) -> tuple[ModelInfo, dict, np.ndarray, np.ndarray]:
        """Validate a PetalTrainingRequest and make sure its shared model exists: the model,
        the job description the learn cycle reads, and the batch as arrays."""
        family, model_name = parse_model_type(body["modelType"])
        items = body["dataBatch"]
        if not items:
            raise BadRequest("dataBatch must hold at least one item")
        first = items[0] if isinstance(items[0], dict) else {}
        if not isinstance(first.get("x"), list):
            raise BadRequest("dataBatch[0].x must be a list of numbers")
        existing = await asyncio.to_thread(self.models.get, model_name)
        signature = self._signature(family, body, first, existing)
        if existing is not None and existing.signature.differences(signature):
            raise Conflict(
                f"model {model_name!r} already exists with another signature: "
                + "; ".join(existing.signature.differences(signature)),
                details={"signature": existing.signature.as_dict()},
            )
        params = body.get("trainingParams") or {}
        caps = body.get("resourceCaps") or {}
        caps_within_limits(self.settings, caps)
        # Thousands of items take tens of milliseconds to check: not on the event loop.
        x, y = await asyncio.to_thread(self._batch, signature, items)
        # Only a request valid in every other respect may create the model.
        info, created = await asyncio.to_thread(self.models.ensure, model_name, signature)
        if created and self.audit is not None:
            body_ = {"signature": signature.as_dict(), "version": 0}
            await self.audit.append("model_created", model_name, body_)
        request = {
            "modelType": model_name,
            "signature": signature.as_dict(),
            "learningRate": params.get("learningRate", self.settings.default_learning_rate),
            "batchSize": params.get("batchSize", self.settings.default_batch_size),
            "epochs": params.get("epochs", self.settings.default_epochs),
            "seed": body.get("seed", secrets.randbits(31)),
            "resourceCaps": {
                "cpu": caps.get("cpu", self.settings.sandbox_default_cpu_cores),
                "memory": caps.get("memory", self.settings.sandbox_default_memory_mb),
            },
            "numSamples": len(items),
        }
        return info, request, x, y

    async def submit(self, agent_id: str, body: dict) -> dict:
        if self._stopping:
            raise TooManyRequests("the service is shutting down; retry on another host", retry_after_s=5)
        if len(self._queue) >= self.settings.petals_max_queue_depth:
            raise TooManyRequests(
                f"the training queue is full ({self.settings.petals_max_queue_depth} cycles waiting); retry later",
                retry_after_s=max(1, int(self.settings.petals_retry_base_delay_s * 4)),
            )
        info, request, x, y = await self.prepare(body)
        cycle = Cycle(
            f"cy-{secrets.token_hex(8)}",
            agent_id,
            info.name,
            "queued",
            request,
            info.current_version,
            time.time(),
        )
        cycle.progress.epochs = int(request["epochs"])
        # Enrolled in its round from the moment its base version is fixed, before any await:
        # a round must not close without a cycle that was accepted against its base.
        self._cycles[cycle.cycle_id] = cycle
        try:
            await asyncio.to_thread(write_inputs, self._work_dir / cycle.cycle_id / "data", request, x, y)
            await asyncio.to_thread(self._insert_blocking, cycle)
        except BaseException:
            self._cycles.pop(cycle.cycle_id, None)
            await asyncio.to_thread(self.cleanup_inputs, cycle.cycle_id)
            raise
        self._queue.put(agent_id, cycle.cycle_id)
        self._set_queue_gauge()
        return {"cycleId": cycle.cycle_id, "status": "queued", "baseVersion": cycle.base_version}

    # ------------------------------------------------------------- storage --

    def _insert_blocking(self, cycle: Cycle) -> None:
        now = time.time()
        self.store.execute(
            "INSERT INTO cycles(cycle_id, agent_id, model_name, status, request, base_version, attempts,"
            " created_at, updated_at) VALUES(?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (cycle.cycle_id, cycle.agent_id, cycle.model_name, cycle.status, json.dumps(cycle.request),
             cycle.base_version, cycle.created_at, now),
        )  # fmt: skip

    def _persist_blocking(self, cycle: Cycle, conn=None) -> None:
        execute = conn.execute if conn is not None else self.store.execute
        execute(
            "UPDATE cycles SET status = ?, attempts = ?, sandbox_id = ?, result = ?, error = ?,"
            " result_version = ?, base_version = ?, updated_at = ? WHERE cycle_id = ?",
            (
                cycle.status, cycle.attempts, cycle.sandbox_id,
                json.dumps(cycle.result) if cycle.result is not None else None,
                json.dumps(cycle.error) if cycle.error is not None else None,
                cycle.result_version, cycle.base_version, time.time(), cycle.cycle_id,
            ),
        )  # fmt: skip

    async def _persist(self, cycle: Cycle) -> None:
        await asyncio.to_thread(self._persist_blocking, cycle)

    def _set_failed_blocking(self, cycle: Cycle, reason: str, message: str) -> None:
        cycle.status = "failed"
        cycle.error = {"reason": reason, "message": message}
        self._persist_blocking(cycle)

    def get(self, cycle_id: str) -> dict:
        cycle = self._cycles.get(cycle_id)
        if cycle is not None:
            return cycle.as_json()
        rows = self.store.query("SELECT * FROM cycles WHERE cycle_id = ?", (cycle_id,))
        if not rows:
            raise NotFound(f"no training cycle {cycle_id!r}")
        row = rows[0]
        stored = Cycle(
            row["cycle_id"], row["agent_id"], row["model_name"], row["status"], json.loads(row["request"]),
            row["base_version"], row["created_at"], attempts=row["attempts"], sandbox_id=row["sandbox_id"],
            result=json.loads(row["result"]) if row["result"] else None,
            error=json.loads(row["error"]) if row["error"] else None, result_version=row["result_version"],
        )  # fmt: skip
        stored.progress.epochs = int(stored.request.get("epochs", 0))
        if stored.result:
            stored.progress.epoch = len(stored.result.get("epochs", []))
            stored.progress.loss = stored.result.get("metrics", {}).get("loss")
            stored.progress.accuracy = stored.result.get("metrics", {}).get("accuracy")
        return stored.as_json()

    def owner_of(self, cycle_id: str) -> str | None:
        cycle = self._cycles.get(cycle_id)
        if cycle is not None:
            return cycle.agent_id
        rows = self.store.query("SELECT agent_id FROM cycles WHERE cycle_id = ?", (cycle_id,))
        return rows[0]["agent_id"] if rows else None

    # ------------------------------------------------------------ running --

    def _set_queue_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.training_queue_depth.set(len(self._queue))
            self.metrics.training_cycles_running.set(
                sum(1 for c in self._cycles.values() if c.status in ("running", "retrying"))
            )

    async def _dispatch(self) -> None:
        while True:
            cycle_id = await self._queue.get()
            self._set_queue_gauge()
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._run(cycle_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, cycle_id: str) -> None:
        cycle = self._cycles[cycle_id]
        try:
            while True:
                outcome = await self._attempt(cycle)
                if outcome != "retry":
                    break
                if cycle.attempts >= self.settings.petals_max_retries + 1:
                    await self._fail(
                        cycle, "crashed", f"the learn cycle failed {cycle.attempts} times; giving up"
                    )
                    break
                delay = self.settings.petals_retry_base_delay_s * (2 ** (cycle.attempts - 1))
                delay *= random.uniform(0.5, 1.5)  # jitter: retries of one failure spread out
                cycle.status = "retrying"
                cycle.error = {**(cycle.error or {}), "retryInSeconds": round(delay, 3)}
                await self._persist(cycle)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if cycle.status in ("running", "retrying"):
                cycle.status = "queued"  # picked up again by the next start
                await asyncio.shield(self._persist(cycle))
            raise
        except Exception as exc:
            log.exception("learn cycle crashed the runner", extra={"cycle_id": cycle_id})
            await self._fail(cycle, "internal", f"internal error: {exc}")
        finally:
            self._slots.release()

    async def _attempt(self, cycle: Cycle) -> str:
        """One try: 'done', 'failed' or 'retry'."""
        cycle.attempts += 1
        cycle.status = "running"
        cycle.error = None
        cycle.progress = Progress(epochs=int(cycle.request["epochs"]))
        await self._persist(cycle)
        base = await asyncio.to_thread(self.models.version, cycle.model_name, cycle.base_version)
        caps = ResourceCaps(
            cpu_cores=float(cycle.request["resourceCaps"]["cpu"]),
            memory_mb=int(cycle.request["resourceCaps"]["memory"]),
        )
        spec = SandboxSpec(
            agent_id=cycle.agent_id,
            caps=caps,
            lifetime_s=float(self.settings.sandbox_max_lifetime_s),
            binds=(
                mounts.Bind(str(self._work_dir / cycle.cycle_id / "data"), mounts.DATA_DIR),
                mounts.Bind(base.path, f"{mounts.MODEL_DIR}/base.npz"),
            ),
            env={"WONDERCRAFT_CYCLE_ID": cycle.cycle_id, "WONDERCRAFT_ATTEMPT": str(cycle.attempts)},
        )
        try:
            sandbox = await self.sandboxes.create(spec)
        except SandboxError as exc:
            cycle.error = {"reason": "sandbox_start", "message": str(exc)}
            log.warning("sandbox could not start", extra={"cycle_id": cycle.cycle_id, "error": str(exc)})
            return "retry"
        cycle.sandbox_id = sandbox.id
        await self._persist(cycle)
        try:
            result = await self.sandboxes.execute(
                sandbox.id,
                self.settings.learn_command,
                timeout_s=float(self.settings.sandbox_max_lifetime_s),
                output_limit_bytes=MAX_RESULT_BYTES,
                on_stderr_line=lambda line: self._on_progress(cycle, line),
            )
        finally:
            record = await self.sandboxes.destroy(sandbox.id, reason="destroyed")
            self.sandboxes.forget(sandbox.id)
        resources = {"exec": result.usage, "sandbox": record}
        if result.termination_reason in NOT_RETRIED:
            await self._fail(
                cycle, result.termination_reason,
                f"the learn cycle was ended: {result.termination_reason}", resources=resources,
            )  # fmt: skip
            return "failed"
        if result.exit_code != 0 or result.truncated:
            tail = result.stderr.decode(errors="replace")[-2000:]
            cycle.error = {
                "reason": "crashed",
                "message": f"exit {result.exit_code} signal {result.signal}: {tail}",
            }
            cycle.result = {"resourceRecord": resources}
            log.warning("learn cycle crashed", extra={"cycle_id": cycle.cycle_id, "attempt": cycle.attempts})
            self._emit(cycle, "training_cycle_failed", error=f"crashed (attempt {cycle.attempts})")
            return "retry"
        try:
            parsed = await asyncio.to_thread(self._parse_result, cycle, result.stdout)
        except ValueError as exc:
            await self._fail(cycle, "invalid_result", str(exc), resources=resources)
            return "failed"
        deltas, body = parsed
        cycle.deltas = deltas
        cycle.num_samples = body["numSamples"]
        cycle.result = {
            "numSamples": body["numSamples"],
            "metrics": body["metrics"],
            "epochs": body["epochs"],
            "deltas": _deltas_summary(deltas, cycle.base_version),
            "resourceRecord": resources,
        }
        cycle.status = "completed"
        await self._persist(cycle)
        self._emit(cycle, "training_cycle_completed")
        self._count(cycle, "completed")
        await self._on_completed(cycle)
        return "done"

    def _on_progress(self, cycle: Cycle, line: str) -> None:
        if not line.startswith('{"progress"'):
            return
        with contextlib.suppress(ValueError, KeyError, TypeError):
            progress = json.loads(line)["progress"]
            cycle.progress = Progress(
                int(progress["epoch"]),
                int(progress["epochs"]),
                _finite_or_none(progress["loss"]),  # a diverging cycle reports NaN; JSON has none
                _finite_or_none(progress["accuracy"]),
            )

    def _parse_result(self, cycle: Cycle, stdout: bytes) -> tuple[dict[str, np.ndarray], dict]:
        try:
            body = json.loads(stdout)
        except ValueError:
            raise ValueError("the learn cycle's output is not JSON") from None
        signature = models.Signature.from_dict(cycle.request["signature"])
        expected = models.tensor_names(signature)
        sizes = signature.layer_sizes()
        shapes = {}
        for index in range(len(sizes) - 1):
            shapes[f"layer{index}.weight"] = (sizes[index], sizes[index + 1])
            shapes[f"layer{index}.bias"] = (sizes[index + 1],)
        raw = body.get("deltas")
        if not isinstance(raw, dict) or sorted(raw) != sorted(expected):
            raise ValueError(f"the learn cycle returned tensors {sorted(raw or {})}, expected {expected}")
        deltas = {}
        for name in expected:
            entry = raw[name]
            data = base64.b64decode(entry["data"])
            array = np.frombuffer(data, dtype=np.float32)
            if array.size != math.prod(shapes[name]) or tuple(entry.get("shape", ())) != shapes[name]:
                raise ValueError(
                    f"delta {name} has shape {entry.get('shape')}, expected {list(shapes[name])}"
                )
            deltas[name] = array.reshape(shapes[name]).copy()
        if not isinstance(body.get("numSamples"), int) or body["numSamples"] != cycle.request["numSamples"]:
            raise ValueError(
                f"numSamples must be {cycle.request['numSamples']}, got {body.get('numSamples')!r}"
            )
        metrics = body.get("metrics") or {}
        clean = {
            "loss": _finite_or_none(metrics.get("loss")),
            "accuracy": _finite_or_none(metrics.get("accuracy")),
            "duration": _finite_or_none(metrics.get("duration")),
        }
        epochs = [
            {
                "epoch": int(e["epoch"]),
                "loss": _finite_or_none(e["loss"]),
                "accuracy": _finite_or_none(e["accuracy"]),
            }
            for e in body.get("epochs", [])[:10000]
        ]
        return deltas, {"numSamples": body["numSamples"], "metrics": clean, "epochs": epochs}

    async def _fail(self, cycle: Cycle, reason: str, message: str, resources: dict | None = None) -> None:
        cycle.status = "failed"
        cycle.error = {"reason": reason, "message": message}
        if resources is not None:
            cycle.result = {**(cycle.result or {}), "resourceRecord": resources}
        await self._persist(cycle)
        log.warning(
            "learn cycle failed", extra={"cycle_id": cycle.cycle_id, "reason": reason, "detail": message}
        )
        self._emit(cycle, "training_cycle_failed", error=f"{reason}: {message}")
        self._retire(cycle)
        self._count(cycle, "failed")
        self._schedule_round_check(cycle.model_name, cycle.base_version)

    def _schedule_round_check(self, model_name: str, base_version: int) -> None:
        """Looks at the round again once the caller is done. Round code runs under the model's
        lock, and asyncio locks are not re-entrant: awaiting the check from there would wait
        on itself forever."""
        task = asyncio.get_running_loop().create_task(self._maybe_close_round(model_name, base_version))
        self._round_checks.add(task)
        task.add_done_callback(self._round_checks.discard)

    def _retire(self, cycle: Cycle) -> None:
        """A cycle with nothing left to do lives on in the store only (get() reads it there),
        so a long-running service does not keep every cycle it ever ran in memory."""
        self._cycles.pop(cycle.cycle_id, None)

    def _count(self, cycle: Cycle, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.record_cycle(outcome, time.time() - cycle.created_at)
        self._set_queue_gauge()

    def _emit(self, cycle: Cycle, event: str, error: str | None = None) -> None:
        if self.telemetry is None:
            return
        body: dict[str, Any] = {"event": event, "cycleId": cycle.cycle_id, "agentId": cycle.agent_id}
        if cycle.result and cycle.result.get("deltas"):
            body["deltas"] = cycle.result["deltas"]
        if cycle.result and cycle.result.get("metrics"):
            metrics = cycle.result["metrics"]
            body["metrics"] = {
                k: v for k, v in {
                    "loss": metrics.get("loss"),
                    "accuracy": min(1.0, max(0.0, metrics["accuracy"])) if metrics.get("accuracy") is not None else None,
                    "duration": metrics["duration"] * 1000 if metrics.get("duration") is not None else None,
                    "epochs": len(cycle.result.get("epochs", [])),
                }.items() if v is not None
            }  # fmt: skip
        if error:
            body["error"] = error[:4096]
        try:
            self.telemetry.emit(body)
        except Exception:
            log.exception("telemetry event refused", extra={"cycle_id": cycle.cycle_id})

    # -------------------------------------------------------------- rounds --

    def _round_members(self, model_name: str, base_version: int) -> tuple[list[Cycle], int]:
        """Completed cycles waiting on this round, and how many cycles are enrolled in it."""
        members, enrolled = [], 0
        for cycle in self._cycles.values():
            if cycle.model_name != model_name or cycle.base_version != base_version:
                continue
            if cycle.status in ("queued", "running", "retrying"):
                enrolled += 1
            elif cycle.status == "completed" and cycle.deltas is not None:
                enrolled += 1
                members.append(cycle)
        return members, enrolled

    async def _on_completed(self, cycle: Cycle) -> None:
        key = (cycle.model_name, cycle.base_version)
        if key not in self._round_timers and not self._stopping:
            loop = asyncio.get_running_loop()
            self._round_timers[key] = loop.call_later(
                self.settings.petals_round_deadline_s,
                lambda: loop.create_task(self._maybe_close_round(*key, deadline=True)),
            )
        await self._maybe_close_round(cycle.model_name, cycle.base_version)

    async def _maybe_close_round(self, model_name: str, base_version: int, deadline: bool = False) -> None:
        lock = self._round_locks.setdefault(model_name, asyncio.Lock())
        async with lock:
            info = await asyncio.to_thread(self.models.require, model_name)
            members, enrolled = self._round_members(model_name, base_version)
            if base_version != info.current_version:
                for cycle in members:  # the round moved on without them
                    cycle.deltas = None
                    await self._fail(cycle, "stale_base", f"base version {base_version} is older than the current "
                                     f"version {info.current_version}; stale deltas are rejected")  # fmt: skip
                return
            if not members:
                return
            needed = max(1, math.ceil(self.settings.aggregation_threshold * enrolled - 1e-9))
            if len(members) < needed and not deadline:
                return
            timer = self._round_timers.pop((model_name, base_version), None)
            if timer is not None:
                timer.cancel()
            await self._close_round(info, members, enrolled, deadline)

    async def _close_round(
        self, info: ModelInfo, members: list[Cycle], enrolled: int, deadline: bool
    ) -> None:
        if self._hold_round_close_s > 0:
            await self._hold_until_another_completes(info, members)
        started = time.perf_counter()
        base_info = await asyncio.to_thread(self.models.version, info.name, info.current_version)
        base = await asyncio.to_thread(self.models.load, base_info)
        method = self.settings.aggregation_method
        ids = [c.cycle_id for c in members]
        try:
            aggregated = await asyncio.to_thread(
                aggregation.aggregate, [c.deltas for c in members], [c.num_samples for c in members],
                method, client_ids=ids,
            )  # fmt: skip
            delta, refusal, metadata = dict(aggregated), None, aggregated.metadata.to_dict()
        except aggregation.AggregationError as exc:
            delta, refusal, metadata = None, f"aggregation refused the updates: {exc}", {"method": method}
        candidate = consensus.Candidate(info.name, info.signature, info.current_version, base, delta, refusal)
        validators: list[consensus.Validator] = [
            consensus.finite_validator,
            consensus.norm_validator(self.settings.max_update_norm),
        ]
        holdout = await asyncio.to_thread(self.models.holdout, info)
        if holdout is not None:
            validators.append(
                consensus.holdout_validator(
                    holdout, self.onnx, self.settings.validation_tolerance, base_info.sha256
                )
            )
        votes = await asyncio.to_thread(lambda: [v(candidate) for v in validators])
        approved = consensus.decide(
            votes, self.settings.aggregation_threshold, self.settings.consensus_required
        )
        proposal = {
            "baseVersion": info.current_version,
            "cycles": ids,
            "participants": [
                {"cycleId": c.cycle_id, "agentId": c.agent_id, "numSamples": c.num_samples} for c in members
            ],
            "enrolled": enrolled,
            "closedBy": "deadline" if deadline else "threshold",
            "aggregationMethod": method,
            "votes": [v.as_dict() for v in votes],
            "approved": approved,
        }
        if self.audit is not None:
            await self.audit.append("round_proposal", info.name, proposal)
            for vote in votes:
                await self.audit.append(
                    "vote", info.name, {"baseVersion": info.current_version, **vote.as_dict()}
                )
        if self.metrics is not None:
            self.metrics.aggregation_duration.labels(strategy=method).observe(time.perf_counter() - started)
            self.metrics.consensus_rounds.labels(outcome="committed" if approved else "rejected").inc()
        for cycle in members:
            cycle.deltas = None  # consumed by this round either way
        if not approved:
            reasons = "; ".join(f"{v.validator}: {v.reason}" for v in votes if not v.approve)
            for cycle in members:
                cycle.result = {**(cycle.result or {}), "round": {"outcome": "rejected", "reasons": reasons}}
                await self._persist(cycle)
                self._retire(cycle)
            if self.audit is not None:
                await self.audit.append(
                    "round_rejected", info.name, {"baseVersion": info.current_version, "reasons": reasons}
                )
            log.warning("candidate rejected", extra={"model": info.name, "reasons": reasons})
            return
        metrics = {
            "loss": _mean([c.result["metrics"].get("loss") for c in members]),
            "accuracy": _mean([c.result["metrics"].get("accuracy") for c in members]),
        }
        record = {
            "aggregationMethod": method,
            "aggregation": metadata,
            "participants": proposal["participants"],
            "timestamp": time.time(),
            "metrics": metrics,
            "votes": proposal["votes"],
        }

        def mark_aggregated(conn, version: int) -> None:
            for cycle in members:
                cycle.status = "aggregated"
                cycle.result_version = version
                cycle.result = {**(cycle.result or {}), "round": {"outcome": "committed", "version": version}}
                self._persist_blocking(cycle, conn)

        version = await asyncio.to_thread(
            self.models.commit, info.name, candidate.params, info.current_version, record, mark_aggregated
        )
        for cycle in members:
            self._retire(cycle)
        if self.audit is not None:
            await self.audit.append("model_committed", info.name, {"version": version, "parentVersion": info.current_version,
                                                                   "cycles": ids})  # fmt: skip
        log.info("model committed", extra={"model": info.name, "version": version, "cycles": len(ids)})
        # Cycles still running against the old base will find their round closed.
        self._schedule_round_check(info.name, info.current_version)

    async def _hold_until_another_completes(self, info: ModelInfo, members: list[Cycle]) -> None:
        ids = {c.cycle_id for c in members}
        deadline = time.monotonic() + self._hold_round_close_s
        while time.monotonic() < deadline:
            others = [
                c.status for c in self._cycles.values()
                if c.model_name == info.name and c.base_version == info.current_version and c.cycle_id not in ids
            ]  # fmt: skip
            if "completed" in others or not {"queued", "running", "retrying"} & set(others):
                return
            await asyncio.sleep(0.02)

    # ------------------------------------------------------- shared model --

    async def shared_model(self, model_name: str, version: int | None) -> dict:
        info = await asyncio.to_thread(self.models.require, model_name)
        version_info = await asyncio.to_thread(self.models.version, model_name, version)
        params = await asyncio.to_thread(self.models.load, version_info)
        return {
            "modelType": model_name,
            "version": version_info.version,
            "currentVersion": info.current_version,
            "signature": info.signature.as_dict(),
            "metadata": version_info.metadata,
            "parameters": {
                name: {"shape": list(v.shape), "values": v.ravel().tolist()} for name, v in params.items()
            },
        }

    async def shared_model_onnx(self, model_name: str, version: int | None) -> bytes:
        info = await asyncio.to_thread(self.models.require, model_name)
        version_info = await asyncio.to_thread(self.models.version, model_name, version)
        params = await asyncio.to_thread(self.models.load, version_info)
        return await asyncio.to_thread(to_onnx, info.signature, params, model_name, version_info.version)

    async def versions(self, model_name: str) -> dict:
        info = await asyncio.to_thread(self.models.require, model_name)
        versions = await asyncio.to_thread(self.models.versions, model_name)
        return {"modelType": model_name, "currentVersion": info.current_version,
                "versions": [v.metadata for v in versions]}  # fmt: skip

    async def predict(self, model_name: str, inputs: list, version: int | None = None) -> dict:
        info = await asyncio.to_thread(self.models.require, model_name)
        width = info.signature.input_dim
        for index, row in enumerate(inputs):
            if len(row) != width:
                raise BadRequest(
                    f"inputs[{index}] must hold {width} numbers (the model's inputDim), got {len(row)}"
                )
        x = np.asarray(inputs, dtype=np.float64)
        if not np.isfinite(x).all() or np.abs(x).max(initial=0) > 3.0e38:
            raise BadRequest("inputs must be finite float32 numbers")
        version_info = await asyncio.to_thread(self.models.version, model_name, version)
        model = await self.shared_model_onnx(model_name, version_info.version)
        outputs = await asyncio.to_thread(self.onnx.run, version_info.sha256, model, x.astype(np.float32))
        return {"modelType": model_name, "version": version_info.version, "outputs": outputs.tolist(),
                "provider": self.onnx.provider}  # fmt: skip

    async def register_holdout(self, model_name: str, items: list) -> dict:
        info = await asyncio.to_thread(self.models.require, model_name)
        x, y = await asyncio.to_thread(self._batch, info.signature, items)
        await asyncio.to_thread(self.models.set_holdout, model_name, x, y)
        if self.audit is not None:
            await self.audit.append("holdout_registered", model_name, {"samples": len(items)})
        return {"modelType": model_name, "samples": len(items)}

    async def rollback(self, model_name: str, version: int) -> dict:
        target = await asyncio.to_thread(self.models.rollback, model_name, version)
        if self.audit is not None:
            await self.audit.append("model_rollback", model_name, {"version": version})
        return {"modelType": model_name, "currentVersion": target.version, "sha256": target.sha256}

    def cleanup_inputs(self, cycle_id: str) -> None:
        shutil.rmtree(self._work_dir / cycle_id, ignore_errors=True)


def write_inputs(data_dir: Path, request: dict, x: np.ndarray, y: np.ndarray) -> None:
    """The learn cycle's read-only inputs: /data/job.json and /data/batch.npz."""
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(data_dir / "batch.npz", x=x, y=y)
    (data_dir / "job.json").write_text(json.dumps(request))
    # The sandbox user reads these through a read-only bind.
    for path in (data_dir.parent, data_dir, data_dir / "batch.npz", data_dir / "job.json"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite_or_none(value: Any) -> float | None:
    if _is_number(value) and math.isfinite(float(value)):
        return float(value)
    return None


def _mean(values: list) -> float | None:
    clean = [v for v in values if v is not None]
    return sum(clean) / len(clean) if clean else None
