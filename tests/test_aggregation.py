"""aggregation.aggregate: every method against a plain numpy reference, its properties, robustness and errors."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import aggregation
from aggregation import LayoutError, NonFiniteUpdateError, OptionError, aggregate

F32 = np.float32
HYPOTHESIS = settings(max_examples=40, deadline=None)


def make_updates(num_clients: int, shapes: dict[str, tuple[int, ...]], seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return [
        {name: np.asarray(rng.standard_normal(shape) * scale, dtype=F32) for name, shape in shapes.items()}
        for _ in range(num_clients)
    ]


def stacked(updates, name):
    return np.stack([u[name] for u in updates])


def flat(update) -> np.ndarray:
    return np.concatenate([np.asarray(t, dtype=np.float64).ravel() for t in update.values()])


def fedavg_reference(updates, num_samples):
    weights = np.asarray(num_samples, dtype=np.float64)
    return {
        name: np.tensordot(weights, stacked(updates, name).astype(np.float64), axes=1) / weights.sum()
        for name in updates[0]
    }


def trimmed_reference(values: np.ndarray, beta: float) -> np.ndarray:
    """Sorted rows [cut, n - cut) summed in float64 in sorted order, as the kernel does."""
    cut = int(beta * values.shape[0])
    ordered = np.sort(values, axis=0)[cut : values.shape[0] - cut]
    total = np.zeros(values.shape[1:], dtype=np.float64)
    for row in ordered:
        total += row
    return (total / ordered.shape[0]).astype(F32)


def krum_reference(updates, f: int):
    """Brute force: every pairwise squared distance, Flower's score, clients ordered best first."""
    vectors = [flat(u) for u in updates]
    n = len(vectors)
    distances = np.array([[np.sum((vectors[i] - vectors[j]) ** 2) for j in range(n)] for i in range(n)])
    closest = max(1, n - f - 2)
    scores = [np.sort(np.delete(distances[i], i))[:closest].sum() for i in range(n)]
    return np.argsort(scores, kind="stable")


def assert_close_to(result, reference, updates):
    magnitude = max(float(np.abs(flat(u)).max()) for u in updates) or 1.0
    for name, expected in reference.items():
        np.testing.assert_allclose(result[name], expected, rtol=1e-5, atol=len(updates) * 4e-7 * magnitude)


SHAPES = {"fc1.weight": (6, 5), "fc1.bias": (5,), "fc2.weight": (5, 3), "fc2.bias": (3,)}


# --- every method against numpy --------------------------------------------------------------------------


def test_fedavg_is_the_sample_weighted_mean_within_float32_tolerance():
    updates = make_updates(7, SHAPES, seed=1)
    num_samples = [10, 200, 3, 45, 7, 1000, 12]
    result = aggregate(updates, num_samples)
    assert list(result) == list(SHAPES)
    assert all(result[name].dtype == F32 and result[name].shape == shape for name, shape in SHAPES.items())
    assert_close_to(result, fedavg_reference(updates, num_samples), updates)


def test_mean_ignores_num_samples():
    updates = make_updates(5, SHAPES, seed=2)
    result = aggregate(updates, [1, 50, 2, 9, 400], method="mean")
    assert_close_to(result, fedavg_reference(updates, [1] * 5), updates)


@pytest.mark.parametrize("num_clients", [1, 2, 3, 4, 7, 8, 16, 33])
def test_median_equals_numpy_median_exactly(num_clients):
    updates = make_updates(num_clients, SHAPES, seed=num_clients)
    result = aggregate(updates, [1] * num_clients, method="median")
    for name in SHAPES:
        np.testing.assert_array_equal(result[name], np.median(stacked(updates, name), axis=0))


@pytest.mark.parametrize(
    ("num_clients", "beta"), [(1, 0.2), (5, 0.2), (10, 0.2), (10, 0.1), (9, 0.45), (16, 0.0), (33, 0.3)]
)
def test_trimmed_mean_equals_numpy_sorted_trim_exactly(num_clients, beta):
    updates = make_updates(num_clients, SHAPES, seed=num_clients)
    result = aggregate(updates, [1] * num_clients, method="trimmed_mean", beta=beta)
    for name in SHAPES:
        values = stacked(updates, name)
        np.testing.assert_array_equal(result[name], trimmed_reference(values, beta))
        # Flower's own formula (np.partition, float32 mean) agrees to float32 rounding.
        cut = int(beta * num_clients)
        flower = np.mean(
            np.partition(values, (cut, num_clients - cut - 1), axis=0)[cut : num_clients - cut], axis=0
        )
        np.testing.assert_allclose(result[name], flower, rtol=1e-6, atol=1e-6)


