"""Numba kernels over flat float32 data: weighted sums, sorting-network order statistics, norms, distances.

Clients' tensors arrive as an address table (int64, client x tensor) and are read in place; ``prange`` runs
over one-tensor chunks, and inside a chunk the client loop wraps a contiguous element loop LLVM vectorises.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

# Aggregations launched from several Python threads at once gain nothing (they share the same memory
# bandwidth), and numba's fallback "workqueue" threading layer aborts the process on concurrent launches.
KERNEL_LOCK = threading.Lock()

# Below this many element visits a kernel runs on one thread: waking the pool costs more than it saves,
# and on a busy host a parallel region can wait milliseconds for a descheduled worker.
PARALLEL_MIN_WORK = 1 << 20

# Elements per chunk for streaming kernels: a float32 accumulator of this size sits in L2 while every
# client's slice streams through it, and the chunk is long enough for hardware prefetch to pay.
STREAM_BLOCK = 32768

# Reassociation lets LLVM vectorise float reductions; NaN/Inf semantics stay on because the same passes
# are how non-finite input is detected.
_REDUCE_MATH = {"reassoc", "contract"}


@contextmanager
def launch(work: int) -> Iterator[None]:
    """Serialise kernel launches; run small jobs (``work`` element visits) on a single thread."""
    with KERNEL_LOCK:
        if work >= PARALLEL_MIN_WORK:
            yield
            return
        previous = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            yield
        finally:
            numba.set_num_threads(previous)


@intrinsic
def _float32_at(typingctx, address):
    """Reinterpret an integer address as a float32 pointer (the address table holds such integers)."""
    sig = types.CPointer(types.float32)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float32)))

    return sig, codegen


@njit(cache=True, inline="always")
def _slice(address: int, start: int, n: int):
    # No bounds check here: every address table is built from tensors already checked against the layout.
    return numba.carray(_float32_at(address + 4 * start), n)


def sort_block(num_clients: int) -> int:
    """Chunk length for kernels that hold a K x block float32 tile in cache while they sort it."""
    return int(min(4096, max(64, (16384 // max(num_clients, 1)) // 16 * 16)))


def pair_block(num_clients: int) -> int:
    """Chunk length for the pairwise-distance kernel's K x block float64 tile."""
    return int(min(8192, max(64, (32768 // max(num_clients, 1)) // 16 * 16)))


@njit(cache=True)
def chunk_table(sizes: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(tensor index, start element) of every chunk, covering each tensor in runs of ``block``."""
    count = 0
    for t in range(sizes.shape[0]):
        count += (sizes[t] + block - 1) // block
    chunk_tensor = np.empty(count, np.int64)
    chunk_start = np.empty(count, np.int64)
    c = 0
    for t in range(sizes.shape[0]):
        for start in range(0, sizes[t], block):
            chunk_tensor[c] = t
            chunk_start[c] = start
            c += 1
    return chunk_tensor, chunk_start


@njit(parallel=True, cache=True)
def weighted_sum(addresses, weights, sizes, offsets, chunk_tensor, chunk_start, block, out):
    """out[offsets[t] + e] = sum over clients k of weights[k] * tensor(k, t)[e].

    Clients are folded in eight (then four, then one) at a time: each pass over the chunk's float32
    accumulator reads several input streams, which keeps enough loads in flight to run at memory speed.
    """
    num_clients = addresses.shape[0]
    non_finite = 0
    for c in prange(chunk_tensor.shape[0]):
        t = chunk_tensor[c]
        start = chunk_start[c]
        n = min(block, sizes[t] - start)
        acc = np.zeros(n, np.float32)
        k = 0
        while k + 8 <= num_clients:
            x0 = _slice(addresses[k, t], start, n)
            x1 = _slice(addresses[k + 1, t], start, n)
            x2 = _slice(addresses[k + 2, t], start, n)
            x3 = _slice(addresses[k + 3, t], start, n)
            x4 = _slice(addresses[k + 4, t], start, n)
            x5 = _slice(addresses[k + 5, t], start, n)
            x6 = _slice(addresses[k + 6, t], start, n)
            x7 = _slice(addresses[k + 7, t], start, n)
            w0 = np.float32(weights[k])
            w1 = np.float32(weights[k + 1])
            w2 = np.float32(weights[k + 2])
            w3 = np.float32(weights[k + 3])
            w4 = np.float32(weights[k + 4])
            w5 = np.float32(weights[k + 5])
            w6 = np.float32(weights[k + 6])
            w7 = np.float32(weights[k + 7])
            for e in range(n):
                acc[e] += ((w0 * x0[e] + w1 * x1[e]) + (w2 * x2[e] + w3 * x3[e])) + (
                    (w4 * x4[e] + w5 * x5[e]) + (w6 * x6[e] + w7 * x7[e])
                )
            k += 8
        while k + 4 <= num_clients:
            x0 = _slice(addresses[k, t], start, n)
            x1 = _slice(addresses[k + 1, t], start, n)
            x2 = _slice(addresses[k + 2, t], start, n)
            x3 = _slice(addresses[k + 3, t], start, n)
            w0 = np.float32(weights[k])
            w1 = np.float32(weights[k + 1])
            w2 = np.float32(weights[k + 2])
            w3 = np.float32(weights[k + 3])
            for e in range(n):
                acc[e] += (w0 * x0[e] + w1 * x1[e]) + (w2 * x2[e] + w3 * x3[e])
            k += 4
        while k < num_clients:
            x0 = _slice(addresses[k, t], start, n)
            w0 = np.float32(weights[k])
            for e in range(n):
                acc[e] += w0 * x0[e]
            k += 1
        base = offsets[t] + start
        bad = 0
        for e in range(n):
            v = acc[e]
            out[base + e] = v
            # v - v is NaN exactly when v is NaN or Inf; positive weights carry any bad input through.
            if v - v != np.float32(0.0):
                bad += 1
        non_finite += bad
    return non_finite


MEDIAN = 0
TRIMMED_MEAN = 1


@njit(parallel=True, cache=True)
def sorted_reduce(
    addresses,
    scales,
    sizes,
    offsets,
    chunk_tensor,
    chunk_start,
    block,
    net_lo,
    net_hi,
    row_lo,
    row_hi,
    mode,
    out,
):
    """Coordinate-wise order statistic over clients, written to ``out``; returns the non-finite input count.

    Each chunk is copied into a K x block tile (scaled per client), then a sorting network of
    compare-exchanges runs over whole tile rows, which vectorises across elements. ``mode`` MEDIAN takes
    the middle row, or the float32 mean of the two middle rows as numpy.median does; TRIMMED_MEAN averages
    rows [row_lo, row_hi) in float64, in sorted order.
    """
    num_clients = addresses.shape[0]
    non_finite = 0
    for c in prange(chunk_tensor.shape[0]):
        t = chunk_tensor[c]
        start = chunk_start[c]
        n = min(block, sizes[t] - start)
        tile = np.empty((num_clients, n), np.float32)
        # x * 0 is 0 for finite x and NaN otherwise, so one vectorised pass tells whether any input was bad.
        probe = np.zeros(n, np.float32)
        for k in range(num_clients):
            x = _slice(addresses[k, t], start, n)
            s = np.float32(scales[k])
            for e in range(n):
                probe[e] += x[e] * np.float32(0.0)
                tile[k, e] = x[e] * s
        for p in range(net_lo.shape[0]):
            i = net_lo[p]
            j = net_hi[p]
            for e in range(n):
                a = tile[i, e]
                b = tile[j, e]
                tile[i, e] = b if b < a else a
                tile[j, e] = a if b < a else b
        base = offsets[t] + start
        if mode == MEDIAN:
            mid = num_clients // 2
            if num_clients % 2 == 1:
                for e in range(n):
                    out[base + e] = tile[mid, e]
            else:
                for e in range(n):
                    out[base + e] = (tile[mid - 1, e] + tile[mid, e]) / np.float32(2.0)
        else:
            acc = np.zeros(n, np.float64)
            for r in range(row_lo, row_hi):
                for e in range(n):
                    acc[e] += tile[r, e]
            count = np.float64(row_hi - row_lo)
            for e in range(n):
                out[base + e] = np.float32(acc[e] / count)
        bad = 0
        for e in range(n):
            if probe[e] != 0.0:
                bad += 1
        non_finite += bad
    return non_finite


@njit(parallel=True, cache=True, fastmath=_REDUCE_MATH)
def squared_norms(addresses, sizes, chunk_tensor, chunk_start, block, n_parts):
    """Per-client sum of squares over all tensors in the table, in float64 (Inf/NaN if the input is)."""
    num_clients = addresses.shape[0]
    n_chunks = chunk_tensor.shape[0]
    partial = np.zeros((n_parts, num_clients))
    for p in prange(n_parts):
        for c in range(p * n_chunks // n_parts, (p + 1) * n_chunks // n_parts):
            t = chunk_tensor[c]
            start = chunk_start[c]
            n = min(block, sizes[t] - start)
            for k in range(num_clients):
                x = _slice(addresses[k, t], start, n)
                total = 0.0
                for e in range(n):
                    v = np.float64(x[e])
                    total += v * v
                partial[p, k] += total
    result = np.zeros(num_clients)
    for p in range(n_parts):
        for k in range(num_clients):
            result[k] += partial[p, k]
    return result


@njit(parallel=True, cache=True, fastmath=_REDUCE_MATH)
def pairwise_squared_distances(addresses, scales, sizes, chunk_tensor, chunk_start, block, n_parts):
    """Squared L2 distance between every two clients' scaled, flattened updates (float64, K x K).

    Each difference is squared and summed directly, so a distance can never come out negative the way
    ``|a|^2 + |b|^2 - 2ab`` can. Chunks are staged as float64 tiles so each pair reads cached data.
    """
    num_clients = addresses.shape[0]
    n_chunks = chunk_tensor.shape[0]
    partial = np.zeros((n_parts, num_clients, num_clients))
    for p in prange(n_parts):
        tile = np.empty((num_clients, block), np.float64)
        for c in range(p * n_chunks // n_parts, (p + 1) * n_chunks // n_parts):
            t = chunk_tensor[c]
            start = chunk_start[c]
            n = min(block, sizes[t] - start)
            for k in range(num_clients):
                x = _slice(addresses[k, t], start, n)
                s = np.float64(np.float32(scales[k]))
                for e in range(n):
                    tile[k, e] = np.float64(x[e]) * s
            for i in range(num_clients):
                for j in range(i + 1, num_clients):
                    total = 0.0
                    for e in range(n):
                        d = tile[i, e] - tile[j, e]
                        total += d * d
                    partial[p, i, j] += total
    result = np.zeros((num_clients, num_clients))
    for p in range(n_parts):
        for i in range(num_clients):
            for j in range(i + 1, num_clients):
                result[i, j] += partial[p, i, j]
    for i in range(num_clients):
        for j in range(i + 1, num_clients):
            result[j, i] = result[i, j]
    return result


@njit(parallel=True, cache=True)
def compensated_add(
    addresses, tensor_weights, sizes, offsets, chunk_tensor, chunk_start, block, first, hi, lo
):
    """(hi + lo) += weight_t * tensor_t for one client's update; ``first`` starts the sum instead.

    The running sum is kept as two float32 buffers whose sum carries about 48 significant bits, so a
    streaming sum over many clients stays as exact as a float64 one while holding two model copies.
    Starting with ``first`` lets the buffers be allocated uninitialised (no zero pass, no calloc faults).
    """
    for c in prange(chunk_tensor.shape[0]):
        t = chunk_tensor[c]
        start = chunk_start[c]
        n = min(block, sizes[t] - start)
        x = _slice(addresses[0, t], start, n)
        w = tensor_weights[t]
        base = offsets[t] + start
        if first:
            for e in range(n):
                v = np.float64(x[e]) * w
                h = np.float32(v)
                hi[base + e] = h
                lo[base + e] = np.float32(v - np.float64(h))
        else:
            for e in range(n):
                v = (np.float64(hi[base + e]) + np.float64(lo[base + e])) + np.float64(x[e]) * w
                h = np.float32(v)
                hi[base + e] = h
                lo[base + e] = np.float32(v - np.float64(h))


@njit(parallel=True, cache=True)
def compensated_finish(tensor_divisors, sizes, offsets, chunk_tensor, chunk_start, block, hi, lo):
    """hi = (hi + lo) / divisor_t, in place, so the result needs no third model-sized buffer."""
    for c in prange(chunk_tensor.shape[0]):
        t = chunk_tensor[c]
        start = chunk_start[c]
        n = min(block, sizes[t] - start)
        d = tensor_divisors[t]
        base = offsets[t] + start
        for e in range(n):
            hi[base + e] = np.float32((np.float64(hi[base + e]) + np.float64(lo[base + e])) / d)


@njit(parallel=True, cache=True)
def add_scaled(model_addresses, delta_addresses, sizes, offsets, chunk_tensor, chunk_start, block, rate, out):
    """out = model + rate * delta (plain server step)."""
    for c in prange(chunk_tensor.shape[0]):
        t = chunk_tensor[c]
        start = chunk_start[c]
        n = min(block, sizes[t] - start)
        x = _slice(model_addresses[0, t], start, n)
        d = _slice(delta_addresses[0, t], start, n)
        base = offsets[t] + start
        for e in range(n):
            out[base + e] = np.float32(np.float64(x[e]) + rate * np.float64(d[e]))


@njit(parallel=True, cache=True)
def momentum_step(
    model_addresses,
    delta_addresses,
    sizes,
    offsets,
    chunk_tensor,
    chunk_start,
    block,
    rate,
    momentum,
    velocity,
    out,
):
    """velocity = momentum * velocity + delta; out = model + rate * velocity (FedAvgM)."""
    for c in prange(chunk_tensor.shape[0]):
        t = chunk_tensor[c]
        start = chunk_start[c]
        n = min(block, sizes[t] - start)
        x = _slice(model_addresses[0, t], start, n)
        d = _slice(delta_addresses[0, t], start, n)
        base = offsets[t] + start
        for e in range(n):
            v = momentum * np.float64(velocity[base + e]) + np.float64(d[e])
            velocity[base + e] = np.float32(v)
            out[base + e] = np.float32(np.float64(x[e]) + rate * v)


@njit(parallel=True, cache=True)
def adam_step(
    model_addresses,
    delta_addresses,
    sizes,
    offsets,
    chunk_tensor,
    chunk_start,
    block,
    rate,
    beta1,
    beta2,
    tau,
    first_moment,
    second_moment,
    out,
):
    """m = b1 m + (1 - b1) d; v = b2 v + (1 - b2) d^2; out = model + rate * m / (sqrt(v) + tau) (FedAdam)."""
    for c in prange(chunk_tensor.shape[0]):
        t = chunk_tensor[c]
        start = chunk_start[c]
        n = min(block, sizes[t] - start)
        x = _slice(model_addresses[0, t], start, n)
        d = _slice(delta_addresses[0, t], start, n)
        base = offsets[t] + start
        for e in range(n):
            g = np.float64(d[e])
            m = beta1 * np.float64(first_moment[base + e]) + (1.0 - beta1) * g
            v = beta2 * np.float64(second_moment[base + e]) + (1.0 - beta2) * g * g
            first_moment[base + e] = np.float32(m)
            second_moment[base + e] = np.float32(v)
            out[base + e] = np.float32(np.float64(x[e]) + rate * m / (np.sqrt(v) + tau))
