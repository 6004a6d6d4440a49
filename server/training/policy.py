"""A model's round policy: how many clients a round needs, how long it stays open for them,
what share of the enrolled must complete, and what happens at its deadline."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..vocabulary import MIN_CLIENTS_MAX, ROUND_SECONDS_MAX


@dataclass(frozen=True)
class RoundPolicy:
    # None: 2 once more than one agent trains the model, 1 while only one does.
    min_clients: int | None = None
    round_window_s: float = 0.0
    aggregation_threshold: float = 0.67
    round_deadline_s: float = 300.0
    allow_partial: bool = False

    def effective_min_clients(self, agents: int) -> int:
        if self.min_clients is not None:
            return self.min_clients
        return 2 if agents > 1 else 1

    def as_json(self) -> dict[str, Any]:
        return {
            "minClients": self.min_clients,
            "roundWindowSeconds": self.round_window_s,
            "aggregationThreshold": self.aggregation_threshold,
            "roundDeadlineSeconds": self.round_deadline_s,
            "allowPartial": self.allow_partial,
        }

    def updated(self, body: dict[str, Any] | None) -> RoundPolicy:
        """This policy with a request's roundPolicy fields applied (camelCase; None keeps)."""
        body = body or {}
        policy = replace(
            self,
            min_clients=body.get("minClients", self.min_clients),
            round_window_s=float(body.get("roundWindowSeconds", self.round_window_s)),
            aggregation_threshold=float(body.get("aggregationThreshold", self.aggregation_threshold)),
            round_deadline_s=float(body.get("roundDeadlineSeconds", self.round_deadline_s)),
            allow_partial=bool(body.get("allowPartial", self.allow_partial)),
        )
        policy.check()
        return policy

    def check(self) -> None:
        """ValueError naming the first field out of its bounds."""
        if self.min_clients is not None and not 1 <= self.min_clients <= MIN_CLIENTS_MAX:
            raise ValueError(f"roundPolicy.minClients must be 1..{MIN_CLIENTS_MAX}, got {self.min_clients}")
        if not 0.0 <= self.aggregation_threshold <= 1.0:
            raise ValueError(
                f"roundPolicy.aggregationThreshold must be 0..1, got {self.aggregation_threshold}"
            )
        if not 0.0 < self.round_deadline_s <= ROUND_SECONDS_MAX:
            raise ValueError(
                f"roundPolicy.roundDeadlineSeconds must be above 0 and at most {ROUND_SECONDS_MAX:g}, "
                f"got {self.round_deadline_s}"
            )
        if not 0.0 <= self.round_window_s <= self.round_deadline_s:
            raise ValueError(
                f"roundPolicy.roundWindowSeconds must be 0..roundDeadlineSeconds "
                f"({self.round_deadline_s:g}), got {self.round_window_s}"
            )


def policy_from_json(body: dict[str, Any] | None, default: RoundPolicy) -> RoundPolicy:
    return default.updated(body)