def test_trimmed_mean_default_beta_is_flowers_0_2():
    updates = make_updates(10, SHAPES, seed=3)
    result = aggregate(updates, [1] * 10, method="trimmed_mean")
    np.testing.assert_array_equal(
        result["fc1.weight"], trimmed_reference(stacked(updates, "fc1.weight"), 0.2)
    )
    assert result.metadata.options["beta"] == 0.2


@pytest.mark.parametrize(("num_clients", "f"), [(3, 0), (7, 2), (12, 3), (20, 8)])
def test_krum_picks_the_same_client_as_brute_force(num_clients, f):
    updates = make_updates(num_clients, SHAPES, seed=num_clients + f)
    best = int(krum_reference(updates, f)[0])
    result = aggregate(updates, list(range(1, num_clients + 1)), method="krum", f=f)
    for name in SHAPES:
        np.testing.assert_array_equal(result[name], updates[best][name])
    assert result.metadata.selected == {"all": (str(best),)}


def test_multi_krum_keeps_the_m_best_and_averages_them_by_samples():
    updates = make_updates(11, SHAPES, seed=4)
    num_samples = [5, 1, 30, 2, 8, 13, 21, 3, 55, 34, 89]
    kept = krum_reference(updates, 2)[:4]
    result = aggregate(updates, num_samples, method="multi_krum", f=2, m=4)
    assert result.metadata.selected == {"all": tuple(str(k) for k in kept)}
    chosen = [updates[k] for k in kept]
    assert_close_to(result, fedavg_reference(chosen, [num_samples[k] for k in kept]), chosen)


def test_multi_krum_keeps_n_minus_f_by_default():
    updates = make_updates(9, SHAPES, seed=5)
    result = aggregate(updates, [1] * 9, method="multi_krum", f=3)
    assert len(result.metadata.selected["all"]) == 6


def test_large_tensors_with_ragged_chunks_match_numpy():
    # Enough work for the multi-threaded path, sizes that end mid-chunk, and a tensor of size 1.
    shapes = {"big.weight": (400_003,), "odd.weight": (3, 7, 11), "scalar.bias": ()}
    updates = make_updates(5, shapes, seed=7)
    num_samples = [3, 1, 4, 1, 5]
    assert_close_to(aggregate(updates, num_samples), fedavg_reference(updates, num_samples), updates)
    median = aggregate(updates, num_samples, method="median")
    for name in shapes:
        np.testing.assert_array_equal(median[name], np.median(stacked(updates, name), axis=0))
    trimmed = aggregate(updates, num_samples, method="trimmed_mean", beta=0.2)
    np.testing.assert_array_equal(
        trimmed["big.weight"], trimmed_reference(stacked(updates, "big.weight"), 0.2)
    )


def test_strided_and_read_only_tensors_are_read_correctly():
    updates = make_updates(4, {"w": (8, 6)}, seed=8)
    transposed = [{"w": np.ascontiguousarray(u["w"].T).T} for u in updates]
    assert not transposed[0]["w"].flags.c_contiguous
    read_only = []
    for u in updates:
        tensor = u["w"].copy()
        tensor.setflags(write=False)
        read_only.append({"w": tensor})
    expected = aggregate(updates, [1, 2, 3, 4])
    np.testing.assert_array_equal(aggregate(transposed, [1, 2, 3, 4])["w"], expected["w"])
    np.testing.assert_array_equal(aggregate(read_only, [1, 2, 3, 4])["w"], expected["w"])


def test_result_tensors_are_views_into_one_flat_buffer():
    updates = make_updates(3, SHAPES, seed=9)
    result = aggregate(updates, [1, 1, 1], method="median")
    assert result.flat.dtype == F32 and result.flat.size == sum(math.prod(s) for s in SHAPES.values())
    offset = 0
    for tensor in result.values():
        np.testing.assert_array_equal(result.flat[offset : offset + tensor.size], tensor.ravel())
        assert np.shares_memory(tensor, result.flat)
        offset += tensor.size


