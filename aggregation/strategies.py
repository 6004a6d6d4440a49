"""Aggregation strategies: validate named-tensor updates, then hand flat address tables to the kernels.

Methods follow Flower's functions of the same name, so results agree with ``flwr`` to float32 tolerance;
tensors whose name ends in ``bias`` can take their own method (bias terms are updated independently).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numba
import numpy as np

from . import kernels, networks
from .errors import AggregationError, OptionError
from .layout import ModelLayout, TensorTable, describe_client, find_non_finite, tensor_table
from .result import AggregatedModel, AggregationMetadata, Participant

METHODS = ("fedavg", "mean", "median", "trimmed_mean", "krum", "multi_krum")
KRUM_METHODS = ("krum", "multi_krum")
DEFAULT_BETA = 0.2
# Noise is drawn in pieces so adding it to a large model needs no second model-sized buffer.
_NOISE_PIECE = 1 << 20


@dataclass(frozen=True)
class Options:
    """Validated options of one aggregation call (None where an option does not apply)."""

    method: str
    bias_method: str
    clip_norm: float | None
    noise_multiplier: float
    seed: int | None
    beta: float | None
    f: int | None
    m: int | None

    def as_record(self, num_clients: int) -> dict[str, Any]:
        record: dict[str, Any] = {"clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier}
        if self.noise_multiplier > 0:
            record["noise_std"] = noise_std(self, num_clients)
        if self.seed is not None:
            record["seed"] = self.seed
        for name in ("beta", "f", "m"):
            value = getattr(self, name)
            if value is not None:
                record[name] = value
        return record


def check_method(name: object, what: str = "method", allowed: Sequence[str] = METHODS) -> str:
    if name not in allowed:
        raise OptionError(f"{what} {name!r} is not one of {', '.join(allowed)}")
    return str(name)


def resolve_options(
    num_clients: int,
    method: str,
    bias_method: str | None,
    clip_norm: float | None,
    noise_multiplier: float | None,
    seed: int | None,
    beta: float | None,
    f: int | None,
    m: int | None,
    allowed: Sequence[str] = METHODS,
) -> Options:
    """Check every option against the methods in use and fill in the defaults."""
    method = check_method(method, "method", allowed)
    bias_method = method if bias_method is None else check_method(bias_method, "bias_method", allowed)
    in_use = {method, bias_method}
    if clip_norm is not None:
        if isinstance(clip_norm, bool) or not isinstance(clip_norm, numbers.Real):
            raise OptionError(f"clip_norm must be a positive number, got {clip_norm!r}")
        if not (math.isfinite(clip_norm) and clip_norm > 0):
            raise OptionError(f"clip_norm must be a positive finite number, got {clip_norm!r}")
        clip_norm = float(clip_norm)
    noise_multiplier = 0.0 if noise_multiplier is None else noise_multiplier
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, numbers.Real):
        raise OptionError(f"noise_multiplier must be a number >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise OptionError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise OptionError(f"seed must be a non-negative integer, got {seed!r}")
    if noise_multiplier > 0:
        if clip_norm is None:
            raise OptionError(
                "noise_multiplier > 0 needs clip_norm: the noise scale is noise_multiplier * clip_norm"
            )
        if seed is None:
            raise OptionError(
                "noise_multiplier > 0 needs an explicit integer seed so the round can be reproduced"
            )

    if "trimmed_mean" in in_use:
        beta = DEFAULT_BETA if beta is None else beta
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta < 0.5:
            raise OptionError(f"trimmed_mean beta must be a number in [0, 0.5), got {beta!r}")
        beta = float(beta)
    elif beta is not None:
        raise OptionError(f"option beta applies to trimmed_mean, not to {' or '.join(sorted(in_use))}")

    krum_in_use = in_use & set(KRUM_METHODS)
    if krum_in_use:
        f = 0 if f is None else f
        if isinstance(f, bool) or not isinstance(f, numbers.Integral) or f < 0:
            raise OptionError(f"krum f (clients assumed malicious) must be an integer >= 0, got {f!r}")
        f = int(f)
        needed = 2 * f + 3
        if num_clients < needed:
            raise OptionError(
                f"{'/'.join(sorted(krum_in_use))} with f={f} needs at least 2f+3 = {needed} client updates, "
                f"got {num_clients}"
            )
        if "multi_krum" in krum_in_use:
            m = num_clients - f if m is None else m
            if isinstance(m, bool) or not isinstance(m, numbers.Integral) or not 1 <= m <= num_clients - f:
                raise OptionError(
                    f"multi_krum m (updates kept) must be an integer between 1 and n - f = {num_clients - f}, got {m!r}"
                )
            m = int(m)
        elif m is not None:
            raise OptionError("option m applies to multi_krum; krum always keeps exactly one update")
    else:
        if f is not None:
            raise OptionError(
                f"option f applies to krum and multi_krum, not to {' or '.join(sorted(in_use))}"
            )
        if m is not None:
            raise OptionError(f"option m applies to multi_krum, not to {' or '.join(sorted(in_use))}")
    return Options(method, bias_method, clip_norm, float(noise_multiplier), seed, beta, f, m)


def noise_std(options: Options, num_clients: int) -> float:
    """Standard deviation of the Gaussian noise added to the aggregate.

    As in Flower's server-side fixed clipping: noise_multiplier * clip_norm / number of clients, the
    sensitivity of a mean of clipped updates.
    """
    assert options.clip_norm is not None
    return options.noise_multiplier * options.clip_norm / num_clients


def check_num_samples(num_samples: Sequence[int], num_updates: int) -> list[int]:
    if isinstance(num_samples, (str, bytes)) or not isinstance(num_samples, Sequence | np.ndarray):
        raise OptionError(
            f"num_samples must be a sequence of positive integers, got {type(num_samples).__name__}"
        )
    if len(num_samples) != num_updates:
        raise OptionError(
            f"got {num_updates} updates but {len(num_samples)} num_samples; expected one per update"
        )
    counts = []
    for k, count in enumerate(num_samples):
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count <= 0:
            raise OptionError(f"num_samples[{k}] must be a positive integer, got {count!r}")
        counts.append(int(count))
    return counts


def check_client_ids(client_ids: Sequence[str] | None, num_updates: int) -> list[str] | None:
    if client_ids is None:
        return None
    if isinstance(client_ids, str) or len(client_ids) != num_updates:
        raise OptionError(f"client_ids must list one id per update ({num_updates}), got {client_ids!r}")
    if not all(isinstance(cid, str) for cid in client_ids):
        raise OptionError(f"client_ids must be strings, got {client_ids!r}")
    return list(client_ids)


def is_bias(name: str) -> bool:
    return name.endswith("bias")


def tensor_groups(layout: ModelLayout, options: Options) -> list[tuple[str, str, tuple[int, ...]]]:
    """(group name, method, tensor indices): one group unless bias tensors take their own method."""
    everything = tuple(range(len(layout.names)))
    if options.bias_method == options.method:
        return [("all", options.method, everything)]
    weights = tuple(i for i in everything if not is_bias(layout.names[i]))
    biases = tuple(i for i in everything if is_bias(layout.names[i]))
    groups = []
    if weights:
        groups.append(("weights", options.method, weights))
    if biases:
        groups.append(("bias", options.bias_method, biases))
    return groups


def _parts() -> int:
    # Several parts per thread so an uneven chunk split does not leave a thread idle at the end.
    return 4 * numba.get_num_threads()


def client_norms(table: TensorTable) -> np.ndarray:
    """L2 norm of each client's whole update over the table's tensors (Inf/NaN for non-finite input)."""
    block = kernels.STREAM_BLOCK
    chunk_tensor, chunk_start = kernels.chunk_table(table.sizes, block)
    with kernels.launch(table.num_clients * table.num_parameters):
        squares = kernels.squared_norms(
            table.addresses, table.sizes, chunk_tensor, chunk_start, block, _parts()
        )
    return np.sqrt(squares)


def clip_scales(norms: np.ndarray, clip_norm: float) -> np.ndarray:
    """Factor that brings each update's norm down to ``clip_norm`` (1.0 for updates already within it)."""
    scales = np.ones_like(norms)
    over = norms > clip_norm
    scales[over] = clip_norm / norms[over]
    return scales


