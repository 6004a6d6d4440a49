"""Compile (or load from numba's cache) every aggregation kernel before the first round.

The kernels are `cache=True`: the first compile of a fresh install takes seconds and is
written next to the sources; later processes load it (~0.4 s). Running each strategy, the
streaming aggregator and each server optimizer once on a tiny model, through the public
API, gives every kernel exactly the argument types a real round gives it, so no round
ever waits on the compiler. `make install` runs this once (`python -m aggregation.warmup`)
and the service runs it during start-up, before it tells systemd it is ready."""

from __future__ import annotations

import sys
import time

import numpy as np
from numba.core.registry import CPUDispatcher

from . import kernels
from .optimizers import OPTIMIZERS
from .strategies import METHODS, aggregate
from .streaming import STREAMING_METHODS, StreamingAggregator


def dispatchers() -> dict[str, CPUDispatcher]:
    """The module's numba kernels by name (not the private helpers, inlined into them)."""
    return {
        name: value
        for name, value in vars(kernels).items()
        if isinstance(value, CPUDispatcher) and not name.startswith("_")
    }


def signatures() -> dict[str, int]:
    """How many compiled signatures each kernel has now (0: it would compile on first use)."""
    return {name: len(dispatcher.signatures) for name, dispatcher in dispatchers().items()}


def compile_kernels() -> dict:
    """Run every aggregation path once on a tiny model; returns the seconds it took and
    the kernels' signature counts."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    model = {"fc.weight": rng.normal(size=(4, 3)).astype(np.float32), "fc.bias": np.zeros(3, np.float32)}
    updates = [{name: (value + i).astype(np.float32) for name, value in model.items()} for i in range(5)]
    samples = [10, 20, 30, 40, 50]
    for method in METHODS:
        aggregate(updates, samples, method, **({"f": 1} if "krum" in method else {}))
    aggregate(updates, samples, "fedavg", bias_method="median", clip_norm=1.0, noise_multiplier=0.1, seed=1)
    for method in STREAMING_METHODS:
        streaming = StreamingAggregator(method, clip_norm=1.0)
        for update, count in zip(updates, samples, strict=True):
            streaming.add(update, count)
        streaming.result()
    delta = dict(aggregate(updates, samples, "fedavg"))
    for optimizer in OPTIMIZERS.values():
        state = optimizer()
        state.step(model, delta)
        state.step(model, delta)
    return {"seconds": round(time.perf_counter() - started, 3), "signatures": signatures()}


if __name__ == "__main__":
    figures = compile_kernels()
    print(f"aggregation kernels ready in {figures['seconds']}s: {figures['signatures']}")
    sys.exit(0 if all(figures["signatures"].values()) else 1)
