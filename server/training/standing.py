"""Each agent's standing with a model, and what a job must clear before it is taken: the agent
is not suspended from the model, and the model's privacy budget is not spent.

A round's screening outcome is recorded for every screened member in one transaction, with the
history entries that go with it: each exclusion with its figures, and the suspension of an agent
whose updates were excluded `maxConsecutiveExclusions` times in a row (the admin's policy, set
with the model; the admin lifts it with POST /v1/agents/{agentId}/reinstate)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import Conflict, Forbidden
from ..storage import agents as agent_rows
from ..storage import privacy as privacy_rows
from ..storage.cycles import Cycle
from . import privacy
from .catalog import policy_of
from .policy import RoundPolicy
from .screening import Screened

if TYPE_CHECKING:
    from ..storage.models import ModelInfo
    from .service import TrainingService


def record_round(
    service: TrainingService, model: str, round_id: str, members: list[Cycle], screened: Screened,
    policy: RoundPolicy,
) -> list[str]:  # fmt: skip
    """Blocking. Returns the agents suspended by this round."""
    now, limit, audit = time.time(), policy.max_consecutive_exclusions, service.audit
    suspended = []
    with service.store.transaction() as conn:
        for k, cycle in enumerate(members):
            figures = screened.figures[k]
            excluded = k in screened.excluded
            row = agent_rows.record_screening(conn, cycle.agent_id, model, excluded, figures, now)
            if excluded and audit is not None:
                body = {"round": round_id, "cycleId": cycle.cycle_id, **figures}
                audit.record(conn, "update_excluded", model, body, agent_id=cycle.agent_id)
            if excluded and limit is not None and row["consecutive"] >= limit and row["suspended_at"] is None:
                agent_rows.suspend(conn, cycle.agent_id, model, now)
                suspended.append(cycle.agent_id)
                if audit is not None:
                    body = {"consecutiveExclusions": row["consecutive"], "maxConsecutiveExclusions": limit,
                            "decidedBy": "roundPolicy.maxConsecutiveExclusions"}  # fmt: skip
                    audit.record(conn, "agent_suspended", model, body, agent_id=cycle.agent_id)
    return suspended


def check_admission(service: TrainingService, agent_id: str, info: ModelInfo) -> None:
    """Blocking. Forbidden for a suspended agent, Conflict once the privacy budget is spent."""
    row = agent_rows.suspended(service.store, agent_id, info.name)
    if row is not None:
        raise Forbidden(
            f"agent {agent_id!r} is suspended from model {info.name!r}: its last {row['consecutive']} "
            "updates were excluded by screening (roundPolicy.maxConsecutiveExclusions); an admin can "
            f"reinstate it with POST /v1/agents/{agent_id}/reinstate"
        )
    policy = policy_of(service.settings, info)
    budget = policy.privacy
    if budget is not None and privacy_rows.rounds_spent(service.store, info.name) >= budget.planned_rounds:
        raise Conflict(
            privacy_exhausted(info.name, budget, policy),
            details={"privacy": privacy_json(service, info.name, policy)},
        )


def privacy_exhausted(name: str, budget, policy: RoundPolicy) -> str:
    return (
        f"model {name!r} has spent its privacy budget (roundPolicy.privacy: epsilon "
        f"{budget.target_epsilon:g} at delta {budget.delta:g} over {int(budget.planned_rounds)} rounds); "
        "it takes no more training"
    )


def privacy_json(service: TrainingService, name: str, policy: RoundPolicy, spent: int | None = None) -> dict:
    budget = policy.privacy
    assert budget is not None
    rounds = privacy_rows.rounds_spent(service.store, name) if spent is None else spent
    z = budget.noise_multiplier
    return {
        "targetEpsilon": budget.target_epsilon,
        "delta": budget.delta,
        "plannedRounds": int(budget.planned_rounds),
        "roundsSpent": rounds,
        "noiseMultiplier": z,
        "clipNorm": budget.clip_norm,
        "epsilonSpent": round(privacy.epsilon_spent(z, budget.delta, rounds), 6),
        "accountant": "dp-accounting RDP",
    }