def weighted_sum(table: TensorTable, weights: np.ndarray, out: np.ndarray) -> int:
    """out (at the table's offsets) = sum_k weights[k] * update_k; returns the non-finite result count."""
    block = kernels.STREAM_BLOCK
    chunk_tensor, chunk_start = kernels.chunk_table(table.sizes, block)
    with kernels.launch(table.num_clients * table.num_parameters):
        return kernels.weighted_sum(
            table.addresses,
            np.ascontiguousarray(weights, dtype=np.float64),
            table.sizes,
            table.offsets,
            chunk_tensor,
            chunk_start,
            block,
            out,
        )


def sorted_reduce(
    table: TensorTable, scales: np.ndarray, row_lo: int, row_hi: int, mode: int, out: np.ndarray
) -> int:
    """Coordinate-wise median or trimmed mean into ``out``; returns the count of non-finite inputs seen."""
    num_clients = table.num_clients
    block = kernels.sort_block(num_clients)
    chunk_tensor, chunk_start = kernels.chunk_table(table.sizes, block)
    net_lo, net_hi = networks.network(num_clients, row_lo, row_hi)
    with kernels.launch(len(net_lo) * table.num_parameters):
        return kernels.sorted_reduce(
            table.addresses,
            np.ascontiguousarray(scales, dtype=np.float64),
            table.sizes,
            table.offsets,
            chunk_tensor,
            chunk_start,
            block,
            net_lo,
            net_hi,
            row_lo,
            row_hi,
            mode,
            out,
        )


