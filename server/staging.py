"""A learn cycle's read-only inputs on disk, and the binds that show them inside a sandbox
(the program contract of rootfs/README.md). Below both the training service and the sandbox
service: each stages inputs the same way, and every input a cycle sees is one of the binds
cycle_binds returns, so an executor on another host needs only those binds' sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime import mounts

JOB_FILE = "job.json"
JOB_PATH = "/job.json"
BASE_PATH = f"{mounts.MODEL_DIR}/base.safetensors"
PROGRAM_DIR = "/program"
# The fields of the request a program reads in /job.json (the rest is the service's own).
JOB_FIELDS = ("modelType", "learningRate", "batchSize", "epochs", "seed", "numSamples", "hyperparameters")


def job_description(request: dict) -> dict:
    """/job.json: learningRate, batchSize, epochs, seed, numSamples, the hyperparameters and
    the model's name; a stock model's signature is among its hyperparameters."""
    job = {key: request[key] for key in JOB_FIELDS if key in request}
    hyperparameters = dict(request.get("hyperparameters") or {})
    if "signature" in request:
        hyperparameters["signature"] = request["signature"]  # the service's, whatever a job says
    job["hyperparameters"] = hyperparameters
    return job


def write_job(cycle_dir: Path, request: dict) -> Path:
    cycle_dir.mkdir(parents=True, exist_ok=True)
    path = cycle_dir / JOB_FILE
    path.write_text(json.dumps(job_description(request)))
    cycle_dir.chmod(0o755)
    path.chmod(0o644)
    return path


def write_inputs(cycle_dir: Path, request: dict, x: np.ndarray | None, y: np.ndarray | None) -> None:
    """CYCLE/job.json and, for a JSON dataBatch, CYCLE/data/batch.npz (x, y); all readable
    by the sandbox's own user. A cycle on a dataset has no data directory of its own."""
    write_job(cycle_dir, request)
    if x is None:
        return
    data_dir = cycle_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(data_dir / "batch.npz", x=x, y=y)
    data_dir.chmod(0o755)
    (data_dir / "batch.npz").chmod(0o644)


def cycle_binds(
    cycle_dir: Path,
    base_model_path: str,
    *,
    data_dir: str | Path | None = None,
    program_dir: str | Path | None = None,
) -> tuple[mounts.Bind, ...]:
    """Every input of a cycle, read-only: /job.json, /data (the dataset's directory, else the
    staged batch), /model/base.safetensors and, for a model with a program, /program."""
    binds = [
        mounts.Bind(str(cycle_dir / JOB_FILE), JOB_PATH),
        mounts.Bind(str(data_dir if data_dir is not None else cycle_dir / "data"), mounts.DATA_DIR),
        mounts.Bind(str(base_model_path), BASE_PATH),
    ]
    if program_dir is not None:
        binds.append(mounts.Bind(str(program_dir), PROGRAM_DIR))
    return tuple(binds)
