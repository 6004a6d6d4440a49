"""Sorting networks: fixed compare-exchange sequences that sort K values, run over rows of a K x block tile.

Batcher's odd-even merge sort for the next power of two, cut down to K inputs and pruned to the comparators
that can affect the rows an order statistic reads; row-wise, it vectorises where per-element sorting cannot.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np


def batcher_pairs(num_inputs: int) -> list[tuple[int, int]]:
    """Comparators (low, high) of Batcher's odd-even merge sort for ``num_inputs`` values.

    The network for the next power of two sorts ascending with every minimum sent to the lower index,
    so padding with +inf above ``num_inputs`` never moves: comparators touching the padding are dropped.
    """
    size = 1
    while size < num_inputs:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return [(low, high) for low, high in pairs if high < num_inputs]


def prune(pairs: list[tuple[int, int]], wanted_rows: Iterable[int]) -> list[tuple[int, int]]:
    """The comparators that can change any of ``wanted_rows`` (a comparator only touches its two rows)."""
    needed = set(wanted_rows)
    kept: list[tuple[int, int]] = []
    for low, high in reversed(pairs):
        if low in needed or high in needed:
            kept.append((low, high))
            needed.update((low, high))
    kept.reverse()
    return kept


@lru_cache(maxsize=256)
def network(num_inputs: int, row_lo: int, row_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(low indices, high indices) of a network that puts the sorted rows [row_lo, row_hi) in place."""
    pairs = prune(batcher_pairs(num_inputs), range(row_lo, row_hi))
    low = np.array([a for a, _ in pairs], dtype=np.int64)
    high = np.array([b for _, b in pairs], dtype=np.int64)
    return low, high
