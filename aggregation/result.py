"""What an aggregation returns: the tensors, one flat buffer behind them, and the round's metadata.

The metadata (method, options, participants, timestamp) is what the model store records next to a
committed version, so ``to_dict`` gives it as plain JSON-ready values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Participant:
    """One client's part in an aggregation."""

    client_id: str
    num_samples: int
    update_norm: float | None = None  # L2 norm of the whole update before clipping; None without clipping
    clip_scale: float = 1.0  # factor the update was multiplied by (1.0 unless clipped)


@dataclass(frozen=True)
class AggregationMetadata:
    """How an aggregate was made, for the model store and the audit trail."""

    method: str
    bias_method: str
    options: dict[str, Any]
    participants: tuple[Participant, ...]
    num_parameters: int
    timestamp: str  # ISO 8601, UTC, when aggregation started
    duration_ms: float
    # Krum methods: ids of the clients kept, per tensor group ("all", or "weights" and "bias").
    selected: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["participants"] = [asdict(p) for p in self.participants]
        record["selected"] = {group: list(ids) for group, ids in self.selected.items()}
        return record


class AggregatedModel(dict[str, np.ndarray]):
    """Aggregated tensors by name, each a view into ``flat``; ``metadata`` says how they were made."""

    def __init__(
        self, tensors: dict[str, np.ndarray], flat: np.ndarray, metadata: AggregationMetadata
    ) -> None:
        super().__init__(tensors)
        self.flat = flat
        self.metadata = metadata
