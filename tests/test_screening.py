"""Screening one update at a time (aggregation.screening) and what it means for a round
(server.training.screening): properties over random rounds, and the exact figures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregation.screening import ABOVE_BOUND, ABOVE_MEDIAN, DISSIMILAR, NOT_FINITE, ScreeningRule, screen
from server.training import screening
from server.training.policy import RoundPolicy
from server.training.rounds import Close
from server.vocabulary import ClosedBy


def honest_round(rng: np.random.Generator, count: int, size: int = 40) -> list[dict]:
    """Updates that agree: one direction plus a little noise each."""
    direction = rng.standard_normal(size)
    return [
        {"layer0.weight": (direction + 0.1 * rng.standard_normal(size)).astype(np.float32).reshape(4, -1),
         "layer0.bias": rng.standard_normal(2).astype(np.float32) * 0.1}
        for _ in range(count)
    ]  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1), count=st.integers(3, 9), scale=st.floats(20.0, 1e6), at=st.integers(0, 8)
)
def test_a_scaled_update_is_excluded_and_the_honest_ones_never(seed, count, scale, at):
    rng = np.random.default_rng(seed)
    updates = honest_round(rng, count)
    at = at % count
    updates[at] = {name: tensor * np.float32(scale) for name, tensor in updates[at].items()}
    verdicts = screen(updates, ScreeningRule(norm_ratio=10.0, min_cosine=0.0))
    assert len(verdicts) == count
    assert verdicts[at].excluded and verdicts[at].reason == ABOVE_MEDIAN
    assert verdicts[at].norm > 10 * verdicts[at].median_norm
    assert not any(v.excluded for k, v in enumerate(verdicts) if k != at)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(3, 8))
def test_verdicts_follow_their_updates_in_any_order(seed, count):
    rng = np.random.default_rng(seed)
    updates = honest_round(rng, count)
    updates[0] = {name: -tensor for name, tensor in updates[0].items()}  # the opposite direction
    order = rng.permutation(count)
    straight = screen(updates, ScreeningRule())
    shuffled = screen([updates[k] for k in order], ScreeningRule())
    for position, k in enumerate(order):
        assert shuffled[position].reason == straight[k].reason
        assert shuffled[position].norm == pytest.approx(straight[k].norm)
    assert straight[0].reason == DISSIMILAR and straight[0].cosine < 0


def test_non_finite_and_over_the_bound_are_named_and_the_relative_checks_need_three():
    rng = np.random.default_rng(1)
    updates = honest_round(rng, 4)
    updates[1] = {name: tensor.copy() for name, tensor in updates[1].items()}
    updates[1]["layer0.bias"][0] = np.nan
    verdicts = screen(updates, ScreeningRule(max_norm=1e-3))
    assert verdicts[1].reason == NOT_FINITE and verdicts[1].norm is None
    assert [v.reason for k, v in enumerate(verdicts) if k != 1] == [ABOVE_BOUND] * 3
    # Two updates: no median to judge by, only the absolute checks.
    pair = honest_round(rng, 2)
    pair[0] = {name: tensor * np.float32(1000) for name, tensor in pair[0].items()}
    assert [v.excluded for v in screen(pair, ScreeningRule())] == [False, False]


def close(closed_by: ClosedBy, min_clients: int) -> Close:
    return Close("m#0.1", "m", 0, ("a", "b", "c", "d"), 4, 4, min_clients, closed_by, RoundPolicy())


def test_a_round_goes_on_while_the_kept_updates_meet_min_clients():
    rng = np.random.default_rng(2)
    updates = honest_round(rng, 4)
    updates[3] = {name: tensor * np.float32(1e4) for name, tensor in updates[3].items()}
    rule = ScreeningRule()
    verdicts = screen(updates, rule)
    kept = screening.decide(close(ClosedBy.THRESHOLD, 3), verdicts, rule)
    assert kept.kept == (0, 1, 2) and kept.excluded == (3,) and kept.enough
    assert "exceeds 10 x the round's median norm" in kept.figures[3]["message"]
    short = screening.decide(close(ClosedBy.DEADLINE, 4), verdicts, rule)
    assert not short.enough and "leaving 3 of the 4" in short.refusal(["a", "b", "c", "d"])
    assert screening.decide(close(ClosedBy.PARTIAL, 4), verdicts, rule).enough


def test_trimmed_shares_count_the_values_cut_from_each_update():
    updates = [{"w": np.full(10, float(k), dtype=np.float32)} for k in range(5)]
    shares = screening.trimmed_shares(updates, 0.2, list("abcde"))
    assert shares == {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0, "e": 1.0}
    dropped = screening.dropped_by_krum({"all": ("b", "c")}, list("abc"))
    assert dropped == {"all": ["a"]}
