"""One attempt of a learn cycle: a sandbox with the cycle's caps and read-only inputs (the
program contract of rootfs/README.md), the model's program run in it, and what it left in /out
read back as hostile input. The answer is a CycleOutcome value; what it means for the cycle's
round is decided elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from runtime import mounts
from runtime.admission import AdmissionRefused
from runtime.pool import WarmPool, run_cycle
from runtime.sandbox import ResourceCaps, SandboxError, SandboxManager, SandboxSpec

from ..artifacts import outputs
from ..artifacts import tensors as tensor_files
from ..config import Settings
from ..sandboxes import final_record, resource_usage
from ..staging import cycle_binds
from ..vocabulary import NOT_RETRIED, FailureReason
from .program_logs import ProgramLogs, Progress

log = logging.getLogger("wondercraft.training")

__all__ = ["AttemptSpec", "CycleOutcome", "Progress", "Verdict", "run_attempt"]

# The program's stdout and stderr are only its logs: what is kept of each is bounded.
OUTPUT_LIMIT_BYTES = 1 << 20


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
    )  # numSamples, metrics, epochs, deltas, resourceRecord, logs
    retry_after_s: float | None = None  # with WAIT: when the budget may have room


@dataclass(frozen=True)
class AttemptSpec:
    cycle_id: str
    agent_id: str
    attempt: int
    request: dict
    cycle_dir: Path  # holds job.json, and data/ for a JSON dataBatch
    base_model_path: str  # the base version's .safetensors file
    base_version: int
    data_dir: str | None = None  # a dataset's directory, else the cycle's own data/
    program_dir: str | None = None  # the model's unpacked program, None for a stock model
    command: tuple[str, ...] = ()  # the model's entrypoint; () runs the stock program
    warm_profile: str = "numpy"  # the warm pool profile (runtime/pool.py) whose sandboxes fit it

    def binds(self) -> tuple[mounts.Bind, ...]:
        return cycle_binds(
            self.cycle_dir, self.base_model_path, data_dir=self.data_dir, program_dir=self.program_dir
        )


async def run_attempt(
    settings: Settings,
    sandboxes: SandboxManager,
    spec: AttemptSpec,
    *,
    on_sandbox: Callable[[str], None],
    on_progress: Callable[[Progress], None],
    pool: WarmPool | None = None,
) -> CycleOutcome:
    """The attempt in a warm sandbox of `pool` when one of the cycle's profile and caps is
    ready, else in a cold one: the same caps, inputs, program and output reading either way."""
    sandbox_spec = SandboxSpec(
        agent_id=spec.agent_id,
        caps=cycle_caps(spec.request["resourceCaps"]),
        lifetime_s=float(settings.sandbox_max_lifetime_s),
        binds=spec.binds(),
        env={
            "WONDERCRAFT_CYCLE_ID": spec.cycle_id,
            "WONDERCRAFT_ATTEMPT": str(spec.attempt),
            "PYTHONPATH": mounts.PROGRAM_DIR,  # the helper module, `import wondercraft_learn`
        },
    )
    logs = ProgramLogs(on_progress)

    async def read_out(sandbox, result) -> outputs.CycleOutput | outputs.BadOutput | None:
        # Read before the sandbox goes: /out lives in its storage-capped upper layer.
        if result.exit_code == 0 and result.termination_reason is None:
            return await asyncio.to_thread(_read_out, sandbox.init_pid, expected)
        return None

    try:
        expected = await asyncio.to_thread(_base_shapes, spec.base_model_path)
        ran = await run_cycle(
            sandboxes, pool, spec.warm_profile, sandbox_spec, spec.command or settings.learn_command,
            timeout_s=float(settings.sandbox_max_lifetime_s), output_limit_bytes=OUTPUT_LIMIT_BYTES,
            on_stderr_line=logs.stderr_line, on_sandbox=on_sandbox, collect=read_out,
        )  # fmt: skip
    except AdmissionRefused as exc:
        if exc.retry_after_s is None:  # more than the whole budget: waiting cannot help
            return CycleOutcome(Verdict.FAILED, FailureReason.OVER_BUDGET, str(exc))
        return CycleOutcome(
            Verdict.WAIT, FailureReason.OVER_BUDGET, str(exc), retry_after_s=exc.retry_after_s
        )
    except SandboxError as exc:
        # It would not start, or died under the program (a warm one's failure already fell back
        # to a cold one inside run_cycle): worth another attempt either way.
        log.warning("sandbox could not start", extra={"cycle_id": spec.cycle_id, "error": str(exc)})
        return CycleOutcome(Verdict.RETRY, FailureReason.SANDBOX_START, str(exc))
    result, output = ran.result, ran.collected
    logs.stdout(result.stdout)
    resources = {
        "exec": resource_usage(result.usage),
        "sandbox": final_record(result.usage.get("sandbox_record") or {}),
        "warmStart": _warm_start(result.usage.get("warm")),
    }
    base = {"resourceRecord": resources, "logs": logs.text(), "epochs": logs.epochs}
    if result.termination_reason in NOT_RETRIED:
        reason = FailureReason(result.termination_reason)
        return CycleOutcome(Verdict.FAILED, reason, f"the learn cycle was ended: {reason}", result=base)
    if result.exit_code != 0:
        tail = result.stderr.decode(errors="replace")[-2000:]
        message = f"exit {result.exit_code} signal {result.signal}: {tail}"
        return CycleOutcome(Verdict.RETRY, FailureReason.CRASHED, message, result=base)
    if not isinstance(output, outputs.CycleOutput):
        message = output.message if output is not None else "the program left no output"
        return CycleOutcome(Verdict.FAILED, FailureReason.BAD_OUTPUT, message, result=base)
    body = _result_body(spec.request, output)
    if isinstance(body, outputs.BadOutput):
        return CycleOutcome(Verdict.FAILED, FailureReason.BAD_OUTPUT, body.message, result=base)
    summary = deltas_summary(output.deltas, spec.base_version)
    return CycleOutcome(Verdict.COMPLETED, deltas=output.deltas, result={**base, **body, "deltas": summary})


def cycle_caps(resource_caps: dict) -> ResourceCaps:
    """A cycle's sandbox caps from its request's resourceCaps (jobs.resource_caps made them)."""
    return ResourceCaps(
        cpu_cores=float(resource_caps["cpu"]),
        memory_mb=int(resource_caps["memory"]),
        **_optional_caps(resource_caps),
    )


def _warm_start(warm: dict | None) -> dict | None:
    """Whether a warm sandbox served the attempt: its profile and how long its warm-up took."""
    if not warm:
        return None
    return {"profile": warm.get("profile"), "warmupMs": warm.get("warmup_ms")}


def _optional_caps(caps: dict) -> dict:
    """The caps beyond cpu and memory a job may set (the storage cap bounds /out)."""
    names = {"storage": "storage_mb", "pids": "pids", "gpu": "gpu_count"}
    return {names[key]: int(value) for key, value in caps.items() if key in names and value is not None}


def _base_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the base version: what /out/deltas.safetensors must match exactly."""
    header = tensor_files.inspect_file(Path(path), max_bytes=1 << 40)
    return {name: header.tensors[name].shape for name in header.order}