def test_out_buffer_receives_the_result_in_place():
    updates = make_updates(4, SHAPES, seed=19)
    buffer = np.full(sum(math.prod(s) for s in SHAPES.values()), np.nan, F32)
    result = aggregate(updates, [1, 2, 3, 4], method="trimmed_mean", out=buffer)
    assert result.flat is buffer
    expected = aggregate(updates, [1, 2, 3, 4], method="trimmed_mean")
    np.testing.assert_array_equal(buffer, expected.flat)


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda pool: np.zeros(pool.size + 1, F32), "out has 54 elements, expected the model's 53"),
        (lambda pool: np.zeros(pool.size, np.float64), "1-D contiguous float32"),
        (lambda pool: np.zeros((pool.size, 2), F32)[:, 0], "1-D contiguous float32"),
        (lambda pool: pool, r"out overlaps the update from client 1 \(tensor 'fc1.weight'\)"),
    ],
)
def test_unusable_out_buffers_are_refused(make_out, message):
    updates = make_updates(3, SHAPES, seed=20)
    pool = np.zeros(sum(math.prod(s) for s in SHAPES.values()), F32)
    updates[1]["fc1.weight"] = pool[:30].reshape(6, 5)
    with pytest.raises(OptionError, match=message):
        aggregate(updates, [1, 1, 1], out=make_out(pool))


def test_concurrent_calls_from_threads_each_get_their_own_answer():
    batches = [make_updates(6, {"w": (300, 500)}, seed=s) for s in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda b: aggregate(b, [1] * 6, method="median"), batches))
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_array_equal(result["w"], np.median(stacked(batch, "w"), axis=0))


# --- options: clipping, noise, bias terms, metadata ------------------------------------------------------


def test_clip_norm_scales_each_update_to_the_bound_before_combining():
    updates = make_updates(4, SHAPES, seed=10)
    updates[1] = {name: t * F32(50.0) for name, t in updates[1].items()}
    norms = [np.linalg.norm(flat(u)) for u in updates]
    clip = float(np.median(norms))
    clipped = [
        {name: t.astype(np.float64) * min(1.0, clip / n) for name, t in u.items()}
        for u, n in zip(updates, norms, strict=True)
    ]
    result = aggregate(updates, [4, 3, 2, 1], clip_norm=clip)
    assert_close_to(result, fedavg_reference(clipped, [4, 3, 2, 1]), updates)
    for participant, norm in zip(result.metadata.participants, norms, strict=True):
        assert participant.update_norm == pytest.approx(norm, rel=1e-9)
        assert participant.clip_scale == pytest.approx(min(1.0, clip / norm), rel=1e-12)
    median = aggregate(updates, [1] * 4, method="median", clip_norm=clip)
    expected = np.median(np.stack([c["fc1.weight"] for c in clipped]), axis=0)
    np.testing.assert_allclose(median["fc1.weight"], expected, rtol=1e-6)


def test_clipping_stops_one_huge_update_from_dominating_fedavg():
    updates = make_updates(5, {"w": (50,)}, seed=11)
    updates[0]["w"] *= F32(1e4)
    plain = aggregate(updates, [1] * 5)
    clipped = aggregate(updates, [1] * 5, clip_norm=1.0)
    assert np.linalg.norm(plain["w"]) > 1000
    assert np.linalg.norm(clipped["w"]) <= 1.0 + 1e-6


def test_noise_is_reproducible_from_its_seed_and_has_the_documented_scale():
    updates = make_updates(4, {"w": (200_000,)}, seed=12, scale=0.01)
    clean = aggregate(updates, [1] * 4, clip_norm=10.0)
    first = aggregate(updates, [1] * 4, clip_norm=10.0, noise_multiplier=0.5, seed=7)
    again = aggregate(updates, [1] * 4, clip_norm=10.0, noise_multiplier=0.5, seed=7)
    other = aggregate(updates, [1] * 4, clip_norm=10.0, noise_multiplier=0.5, seed=8)
    np.testing.assert_array_equal(first["w"], again["w"])
    assert not np.array_equal(first["w"], other["w"])
    expected_std = 0.5 * 10.0 / 4
    assert first.metadata.options["noise_std"] == pytest.approx(expected_std)
    assert np.std(first["w"] - clean["w"]) == pytest.approx(expected_std, rel=0.02)


