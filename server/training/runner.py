"""One attempt of a learn cycle: a sandbox with the cycle's caps and read-only inputs, the
learn command run in it, its output checked tensor by tensor. The answer is a CycleOutcome
value; what it means for the cycle's round is decided elsewhere."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from rootfs import models
from runtime.admission import AdmissionRefused
from runtime.sandbox import ResourceCaps, SandboxError, SandboxManager, SandboxSpec

from ..config import Settings
from ..sandboxes import final_record, resource_usage
from ..staging import learn_binds
from ..vocabulary import NOT_RETRIED, FailureReason
from .jobs import finite_or_none

log = logging.getLogger("wondercraft.training")

MAX_RESULT_BYTES = 256 << 20


class Verdict(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"  # for good: a cap was hit, the output was invalid
    RETRY = "retry"  # worth another attempt: a crash, a sandbox that would not start
    WAIT = "wait"  # the host's budget is full now: back in the queue, the attempt not counted


@dataclass
class CycleOutcome:
    verdict: Verdict
    reason: FailureReason | None = None
    message: str = ""
    deltas: dict[str, np.ndarray] | None = None
    result: dict[str, Any] = field(
        default_factory=dict
    )  # numSamples, metrics, epochs, deltas, resourceRecord
    retry_after_s: float | None = None  # with WAIT: when the budget may have room


@dataclass(frozen=True)
class Progress:
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    accuracy: float | None = None

    def as_json(self) -> dict:
        return {"epoch": self.epoch, "epochs": self.epochs, "loss": self.loss, "accuracy": self.accuracy}


@dataclass(frozen=True)
class AttemptSpec:
    cycle_id: str
    agent_id: str
    attempt: int
    request: dict
    data_dir: Path
    base_model_path: str
    base_version: int


async def run_attempt(
    settings: Settings,
    sandboxes: SandboxManager,
    spec: AttemptSpec,
    *,
    on_sandbox: Callable[[str], None],
    on_progress: Callable[[Progress], None],
) -> CycleOutcome:
    caps = ResourceCaps(
        cpu_cores=float(spec.request["resourceCaps"]["cpu"]),
        memory_mb=int(spec.request["resourceCaps"]["memory"]),
    )
    sandbox_spec = SandboxSpec(
        agent_id=spec.agent_id,
        caps=caps,
        lifetime_s=float(settings.sandbox_max_lifetime_s),
        binds=learn_binds(spec.data_dir, spec.base_model_path),
        env={"WONDERCRAFT_CYCLE_ID": spec.cycle_id, "WONDERCRAFT_ATTEMPT": str(spec.attempt)},
    )
    try:
        sandbox = await sandboxes.create(sandbox_spec)
    except AdmissionRefused as exc:
        if exc.retry_after_s is None:  # more than the whole budget: waiting cannot help
            return CycleOutcome(Verdict.FAILED, FailureReason.OVER_BUDGET, str(exc))
        return CycleOutcome(
            Verdict.WAIT, FailureReason.OVER_BUDGET, str(exc), retry_after_s=exc.retry_after_s
        )
    except SandboxError as exc:
        log.warning("sandbox could not start", extra={"cycle_id": spec.cycle_id, "error": str(exc)})
        return CycleOutcome(Verdict.RETRY, FailureReason.SANDBOX_START, str(exc))
    on_sandbox(sandbox.id)
    try:
        result = await sandboxes.execute(
            sandbox.id,
            settings.learn_command,
            timeout_s=float(settings.sandbox_max_lifetime_s),
            output_limit_bytes=MAX_RESULT_BYTES,
            on_stderr_line=lambda line: _progress_line(line, on_progress),
        )
    finally:
        record = await sandboxes.destroy(sandbox.id, reason="destroyed")
        sandboxes.forget(sandbox.id)
    resources = {"exec": resource_usage(result.usage), "sandbox": final_record(record)}
    if result.termination_reason in NOT_RETRIED:
        reason = FailureReason(result.termination_reason)
        return CycleOutcome(
            Verdict.FAILED,
            reason,
            f"the learn cycle was ended: {reason}",
            result={"resourceRecord": resources},
        )
    if result.exit_code != 0 or result.truncated:
        tail = result.stderr.decode(errors="replace")[-2000:]
        message = f"exit {result.exit_code} signal {result.signal}: {tail}"
        return CycleOutcome(
            Verdict.RETRY, FailureReason.CRASHED, message, result={"resourceRecord": resources}
        )
    try:
        deltas, body = await asyncio.to_thread(parse_result, spec.request, result.stdout)
    except ValueError as exc:
        return CycleOutcome(
            Verdict.FAILED, FailureReason.INVALID_RESULT, str(exc), result={"resourceRecord": resources}
        )
    summary = deltas_summary(deltas, spec.base_version)
    return CycleOutcome(
        Verdict.COMPLETED, deltas=deltas, result={**body, "deltas": summary, "resourceRecord": resources}
    )


def _progress_line(line: str, on_progress: Callable[[Progress], None]) -> None:
    if not line.startswith('{"progress"'):
        return
    with contextlib.suppress(ValueError, KeyError, TypeError):
        progress = json.loads(line)["progress"]
        on_progress(
            Progress(
                int(progress["epoch"]),
                int(progress["epochs"]),
                finite_or_none(progress["loss"]),  # a diverging cycle reports NaN; JSON has none
                finite_or_none(progress["accuracy"]),
            )
        )


def parse_result(request: dict, stdout: bytes) -> tuple[dict[str, np.ndarray], dict]:
    """The learn cycle's output checked: every tensor named and shaped as the signature says."""
    try:
        body = json.loads(stdout)
    except ValueError:
        raise ValueError("the learn cycle's output is not JSON") from None
    signature = models.Signature.from_dict(request["signature"])
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
            raise ValueError(f"delta {name} has shape {entry.get('shape')}, expected {list(shapes[name])}")
        deltas[name] = array.reshape(shapes[name]).copy()
    if not isinstance(body.get("numSamples"), int) or body["numSamples"] != request["numSamples"]:
        raise ValueError(f"numSamples must be {request['numSamples']}, got {body.get('numSamples')!r}")
    metrics = body.get("metrics") or {}
    clean = {
        "loss": finite_or_none(metrics.get("loss")),
        "accuracy": finite_or_none(metrics.get("accuracy")),
        "durationSeconds": finite_or_none(metrics.get("duration")),
    }
    epochs = [
        {
            "epoch": int(e["epoch"]),
            "loss": finite_or_none(e["loss"]),
            "accuracy": finite_or_none(e["accuracy"]),
        }
        for e in body.get("epochs", [])[:10000]
    ]
    return deltas, {"numSamples": body["numSamples"], "metrics": clean, "epochs": epochs}


def deltas_summary(deltas: dict[str, np.ndarray], base_version: int) -> dict:
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
