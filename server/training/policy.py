"""A model's round policy: how many clients a round needs, how long it stays open for them,
what share of the enrolled must complete, and what happens at its deadline; and how its updates
are screened, combined and applied, with or without differential privacy (federation.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..vocabulary import MIN_CLIENTS_MAX, ROUND_SECONDS_MAX
from .federation import AggregationChoice, OptimizerChoice, Privacy, Screening

EXCLUSIONS_MAX = 1000


@dataclass(frozen=True)
class RoundPolicy:
    # None: 2 once more than one agent trains the model, 1 while only one does.
    min_clients: int | None = None
    round_window_s: float = 0.0
    aggregation_threshold: float = 0.67
    round_deadline_s: float = 300.0
    allow_partial: bool = False
    aggregation: AggregationChoice = field(default_factory=AggregationChoice)
    server_optimizer: OptimizerChoice = field(default_factory=OptimizerChoice)
    screening: Screening = field(default_factory=Screening)
    # None: never; N: after N excluded updates in a row an agent's jobs for the model are refused.
    max_consecutive_exclusions: int | None = None
    privacy: Privacy | None = None

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
            "aggregation": self.aggregation.as_json(),
            "serverOptimizer": self.server_optimizer.as_json(),
            "screening": self.screening.as_json(),
            "maxConsecutiveExclusions": self.max_consecutive_exclusions,
            "privacy": None if self.privacy is None else self.privacy.as_json(),
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
            aggregation=self.aggregation.updated(body["aggregation"])
            if "aggregation" in body
            else self.aggregation,
            server_optimizer=self.server_optimizer.updated(body["serverOptimizer"])
            if "serverOptimizer" in body
            else self.server_optimizer,
            screening=self.screening.updated(body["screening"]) if "screening" in body else self.screening,
            max_consecutive_exclusions=body.get("maxConsecutiveExclusions", self.max_consecutive_exclusions),
            privacy=Privacy.from_json(body["privacy"]) if "privacy" in body else self.privacy,
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
        self.aggregation.check(self.min_clients)
        self.server_optimizer.check()
        self.screening.check()
        limit = self.max_consecutive_exclusions
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= EXCLUSIONS_MAX
        ):
            raise ValueError(
                f"roundPolicy.maxConsecutiveExclusions must be an integer 1..{EXCLUSIONS_MAX} or null, got {limit!r}"
            )
        if self.privacy is not None:
            self.privacy.check(self.aggregation.method)


def policy_from_json(body: dict[str, Any] | None, default: RoundPolicy) -> RoundPolicy:
    return default.updated(body)