def _read_out(init_pid: int | None, expected: dict) -> outputs.CycleOutput | outputs.BadOutput:
    """The sandbox's /out, read from the host through its init's root. /out itself is opened
    without following a link and everything in it through that descriptor (O_NOFOLLOW, regular
    files only, sizes checked first), so no name the program chose can lead outside /out."""
    if init_pid is None:
        return outputs.BadOutput("the sandbox ended before its output could be read")
    try:
        fd = os.open(
            f"/proc/{init_pid}/root{mounts.OUT_DIR}",
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
        )
    except OSError as exc:
        return outputs.BadOutput(f"/out cannot be opened ({exc.strerror}); it must stay a directory")
    try:
        return outputs.read_outputs(Path(f"/proc/self/fd/{fd}"), expected)
    except outputs.BadOutput as exc:
        return exc
    finally:
        os.close(fd)


def _result_body(request: dict, output: outputs.CycleOutput) -> dict | outputs.BadOutput:
    """The cycle's result from a checked output: numSamples may not exceed the examples the
    job gave it (it weighs the update in the average), the metrics as the API shows them."""
    limit = request.get("numSamples")
    if isinstance(limit, int) and output.num_samples > limit:
        return outputs.BadOutput(
            f"metrics.json: numSamples is {output.num_samples}; the job holds {limit} examples",
            field="numSamples",
        )
    metrics = dict(output.metrics)
    metrics.pop("numSamples")
    clean: dict[str, Any] = {
        "loss": metrics.pop("loss", None),
        "accuracy": metrics.pop("accuracy", None),
        "durationSeconds": metrics.pop("duration", None),
    }
    clean.update(metrics)
    return {"numSamples": output.num_samples, "metrics": clean}


def deltas_summary(deltas: dict[str, np.ndarray], base_version: int) -> dict:
    flat = [t.astype(np.float64).ravel() for t in deltas.values()]
    summary: dict[str, Any] = {
        "parameterCount": int(sum(t.size for t in flat)),
        "tensorCount": len(deltas),
        "sha256": hashlib.sha256(b"".join(t.astype(np.float32).tobytes() for t in flat)).hexdigest(),
        "baseVersion": base_version,
    }
    with contextlib.suppress(ValueError):
        norm = math.sqrt(sum(float(np.dot(t, t)) for t in flat))
        if math.isfinite(norm):
            summary["l2Norm"] = norm
            summary["maxAbs"] = float(max((np.abs(t).max() for t in flat if t.size), default=0.0))
    return summary
