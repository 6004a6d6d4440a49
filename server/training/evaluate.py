"""Hold-out validation of a model with its own program: through its ONNX graph (onnxruntime,
the candidate's tensors substituted), or, without a graph, by its `evaluateEntrypoint` run in a
sandbox under the learn contract: the tensors to judge at /model/base.safetensors, the hold-out
set at /data, and /out/metrics.json (loss and/or accuracy) read back as untrusted input."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from runtime import mounts
from runtime.sandbox import ResourceCaps, SandboxError, SandboxManager, SandboxSpec

from .. import consensus
from ..artifacts import outputs
from ..artifacts.tensors import encode_tensors
from ..config import Settings
from ..staging import cycle_binds, write_job
from . import program_models

VALIDATOR_AGENT = "validator"
EVALUATE_MEMORY_MB = 1024


def quality(metrics: dict) -> tuple[float, str]:
    """Higher is better: accuracy when the program reports it, else the negative loss."""
    if metrics.get("accuracy") is not None:
        return float(metrics["accuracy"]), "accuracy"
    if metrics.get("loss") is not None:
        return -float(metrics["loss"]), "negative loss"
    raise outputs.BadOutput("metrics.json must give loss or accuracy for a hold-out evaluation")


async def evaluate_in_sandbox(
    settings: Settings, sandboxes: SandboxManager, info, params: dict[str, np.ndarray], holdout_dir: str,
    scratch: Path, num_samples: int,
) -> dict:  # fmt: skip
    """The metrics the model's evaluateEntrypoint reports for `params` on the hold-out set."""
    folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        os.chmod(folder, 0o755)
        base = folder / "base.safetensors"
        base.write_bytes(encode_tensors({k: np.asarray(v, np.float32) for k, v in params.items()}))
        base.chmod(0o644)
        write_job(folder, {"modelType": info.name, "hyperparameters": info.program.get("hyperparameters") or {},
                           "numSamples": num_samples, "epochs": 0, "seed": 0})  # fmt: skip
        spec = SandboxSpec(
            agent_id=VALIDATOR_AGENT,
            caps=ResourceCaps(cpu_cores=1.0, memory_mb=EVALUATE_MEMORY_MB),
            lifetime_s=float(settings.sandbox_max_lifetime_s),
            binds=cycle_binds(
                folder, str(base), data_dir=holdout_dir, program_dir=info.program["programDir"]
            ),
            env={"PYTHONPATH": mounts.PROGRAM_DIR},
        )
        sandbox = await sandboxes.create(spec)
        try:
            result = await sandboxes.execute(
                sandbox.id,
                info.program["evaluateEntrypoint"],
                timeout_s=float(settings.sandbox_max_lifetime_s),
            )
            if result.exit_code != 0 or result.termination_reason is not None:
                tail = result.stderr.decode(errors="replace")[-500:]
                raise SandboxError(
                    f"evaluateEntrypoint exited {result.exit_code} ({result.termination_reason}): {tail}"
                )
            return await asyncio.to_thread(_read_metrics, sandbox.init_pid)
        finally:
            await sandboxes.destroy(sandbox.id, reason="destroyed")
            sandboxes.forget(sandbox.id)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _read_metrics(init_pid: int) -> dict:
    fd = os.open(
        f"/proc/{init_pid}/root{mounts.OUT_DIR}", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    )
    try:
        return outputs.read_metrics(Path(f"/proc/self/fd/{fd}") / outputs.METRICS_FILE)
    finally:
        os.close(fd)


async def program_holdout_validator(service, info, candidate: consensus.Candidate, holdout_path: str):
    """A validator for a program model's candidate on its hold-out set (None when there is no
    way to judge it): its graph's outputs through onnxruntime, else its evaluateEntrypoint's
    metrics in sandboxes, the current version against the candidate."""
    tolerance = service.settings.validation_tolerance
    if candidate.delta is None:
        return None
    if info.program.get("onnxPath"):
        graph = await asyncio.to_thread(Path(info.program["onnxPath"]).read_bytes)
        with np.load(holdout_path, allow_pickle=False) as archive:
            x, y = archive["x"], archive["y"]

        def run(params):
            model = program_models.with_tensors(graph, params)
            session = service.shared.onnx.session(hashlib.sha256(model).hexdigest(), model)
            out = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: x})[0]
            if out.ndim == 2 and out.shape[1] > 1:
                return {"accuracy": float(np.mean(out.argmax(axis=1) == y.astype(np.int64)))}
            return {"loss": float(np.mean((out.reshape(-1) - y.reshape(-1)) ** 2))}

        before, after = await asyncio.to_thread(lambda: (run(candidate.base), run(candidate.params)))
    elif info.program.get("evaluateEntrypoint"):
        if not all(np.isfinite(t).all() for t in candidate.params.values()):
            return lambda c: consensus.Vote("holdout", False, "candidate has non-finite parameters")
        scratch = service._work_dir
        rows = 1
        with np.load(holdout_path, allow_pickle=False) as archive:
            rows = max(len(archive[name]) for name in archive.files)
        try:
            before = await evaluate_in_sandbox(service.settings, service.sandboxes, info, candidate.base,
                                               str(Path(holdout_path).parent), scratch, rows)  # fmt: skip
            after = await evaluate_in_sandbox(service.settings, service.sandboxes, info, candidate.params,
                                              str(Path(holdout_path).parent), scratch, rows)  # fmt: skip
        except (SandboxError, outputs.BadOutput, OSError) as exc:
            message = f"evaluateEntrypoint could not judge the candidate: {exc}"[:500]
            return lambda c: consensus.Vote("holdout", False, message)
    else:
        return None
    try:
        (was, metric), (now, _) = quality(before), quality(after)
    except outputs.BadOutput as exc:
        refusal = exc.message
        return lambda c: consensus.Vote("holdout", False, refusal)
    approve = now + tolerance >= was
    word = "no worse than" if approve else "worse than"
    return lambda c: consensus.Vote(
        "holdout", approve, f"hold-out {metric} {now:.4f} is {word} current {was:.4f}"
    )
