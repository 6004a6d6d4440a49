"""Screening a round's updates one by one before they are aggregated.

Each update is checked in order: every value finite; its L2 norm within an absolute bound; its norm
within ``norm_ratio`` times the round's median norm; and its cosine similarity to the round's
coordinate-wise median at least ``min_cosine``. The relative checks need ``min_updates`` finite
updates (a median of one or two says nothing about which is the outlier). The function is pure:
it reads the updates and returns one verdict per update, in order; the caller decides what an
exclusion means for its round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .layout import ModelLayout, describe_client, tensor_table
from .strategies import aggregate, client_norms

NOT_FINITE = "not_finite"
ABOVE_BOUND = "norm_above_bound"
ABOVE_MEDIAN = "norm_above_median"
DISSIMILAR = "cosine_below_threshold"


@dataclass(frozen=True)
class ScreeningRule:
    max_norm: float | None = None  # absolute bound on each update's L2 norm (None: none)
    norm_ratio: float | None = 10.0  # bound as a multiple of the round's median norm (None: none)
    min_cosine: float | None = 0.0  # least cosine similarity to the coordinate median (None: none)
    min_updates: int = 3  # finite updates the relative checks need


@dataclass(frozen=True)
class Verdict:
    excluded: bool
    reason: str | None  # one of the constants above when excluded
    norm: float | None  # None when the update is not finite
    median_norm: float | None
    cosine: float | None

    def as_json(self) -> dict:
        return {
            "excluded": self.excluded,
            "reason": self.reason,
            "norm": _finite(self.norm),
            "medianNorm": _finite(self.median_norm),
            "cosine": _finite(self.cosine),
        }


def screen(
    updates: Sequence[Mapping[str, np.ndarray]],
    rule: ScreeningRule,
    client_ids: Sequence[str] | None = None,
) -> list[Verdict]:
    """One verdict per update. Updates must share one layout (names, shapes, float32)."""
    if not updates:
        return []
    ids = list(client_ids) if client_ids is not None else None
    layout = ModelLayout.of(updates[0], describe_client(0, ids))
    for k in range(1, len(updates)):
        layout.check(updates[k], describe_client(k, ids))
    norms = client_norms(tensor_table(layout, updates))
    finite = [k for k in range(len(updates)) if np.isfinite(norms[k])]
    relative = len(finite) >= max(1, rule.min_updates)
    median_norm = float(np.median(norms[finite])) if finite else None
    cosines: dict[int, float] = {}
    if relative and rule.min_cosine is not None:
        center = aggregate([updates[k] for k in finite], [1] * len(finite), "median")
        center_norm = math.sqrt(sum(float(np.dot(t.ravel(), t.ravel())) for t in center.values()))
        for k in finite:
            dot = sum(float(np.dot(updates[k][n].ravel().astype(np.float64), center[n].ravel()))
                      for n in layout.names)  # fmt: skip
            denominator = float(norms[k]) * center_norm
            cosines[k] = dot / denominator if denominator > 0 else 1.0
    verdicts = []
    for k in range(len(updates)):
        norm = float(norms[k])
        cosine = cosines.get(k)
        reason = None
        if k not in finite:
            reason, norm = NOT_FINITE, None
        elif rule.max_norm is not None and norm > rule.max_norm:
            reason = ABOVE_BOUND
        elif relative and rule.norm_ratio is not None and norm > rule.norm_ratio * (median_norm or 0.0):
            reason = ABOVE_MEDIAN
        elif cosine is not None and rule.min_cosine is not None and cosine < rule.min_cosine:
            reason = DISSIMILAR
        verdicts.append(Verdict(reason is not None, reason, norm, median_norm if relative else None, cosine))
    return verdicts


def describe(verdict: Verdict, rule: ScreeningRule) -> str:
    """A sentence for a cycle's status and the history."""
    if verdict.reason == NOT_FINITE:
        return "the update is not finite"
    if verdict.reason == ABOVE_BOUND:
        return f"update L2 norm {verdict.norm:.4g} exceeds the bound {rule.max_norm:g}"
    if verdict.reason == ABOVE_MEDIAN:
        return (
            f"update L2 norm {verdict.norm:.4g} exceeds {rule.norm_ratio:g} x the round's median norm "
            f"{verdict.median_norm:.4g}"
        )
    if verdict.reason == DISSIMILAR:
        return (
            f"cosine similarity {verdict.cosine:.3f} to the round's coordinate median is below "
            f"{rule.min_cosine:g}"
        )
    return "kept"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
