"""What screening means for a closed round, decided purely from the round and the verdicts:
which members are kept, which are excluded and why, and whether the kept ones still meet the
round's policy (minClients). Also which whole updates
krum and multi-krum left out, and how much of each update trimmed mean cut."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggregation.screening import ScreeningRule, Verdict, describe

from ..vocabulary import ClosedBy
from .rounds import Close

# Trimmed-mean shares are worked out in memory over every update at once up to this size.
TRIMMED_SHARE_MAX_VALUES = 1 << 26


@dataclass(frozen=True)
class Screened:
    kept: tuple[int, ...]  # indices into the round's members
    excluded: tuple[int, ...]
    required: int  # kept updates the round needs to go on
    figures: tuple[dict, ...]  # per member: the verdict's figures and, if excluded, why in words

    @property
    def enough(self) -> bool:
        return len(self.kept) >= self.required

    def refusal(self, ids: Sequence[str]) -> str:
        why = "; ".join(f"{ids[k]}: {self.figures[k]['message']}" for k in self.excluded)
        return (
            f"screening excluded {len(self.excluded)} of {len(self.figures)} updates, leaving "
            f"{len(self.kept)} of the {self.required} the round's policy needs ({why})"
        )


def required_after_screening(close: Close) -> int:
    """Kept updates a closed round needs: minClients, or one for a round its deadline closed
    below minClients (allowPartial). aggregationThreshold is a share of participation: it
    decides when the round closes, not how many of its updates screening may leave out."""
    if close.closed_by == ClosedBy.PARTIAL:
        return 1
    return max(1, close.min_clients)


def decide(close: Close, verdicts: Sequence[Verdict], rule: ScreeningRule) -> Screened:
    figures = tuple(
        {**v.as_json(), "message": describe(v, rule)} if v.excluded else v.as_json() for v in verdicts
    )
    kept = tuple(k for k, v in enumerate(verdicts) if not v.excluded)
    excluded = tuple(k for k, v in enumerate(verdicts) if v.excluded)
    return Screened(kept, excluded, required_after_screening(close), figures)


def unscreened(close: Close, count: int) -> Screened:
    return Screened(tuple(range(count)), (), required_after_screening(close), tuple({} for _ in range(count)))


def dropped_by_krum(selected: dict, ids: Sequence[str]) -> dict[str, list[str]]:
    """Per tensor group, the updates krum / multi-krum left out."""
    return {group: [c for c in ids if c not in set(kept)] for group, kept in selected.items()}


def trimmed_shares(updates: Sequence[dict], beta: float, ids: Sequence[str]) -> dict[str, float] | None:
    """Share of each update's values that trimmed mean cut (it cuts per coordinate, never a whole
    update); None when the round is too large to work this out in memory."""
    count = len(updates)
    names = list(updates[0])
    size = sum(updates[0][n].size for n in names)
    cut = int(beta * count)
    if cut == 0 or count * size > TRIMMED_SHARE_MAX_VALUES:
        return None if cut else dict.fromkeys(ids, 0.0)
    stacked = np.stack([np.concatenate([u[n].ravel() for n in names]) for u in updates])
    ranks = np.argsort(np.argsort(stacked, axis=0, kind="stable"), axis=0, kind="stable")
    trimmed = (ranks < cut) | (ranks >= count - cut)
    return {ids[k]: round(float(trimmed[k].mean()), 4) for k in range(count)}
