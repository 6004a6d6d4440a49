"""StreamingAggregator: one update at a time equals the batch result, in memory that does not grow with K."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aggregation import (
    AggregationError,
    LayoutError,
    NonFiniteUpdateError,
    OptionError,
    StreamingAggregator,
    aggregate,
)

F32 = np.float32
SHAPES = {"conv.weight": (3, 4, 5), "conv.bias": (3,), "head.weight": (60, 2)}


def make_updates(num_clients, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {name: rng.standard_normal(shape).astype(F32) for name, shape in shapes.items()}
        for _ in range(num_clients)
    ]


def stream(updates, num_samples, method="fedavg", **options):
    aggregator = StreamingAggregator(method, **options)
    for update, count in zip(updates, num_samples, strict=True):
        aggregator.add(update, count)
    return aggregator.result()


def fedavg_reference(updates, num_samples, name):
    weights = np.asarray(num_samples, dtype=np.float64)
    return (
        np.tensordot(weights, np.stack([u[name] for u in updates]).astype(np.float64), axes=1) / weights.sum()
    )


def test_streaming_fedavg_is_as_exact_as_a_float64_sum():
    updates = make_updates(40, seed=1)
    num_samples = list(range(1, 41))
    result = stream(updates, num_samples)
    for name in SHAPES:
        # Compensated float32 pair: only the final rounding to float32 remains.
        np.testing.assert_allclose(
            result[name], fedavg_reference(updates, num_samples, name), rtol=2e-7, atol=1e-7
        )


finite32 = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 9).flatmap(
        lambda k: st.tuples(
            hnp.arrays(F32, (k, 3, 2), elements=finite32),
            hnp.arrays(F32, (k, 2), elements=finite32),
            st.lists(st.integers(1, 10_000), min_size=k, max_size=k),
        )
    ),
    st.sampled_from(["fedavg", "mean"]),
)
def test_streaming_equals_batch(round_, method):
    weights, biases, num_samples = round_
    updates = [{"l.weight": weights[k], "l.bias": biases[k]} for k in range(len(num_samples))]
    streamed = stream(updates, num_samples, method)
    batch = aggregate(updates, num_samples, method=method)
    magnitude = max(float(np.abs(weights).max()), float(np.abs(biases).max()))
    for name in batch:
        np.testing.assert_allclose(
            streamed[name], batch[name], rtol=1e-5, atol=len(num_samples) * 4e-7 * magnitude + 1e-30
        )


def test_streaming_matches_batch_with_clipping_noise_and_bias_method():
    updates = make_updates(6, seed=2)
    num_samples = [5, 1, 9, 2, 6, 5]
    options = {"bias_method": "mean", "clip_norm": 5.0, "noise_multiplier": 0.1, "seed": 3}
    streamed = stream(updates, num_samples, **options)
    batch = aggregate(updates, num_samples, **options)
    for name in batch:
        np.testing.assert_allclose(streamed[name], batch[name], rtol=1e-5, atol=1e-6)
    assert streamed.metadata.options == batch.metadata.options
    assert [p.clip_scale for p in streamed.metadata.participants] == pytest.approx(
        [p.clip_scale for p in batch.metadata.participants], rel=1e-9
    )


def test_memory_holds_two_model_copies_whatever_the_number_of_clients():
    num_parameters = 1_000_000
    model_bytes = 4 * num_parameters
    shapes = {"w": (num_parameters - 1000,), "b.bias": (1000,)}
    rng = np.random.default_rng(4)
    StreamingAggregator().add(
        {"w": np.zeros(3, F32), "b.bias": np.zeros(1, F32)}, 1
    )  # compile outside the trace
    peaks = {}
    for num_clients in (2, 12):
        tracemalloc.start()
        aggregator = StreamingAggregator()
        for _ in range(num_clients):
            update = {name: rng.standard_normal(shape, dtype=F32) for name, shape in shapes.items()}
            aggregator.add(update, 3)
            del update
        result = aggregator.result()
        peaks[num_clients] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result["w"].shape == shapes["w"]
    # Two accumulator buffers plus the update being added, and a little for chunk tables.
    assert peaks[2] <= 3 * model_bytes + model_bytes // 10
    assert peaks[12] <= 3 * model_bytes + model_bytes // 10


def test_result_reuses_the_accumulator_instead_of_allocating_a_third_copy():
    aggregator = StreamingAggregator()
    update = make_updates(1)[0]
    aggregator.add(update, 1)
    accumulator = aggregator._hi
    result = aggregator.result()
    assert result.flat is accumulator


def test_a_bad_update_is_refused_without_spoiling_the_sum():
    updates = make_updates(3, seed=5)
    aggregator = StreamingAggregator()
    aggregator.add(updates[0], 2)
    poisoned = {name: tensor.copy() for name, tensor in updates[1].items()}
    poisoned["head.weight"][7, 1] = np.inf
    with pytest.raises(
        NonFiniteUpdateError,
        match=r"client 1 \('agent-9'\): tensor 'head.weight' holds inf at index \(7, 1\)",
    ):
        aggregator.add(poisoned, 4, client_id="agent-9")
    misshapen = dict(updates[1])
    misshapen["conv.bias"] = np.zeros(4, F32)
    with pytest.raises(LayoutError, match=r"client 1: tensor 'conv.bias' has shape \(4,\), expected \(3,\)"):
        aggregator.add(misshapen, 4)
    aggregator.add(updates[2], 3)
    result = aggregator.result()
    expected = aggregate([updates[0], updates[2]], [2, 3])
    for name in SHAPES:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-6, atol=1e-7)
    assert [p.client_id for p in result.metadata.participants] == ["0", "1"]


def test_result_without_updates_and_twice_are_refused():
    with pytest.raises(AggregationError, match="no updates were added"):
        StreamingAggregator().result()
    aggregator = StreamingAggregator()
    aggregator.add(make_updates(1)[0], 1)
    aggregator.result()
    with pytest.raises(AggregationError, match="already taken"):
        aggregator.result()
    with pytest.raises(AggregationError, match="already taken"):
        aggregator.add(make_updates(1)[0], 1)


@pytest.mark.parametrize("method", ["median", "krum", "trimmed_mean"])
def test_only_fedavg_and_mean_can_stream(method):
    with pytest.raises(OptionError, match=f"method '{method}' is not one of fedavg, mean"):
        StreamingAggregator(method)


def test_streaming_refuses_bad_sample_counts():
    with pytest.raises(OptionError, match="must be a positive integer, got 0"):
        StreamingAggregator().add(make_updates(1)[0], 0)