def pairwise_distances(table: TensorTable, scales: np.ndarray) -> np.ndarray:
    """K x K squared L2 distances between the clients' (scaled) updates over the table's tensors."""
    block = kernels.pair_block(table.num_clients)
    chunk_tensor, chunk_start = kernels.chunk_table(table.sizes, block)
    with kernels.launch(table.num_clients * table.num_clients * table.num_parameters):
        return kernels.pairwise_squared_distances(
            table.addresses,
            np.ascontiguousarray(scales, dtype=np.float64),
            table.sizes,
            chunk_tensor,
            chunk_start,
            block,
            _parts(),
        )


def krum_scores(distances: np.ndarray, f: int) -> np.ndarray:
    """Each client's summed squared distance to its n - f - 2 nearest other clients (Flower's Krum score)."""
    num_clients = distances.shape[0]
    closest = max(1, num_clients - f - 2)
    scores = np.empty(num_clients)
    for i in range(num_clients):
        others = np.delete(distances[i], i)
        scores[i] = np.sort(others)[:closest].sum()
    return scores


def trim_rows(num_clients: int, beta: float) -> tuple[int, int]:
    """Sorted rows kept by a trimmed mean: the same cut as Flower's FedTrimmedAvg (scipy's trim_mean)."""
    cut = int(beta * num_clients)
    return cut, num_clients - cut


def aggregate(
    updates: Sequence[Mapping[str, np.ndarray]],
    num_samples: Sequence[int],
    method: str = "fedavg",
    *,
    bias_method: str | None = None,
    clip_norm: float | None = None,
    noise_multiplier: float | None = None,
    seed: int | None = None,
    beta: float | None = None,
    f: int | None = None,
    m: int | None = None,
    client_ids: Sequence[str] | None = None,
    out: np.ndarray | None = None,
) -> AggregatedModel:
    """Combine client updates (named float32 tensors) into one, by ``method``.

    Methods: ``fedavg`` (weighted by num_samples), ``mean``, ``median`` (coordinate-wise),
    ``trimmed_mean`` (``beta``, default 0.2, cut from each end), ``krum`` and ``multi_krum`` (``f``
    clients assumed malicious, default 0; multi_krum keeps the ``m`` best, default n - f, and averages
    them weighted by num_samples). ``bias_method`` gives tensors whose name ends in ``bias`` their own
    method. ``clip_norm`` scales each update down to that L2 norm (over the whole update) first;
    ``noise_multiplier`` > 0 adds Gaussian noise of std noise_multiplier * clip_norm / n, drawn from
    ``seed``. ``client_ids`` name clients in errors and metadata. ``out``, a flat float32 buffer of the
    model's size, receives the result instead of a new allocation (a buffer reused across rounds saves
    page-faulting a fresh model-sized array every call).

    Returns the tensors (views into one flat float32 buffer, ``.flat``) with ``.metadata``.
    """
    started = time.perf_counter()
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    if isinstance(updates, Mapping) or not isinstance(updates, Sequence):
        raise AggregationError(
            f"updates must be a sequence of per-client tensor mappings, got {type(updates).__name__}"
        )
    if len(updates) == 0:
        raise AggregationError("updates is empty: aggregation needs at least one client update")
    num_clients = len(updates)
    counts = check_num_samples(num_samples, num_clients)
    ids = check_client_ids(client_ids, num_clients)
    options = resolve_options(num_clients, method, bias_method, clip_norm, noise_multiplier, seed, beta, f, m)

    layout = ModelLayout.of(updates[0], describe_client(0, ids))
    for k in range(1, num_clients):
        layout.check(updates[k], describe_client(k, ids))

    norms: np.ndarray | None = None
    scales = np.ones(num_clients)
    if options.clip_norm is not None:
        norms = client_norms(tensor_table(layout, updates))
        bad = np.flatnonzero(~np.isfinite(norms))
        if bad.size:
            raise find_non_finite(layout, updates, ids, positions=bad.tolist())
        scales = clip_scales(norms, options.clip_norm)

    flat = layout.empty_flat() if out is None else check_out(out, layout, updates)
    selected: dict[str, tuple[str, ...]] = {}
    names = ids if ids is not None else [str(k) for k in range(num_clients)]
    for group, group_method, indices in tensor_groups(layout, options):
        kept = _combine(layout, updates, ids, group_method, indices, counts, scales, options, flat)
        if kept is not None:
            selected[group] = tuple(names[k] for k in kept)

    if options.noise_multiplier > 0:
        add_noise(flat, noise_std(options, num_clients), options.seed)

    participants = tuple(
        Participant(
            client_id=names[k],
            num_samples=counts[k],
            update_norm=None if norms is None else float(norms[k]),
            clip_scale=float(scales[k]),
        )
        for k in range(num_clients)
    )
    metadata = AggregationMetadata(
        method=options.method,
        bias_method=options.bias_method,
        options=options.as_record(num_clients),
        participants=participants,
        num_parameters=layout.num_parameters,
        timestamp=timestamp,
        duration_ms=round((time.perf_counter() - started) * 1000.0, 3),
        selected=selected,
    )
    return AggregatedModel(layout.unflatten(flat), flat, metadata)


