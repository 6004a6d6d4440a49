"""A learn cycle's read-only inputs on disk, and the binds that show them inside a sandbox.
Below both the training service and the sandbox service: each stages inputs the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime import mounts


def write_inputs(data_dir: Path, request: dict, x: np.ndarray, y: np.ndarray) -> None:
    """/data/job.json and /data/batch.npz, readable by the sandbox's own user."""
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(data_dir / "batch.npz", x=x, y=y)
    (data_dir / "job.json").write_text(json.dumps(request))
    for path in (data_dir.parent, data_dir, data_dir / "batch.npz", data_dir / "job.json"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def learn_binds(data_dir: Path, base_model_path: str) -> tuple[mounts.Bind, ...]:
    """The inputs at /data and the base model at /model/base.npz, both read-only."""
    return (
        mounts.Bind(str(data_dir), mounts.DATA_DIR),
        mounts.Bind(base_model_path, f"{mounts.MODEL_DIR}/base.npz"),
    )