def test_bias_tensors_take_their_own_method():
    updates = make_updates(7, SHAPES, seed=13)
    num_samples = [1, 2, 3, 4, 5, 6, 7]
    result = aggregate(updates, num_samples, method="median", bias_method="fedavg")
    reference = fedavg_reference(updates, num_samples)
    for name in SHAPES:
        if name.endswith("bias"):
            np.testing.assert_allclose(result[name], reference[name], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(result[name], np.median(stacked(updates, name), axis=0))
    assert (result.metadata.method, result.metadata.bias_method) == ("median", "fedavg")


def test_krum_on_weights_with_mean_on_biases_selects_by_weight_distance_only():
    updates = make_updates(7, SHAPES, seed=14)
    weights_only = [{n: t for n, t in u.items() if not n.endswith("bias")} for u in updates]
    best = int(krum_reference(weights_only, 1)[0])
    result = aggregate(updates, [1] * 7, method="krum", bias_method="mean", f=1)
    np.testing.assert_array_equal(result["fc1.weight"], updates[best]["fc1.weight"])
    np.testing.assert_allclose(
        result["fc1.bias"], stacked(updates, "fc1.bias").mean(axis=0), rtol=1e-5, atol=1e-6
    )
    assert result.metadata.selected == {"weights": (str(best),)}


def test_metadata_records_method_options_participants_and_time():
    updates = make_updates(5, SHAPES, seed=15)
    before = datetime.now().astimezone()
    result = aggregate(
        updates,
        [9, 8, 7, 6, 5],
        method="multi_krum",
        f=1,
        m=2,
        clip_norm=100.0,
        client_ids=["a", "b", "c", "d", "e"],
    )
    meta = result.metadata
    assert meta.method == "multi_krum" and meta.bias_method == "multi_krum"
    assert meta.options == {"clip_norm": 100.0, "noise_multiplier": 0.0, "f": 1, "m": 2}
    assert [p.client_id for p in meta.participants] == ["a", "b", "c", "d", "e"]
    assert [p.num_samples for p in meta.participants] == [9, 8, 7, 6, 5]
    assert len(meta.selected["all"]) == 2 and set(meta.selected["all"]) <= {"a", "b", "c", "d", "e"}
    assert meta.num_parameters == sum(math.prod(s) for s in SHAPES.values())
    stamp = datetime.fromisoformat(meta.timestamp)
    assert stamp.utcoffset().total_seconds() == 0
    assert abs((stamp - before).total_seconds()) < 60
    assert meta.duration_ms >= 0
    record = json.loads(json.dumps(meta.to_dict()))
    assert record["participants"][0] == {
        "client_id": "a",
        "num_samples": 9,
        "update_norm": pytest.approx(meta.participants[0].update_norm),
        "clip_scale": 1.0,
    }


# --- properties -----------------------------------------------------------------------------------------

finite32 = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def rounds(draw, min_clients=1, max_clients=9):
    num_clients = draw(st.integers(min_clients, max_clients))
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    weight = draw(hnp.arrays(F32, (num_clients, rows, cols), elements=finite32))
    bias = draw(hnp.arrays(F32, (num_clients, cols), elements=finite32))
    updates = [{"layer.weight": weight[k], "layer.bias": bias[k]} for k in range(num_clients)]
    num_samples = draw(st.lists(st.integers(1, 1000), min_size=num_clients, max_size=num_clients))
    return updates, num_samples


ORDER_FREE = ["median", "trimmed_mean"]


@HYPOTHESIS
@given(
    rounds(), st.sampled_from(["fedavg", "mean", "median", "trimmed_mean"]), st.randoms(use_true_random=False)
)
def test_permuting_clients_changes_nothing(round_, method, random):
    updates, num_samples = round_
    order = list(range(len(updates)))
    random.shuffle(order)
    result = aggregate(updates, num_samples, method=method)
    permuted = aggregate([updates[k] for k in order], [num_samples[k] for k in order], method=method)
    for name in result:
        if method in ORDER_FREE:
            np.testing.assert_array_equal(permuted[name], result[name])
        else:
            np.testing.assert_allclose(permuted[name], result[name], rtol=1e-5, atol=len(updates) * 1e-3)


@HYPOTHESIS
@given(
    st.integers(0, 2**32 - 1),
    st.integers(5, 12),
    st.randoms(use_true_random=False),
    st.sampled_from(["krum", "multi_krum"]),
)
def test_permuting_clients_does_not_change_krum(seed, num_clients, random, method):
    updates = make_updates(num_clients, {"w": (4, 3), "b.bias": (3,)}, seed=seed)
    num_samples = list(range(1, num_clients + 1))
    order = list(range(num_clients))
    random.shuffle(order)
    result = aggregate(updates, num_samples, method=method, f=1)
    permuted = aggregate([updates[k] for k in order], [num_samples[k] for k in order], method=method, f=1)
    for name in result:
        np.testing.assert_allclose(permuted[name], result[name], rtol=1e-5, atol=1e-5)


@HYPOTHESIS
@given(rounds(min_clients=5), st.integers(2, 1000), st.sampled_from(["fedavg", "multi_krum"]))
def test_scaling_num_samples_by_a_constant_changes_nothing(round_, factor, method):
    updates, num_samples = round_
    options = {"f": 1} if method == "multi_krum" else {}
    result = aggregate(updates, num_samples, method=method, **options)
    scaled = aggregate(updates, [n * factor for n in num_samples], method=method, **options)
    for name in result:
        np.testing.assert_array_equal(scaled[name], result[name])


@HYPOTHESIS
@given(rounds(min_clients=1, max_clients=1), st.sampled_from(["fedavg", "mean", "median", "trimmed_mean"]))
def test_one_client_gets_its_own_update_back(round_, method):
    updates, num_samples = round_
    result = aggregate(updates, num_samples, method=method)
    for name, tensor in updates[0].items():
        np.testing.assert_array_equal(result[name], tensor)


@HYPOTHESIS
@given(rounds(min_clients=2))
def test_fedavg_lies_within_each_coordinates_client_range(round_):
    updates, num_samples = round_
    result = aggregate(updates, num_samples)
    for name in result:
        values = stacked(updates, name)
        # Weights rounded to float32 may sum to 1 + K ulp, so allow that much past the extremes.
        slack = len(updates) * 3e-7 * np.abs(values).max() + 1e-30
        assert np.all(result[name] >= values.min(axis=0) - slack)
        assert np.all(result[name] <= values.max(axis=0) + slack)


# --- robustness -----------------------------------------------------------------------------------------


def poisoned_round(num_honest: int, num_bad: int, seed: int = 16):
    rng = np.random.default_rng(seed)
    honest = [
        {"w": rng.uniform(-1, 1, (20, 10)).astype(F32), "b.bias": rng.uniform(-1, 1, 10).astype(F32)}
        for _ in range(num_honest)
    ]
    garbage = [
        {"w": (rng.choice([-1.0, 1.0], (20, 10)) * 1e6).astype(F32), "b.bias": np.full(10, 1e6, F32)}
        for _ in range(num_bad)
    ]
    updates = honest + garbage
    order = rng.permutation(len(updates))
    return [updates[k] for k in order], honest


@pytest.mark.parametrize(
    ("method", "options"),
    [("median", {}), ("trimmed_mean", {"beta": 0.4}), ("krum", {"f": 4}), ("multi_krum", {"f": 4, "m": 3})],
)
def test_robust_methods_stay_within_the_honest_range_under_attack(method, options):
    updates, honest = poisoned_round(num_honest=7, num_bad=4)
    result = aggregate(updates, [1] * len(updates), method=method, **options)
    for name in result:
        values = stacked(honest, name)
        assert np.all(result[name] >= values.min(axis=0)) and np.all(result[name] <= values.max(axis=0))


def test_fedavg_is_dragged_out_of_the_honest_range_by_the_same_attack():
    updates, honest = poisoned_round(num_honest=7, num_bad=4)
    result = aggregate(updates, [1] * len(updates))
    assert np.abs(result["b.bias"]).min() > 1e5
    assert np.abs(result["w"]).max() > 1e4


# --- bad input ------------------------------------------------------------------------------------------


def test_empty_update_list_is_refused():
    with pytest.raises(aggregation.AggregationError, match="at least one client update"):
        aggregate([], [])


def test_missing_tensor_is_named_with_its_client():
    updates = make_updates(3, SHAPES)
    del updates[2]["fc2.bias"]
    with pytest.raises(LayoutError, match=r"client 2 lacks tensor\(s\) 'fc2.bias'"):
        aggregate(updates, [1, 1, 1])


def test_extra_tensor_is_named_with_its_client():
    updates = make_updates(3, SHAPES)
    updates[1]["fc3.weight"] = np.zeros(2, F32)
    with pytest.raises(LayoutError, match=r"client 1 has unexpected tensor\(s\) 'fc3.weight'"):
        aggregate(updates, [1, 1, 1])


def test_shape_mismatch_names_tensor_client_and_both_shapes():
    updates = make_updates(4, {"fc1.weight": (4, 2)})
    updates[3]["fc1.weight"] = np.zeros((4, 3), F32)
    with pytest.raises(
        LayoutError, match=r"update from client 3: tensor 'fc1.weight' has shape \(4, 3\), expected \(4, 2\)"
    ):
        aggregate(updates, [1] * 4, method="median")


def test_dtype_mismatch_names_tensor_and_expected_dtype():
    updates = make_updates(2, {"w": (3,)})
    updates[1]["w"] = updates[1]["w"].astype(np.float64)
    with pytest.raises(LayoutError, match="client 1: tensor 'w' has dtype float64, expected float32"):
        aggregate(updates, [1, 1])


def test_non_array_tensor_is_refused():
    updates = make_updates(2, {"w": (3,)})
    updates[0]["w"] = [1.0, 2.0, 3.0]
    with pytest.raises(LayoutError, match="tensor 'w' is a list, expected a numpy array"):
        aggregate(updates, [1, 1])


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", aggregation.METHODS)
def test_non_finite_values_are_refused_naming_client_and_tensor(method, bad_value):
    updates = make_updates(7, SHAPES, seed=17)
    updates[4]["fc2.weight"][1, 2] = bad_value
    with pytest.raises(
        NonFiniteUpdateError, match=r"client 4 \('e'\): tensor 'fc2.weight' holds .* at index \(1, 2\)"
    ):
        aggregate(updates, [1] * 7, method=method, client_ids=list("abcdefg"))


def test_non_finite_values_are_found_by_the_clipping_pass_too():
    updates = make_updates(3, SHAPES, seed=18)
    updates[0]["fc1.bias"][0] = np.nan
    with pytest.raises(NonFiniteUpdateError, match="client 0: tensor 'fc1.bias'"):
        aggregate(updates, [1, 1, 1], method="median", clip_norm=1.0)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_num_samples_must_be_positive_integers(bad):
    with pytest.raises(OptionError, match=r"num_samples\[1\] must be a positive integer"):
        aggregate(make_updates(2, {"w": (3,)}), [5, bad])


def test_num_samples_must_match_the_updates():
    with pytest.raises(OptionError, match="got 3 updates but 2 num_samples"):
        aggregate(make_updates(3, {"w": (3,)}), [1, 2])


@pytest.mark.parametrize(
    ("method", "num_clients", "f"), [("krum", 6, 2), ("multi_krum", 4, 1), ("krum", 2, 0)]
)
def test_krum_f_too_large_for_n_is_refused(method, num_clients, f):
    with pytest.raises(
        OptionError, match=rf"needs at least 2f\+3 = {2 * f + 3} client updates, got {num_clients}"
    ):
        aggregate(make_updates(num_clients, {"w": (3,)}), [1] * num_clients, method=method, f=f)


@pytest.mark.parametrize("m", [0, 6, -1])
def test_multi_krum_m_must_fit_n_minus_f(m):
    with pytest.raises(OptionError, match="between 1 and n - f = 5"):
        aggregate(make_updates(7, {"w": (3,)}), [1] * 7, method="multi_krum", f=2, m=m)


@pytest.mark.parametrize("beta", [0.5, -0.1, 1.0])
def test_trimmed_mean_beta_outside_its_range_is_refused(beta):
    with pytest.raises(OptionError, match=r"beta must be a number in \[0, 0.5\)"):
        aggregate(make_updates(4, {"w": (3,)}), [1] * 4, method="trimmed_mean", beta=beta)


def test_unknown_method_is_refused_listing_the_known_ones():
    with pytest.raises(OptionError, match="method 'fedprox' is not one of fedavg, mean, median"):
        aggregate(make_updates(2, {"w": (3,)}), [1, 1], method="fedprox")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"beta": 0.1}, "beta applies to trimmed_mean"),
        ({"f": 1}, "f applies to krum and multi_krum"),
        ({"method": "krum", "m": 2}, "m applies to multi_krum"),
        ({"noise_multiplier": 1.0, "seed": 1}, "needs clip_norm"),
        ({"noise_multiplier": 1.0, "clip_norm": 1.0}, "explicit integer seed"),
        ({"clip_norm": 0.0}, "clip_norm must be a positive finite number"),
        ({"clip_norm": float("nan")}, "clip_norm must be a positive finite number"),
        (
            {"noise_multiplier": -1.0, "clip_norm": 1.0, "seed": 1},
            "noise_multiplier must be a finite number >= 0",
        ),
        ({"bias_method": "avg"}, "bias_method 'avg' is not one of"),
    ],
)
def test_options_that_do_not_fit_the_method_are_refused(options, message):
    with pytest.raises(OptionError, match=message):
        aggregate(make_updates(5, {"w": (3,)}), [1] * 5, **options)