def check_out(out: object, layout: ModelLayout, updates: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """``out`` if it can take the result: writable contiguous float32, the model's size, no input inside."""
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.float32
        or out.ndim != 1
        or not out.flags.c_contiguous
    ):
        raise OptionError("out must be a 1-D contiguous float32 numpy array")
    if out.size != layout.num_parameters:
        raise OptionError(f"out has {out.size} elements, expected the model's {layout.num_parameters}")
    if not out.flags.writeable:
        raise OptionError("out must be writable")
    for k, update in enumerate(updates):
        for name in layout.names:
            if np.may_share_memory(out, update[name]):
                raise OptionError(
                    f"out overlaps the update from client {k} (tensor {name!r}); expected a separate buffer"
                )
    return out


def _combine(
    layout: ModelLayout,
    updates: Sequence[Mapping[str, np.ndarray]],
    ids: list[str] | None,
    method: str,
    indices: tuple[int, ...],
    counts: list[int],
    scales: np.ndarray,
    options: Options,
    out: np.ndarray,
) -> list[int] | None:
    """Aggregate one tensor group into ``out``; returns the kept clients for Krum methods, else None."""
    num_clients = len(updates)
    table = tensor_table(layout, updates, indices)
    samples = np.array(counts, dtype=np.float64)
    kept: list[int] | None = None
    if method in ("fedavg", "mean"):
        shares = samples / samples.sum() if method == "fedavg" else np.full(num_clients, 1.0 / num_clients)
        non_finite = weighted_sum(table, shares * scales, out)
    elif method == "median":
        mid = num_clients // 2
        rows = (mid, mid + 1) if num_clients % 2 else (mid - 1, mid + 1)
        non_finite = sorted_reduce(table, scales, rows[0], rows[1], kernels.MEDIAN, out)
    elif method == "trimmed_mean":
        assert options.beta is not None
        row_lo, row_hi = trim_rows(num_clients, options.beta)
        non_finite = sorted_reduce(table, scales, row_lo, row_hi, kernels.TRIMMED_MEAN, out)
    else:
        assert options.f is not None
        distances = pairwise_distances(table, scales)
        bad = np.flatnonzero(~np.isfinite(distances).all(axis=1))
        if bad.size:
            raise find_non_finite(layout, updates, ids, indices, positions=bad.tolist())
        keep = 1 if method == "krum" else options.m
        assert keep is not None
        kept = np.argsort(krum_scores(distances, options.f), kind="stable")[:keep].tolist()
        kept_table = TensorTable(
            table.addresses[kept], table.sizes, table.offsets, table.tensor_indices, table.keepalive
        )
        shares = samples[kept] / samples[kept].sum()
        non_finite = weighted_sum(kept_table, shares * scales[kept], out)
    if non_finite:
        raise find_non_finite(layout, updates, ids, indices)
    return kept


def add_noise(flat: np.ndarray, std: float, seed: int | None) -> None:
    """Add N(0, std^2) to every parameter, reproducibly from ``seed``, in layout order."""
    rng = np.random.default_rng(seed)
    piece = np.empty(min(_NOISE_PIECE, flat.size), dtype=np.float32)
    scale = np.float32(std)
    for start in range(0, flat.size, _NOISE_PIECE):
        stop = min(start + _NOISE_PIECE, flat.size)
        noise = piece[: stop - start]
        rng.standard_normal(out=noise, dtype=np.float32)
        noise *= scale
        flat[start:stop] += noise
