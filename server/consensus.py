"""Consensus on a candidate model: each validator votes approve or reject with a reason;
the candidate is committed only if the approving share reaches the threshold. Validators:
all finite, update norm within a bound, and, where a hold-out set is registered, hold-out
quality (through onnxruntime) no worse than the current version's by more than a tolerance."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from rootfs import models

from .onnx_export import OnnxRunner, to_onnx


@dataclass(frozen=True)
class Vote:
    validator: str
    approve: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    model_name: str
    signature: models.Signature
    base_version: int
    base: dict[str, np.ndarray]
    delta: dict[str, np.ndarray] | None  # None when aggregation itself refused the updates
    refusal: str | None = None  # why aggregation refused (a non-finite update, ...)

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {name: (self.base[name] + self.delta[name]).astype(np.float32) for name in self.base}


Validator = Callable[[Candidate], Vote]


def finite_validator(candidate: Candidate) -> Vote:
    if candidate.delta is None:
        return Vote("finite", False, candidate.refusal or "no aggregate")
    for name, tensor in candidate.delta.items():
        if not np.isfinite(tensor).all():
            return Vote("finite", False, f"aggregated update has non-finite values in {name}")
    return Vote("finite", True, "every value is finite")


def norm_validator(max_norm: float) -> Validator:
    def vote(candidate: Candidate) -> Vote:
        if candidate.delta is None:
            return Vote("norm", False, candidate.refusal or "no aggregate")
        norm = math.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in candidate.delta.values()))
        if not math.isfinite(norm) or norm > max_norm:
            return Vote("norm", False, f"update L2 norm {norm:.4g} exceeds the bound {max_norm:g}")
        return Vote("norm", True, f"update L2 norm {norm:.4g} within {max_norm:g}")

    return vote


def holdout_quality(signature: models.Signature, probabilities: np.ndarray, y: np.ndarray) -> float:
    """Higher is better: accuracy for classifiers, negative MSE for linear models."""
    if signature.family == "linear":
        return -float(np.mean((probabilities[:, 0] - y) ** 2))
    if signature.family == "logistic":
        return float(np.mean((probabilities[:, 0] >= 0.5) == (y >= 0.5)))
    return float(np.mean(probabilities.argmax(axis=1) == y.astype(np.int64)))


def holdout_validator(
    holdout: tuple[np.ndarray, np.ndarray], runner: OnnxRunner, tolerance: float, current_sha: str
) -> Validator:
    x, y = holdout

    def vote(candidate: Candidate) -> Vote:
        if candidate.delta is None:
            return Vote("holdout", False, candidate.refusal or "no aggregate")
        params = candidate.params
        if not all(np.isfinite(t).all() for t in params.values()):
            return Vote("holdout", False, "candidate has non-finite parameters")
        sig = candidate.signature
        current = runner.run(
            current_sha, to_onnx(sig, candidate.base, candidate.model_name, candidate.base_version), x
        )
        proposed_model = to_onnx(sig, params, candidate.model_name, candidate.base_version + 1)
        proposed = runner.run(hashlib.sha256(proposed_model).hexdigest(), proposed_model, x)
        before, after = holdout_quality(sig, current, y), holdout_quality(sig, proposed, y)
        metric = "negative MSE" if sig.family == "linear" else "accuracy"
        if after + tolerance < before:
            return Vote("holdout", False, f"hold-out {metric} {after:.4f} is worse than current {before:.4f}")
        return Vote("holdout", True, f"hold-out {metric} {after:.4f} vs current {before:.4f}")

    return vote


def decide(votes: list[Vote], threshold: float, required: bool) -> bool:
    if not required:
        return True
    if not votes:
        return False
    return sum(v.approve for v in votes) / len(votes) >= threshold
