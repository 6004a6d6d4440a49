"""Streaming FedAvg / mean: add updates one at a time as learn cycles finish, in O(model) memory.

The running sum lives in two float32 buffers (a compensated pair, about 48 significant bits), so the
accumulator costs two model copies whatever the number of clients, and ``result`` divides in place.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np

from . import kernels
from .errors import AggregationError, OptionError
from .layout import ModelLayout, find_non_finite, tensor_table
from .result import AggregatedModel, AggregationMetadata, Participant
from .strategies import (
    add_noise,
    check_num_samples,
    client_norms,
    clip_scales,
    is_bias,
    noise_std,
    resolve_options,
)

STREAMING_METHODS = ("fedavg", "mean")


class StreamingAggregator:
    """Running fedavg or mean over updates added one by one; ``result()`` gives the aggregate once.

    Same options as ``aggregate`` for these methods (``bias_method`` limited to fedavg/mean too), and the
    same result type with metadata. Each update is checked (layout, finite) before it touches the sum,
    so a bad update is refused without spoiling the ones already added.
    """

    def __init__(
        self,
        method: str = "fedavg",
        *,
        bias_method: str | None = None,
        clip_norm: float | None = None,
        noise_multiplier: float | None = None,
        seed: int | None = None,
        layout: ModelLayout | None = None,
    ) -> None:
        self._started = time.perf_counter()
        self._timestamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.options = resolve_options(
            0,
            method,
            bias_method,
            clip_norm,
            noise_multiplier,
            seed,
            None,
            None,
            None,
            allowed=STREAMING_METHODS,
        )
        self.layout = layout
        self._hi: np.ndarray | None = None
        self._lo: np.ndarray | None = None
        self._participants: list[Participant] = []
        # Sum of weights per tensor group: samples for fedavg, update count for mean.
        self._totals = {"fedavg": 0, "mean": 0}
        self._finished = False

    @property
    def num_updates(self) -> int:
        return len(self._participants)

    def add(self, update: Mapping[str, np.ndarray], num_samples: int, client_id: str | None = None) -> None:
        """Fold one client's update into the running sum."""
        if self._finished:
            raise AggregationError(
                "result() was already taken from this StreamingAggregator; start a new one"
            )
        index = self.num_updates
        client = f"client {index}" if client_id is None else f"client {index} ({client_id!r})"
        (count,) = check_num_samples([num_samples], 1)
        if client_id is not None and not isinstance(client_id, str):
            raise OptionError(f"client_id must be a string, got {client_id!r}")
        if self.layout is None:
            self.layout = ModelLayout.of(update, client)
        else:
            self.layout.check(update, client)
        layout = self.layout

        table = tensor_table(layout, [update])
        # One read of the update gives its norm and, through Inf/NaN in the norm, its finiteness.
        norm = float(client_norms(table)[0])
        if not np.isfinite(norm):
            error = find_non_finite(layout, [update], None)
            raise type(error)(str(error).replace("client 0", client, 1))
        scale = 1.0
        if self.options.clip_norm is not None:
            scale = float(clip_scales(np.array([norm]), self.options.clip_norm)[0])

        weight_of = {"fedavg": float(count), "mean": 1.0}
        tensor_weights = np.array(
            [weight_of[self._method_of(name)] * scale for name in layout.names], dtype=np.float64
        )
        first = self._hi is None
        if first:
            self._hi = layout.empty_flat()
            self._lo = layout.empty_flat()
        block = kernels.STREAM_BLOCK
        chunk_tensor, chunk_start = kernels.chunk_table(table.sizes, block)
        with kernels.launch(layout.num_parameters):
            kernels.compensated_add(
                table.addresses,
                tensor_weights,
                table.sizes,
                table.offsets,
                chunk_tensor,
                chunk_start,
                block,
                first,
                self._hi,
                self._lo,
            )
        self._totals["fedavg"] += count
        self._totals["mean"] += 1
        self._participants.append(
            Participant(
                client_id=str(index) if client_id is None else client_id,
                num_samples=count,
                update_norm=norm if self.options.clip_norm is not None else None,
                clip_scale=scale,
            )
        )

    def result(self) -> AggregatedModel:
        """The aggregate of every update added; the accumulator's memory becomes the result's."""
        if self._finished:
            raise AggregationError(
                "result() was already taken from this StreamingAggregator; start a new one"
            )
        if self._hi is None or self._lo is None or self.layout is None:
            raise AggregationError("no updates were added: aggregation needs at least one client update")
        layout = self.layout
        divisors = np.array(
            [float(self._totals[self._method_of(name)]) for name in layout.names], dtype=np.float64
        )
        sizes = np.array(layout.sizes, dtype=np.int64)
        offsets = np.array(layout.offsets, dtype=np.int64)
        block = kernels.STREAM_BLOCK
        chunk_tensor, chunk_start = kernels.chunk_table(sizes, block)
        with kernels.launch(layout.num_parameters):
            kernels.compensated_finish(
                divisors, sizes, offsets, chunk_tensor, chunk_start, block, self._hi, self._lo
            )
        flat = self._hi
        self._hi = self._lo = None
        self._finished = True
        num_clients = self.num_updates
        if self.options.noise_multiplier > 0:
            add_noise(flat, noise_std(self.options, num_clients), self.options.seed)
        metadata = AggregationMetadata(
            method=self.options.method,
            bias_method=self.options.bias_method,
            options=self.options.as_record(num_clients),
            participants=tuple(self._participants),
            num_parameters=layout.num_parameters,
            timestamp=self._timestamp,
            duration_ms=round((time.perf_counter() - self._started) * 1000.0, 3),
        )
        return AggregatedModel(layout.unflatten(flat), flat, metadata)

    def _method_of(self, name: str) -> str:
        return self.options.bias_method if is_bias(name) else self.options.method
