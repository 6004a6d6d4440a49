"""A closed round's work: aggregate its members' deltas with the model's method, let the
validators vote on the candidate, then commit a version atomically with the members' outcome,
or keep the last good one. Every step is recorded in the hash-chained history."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aggregation

from .. import consensus
from ..storage.cycles import Cycle
from ..vocabulary import CycleStatus, RoundOutcome, camel_keys
from . import evaluate
from .rounds import Close

if TYPE_CHECKING:
    from .service import TrainingService

log = logging.getLogger("wondercraft.training")


@dataclass(frozen=True)
class RoundResult:
    version: int | None  # None: the validators refused the candidate


async def aggregate_round(service: TrainingService, close: Close, members: list[Cycle]) -> RoundResult:
    settings, models, audit = service.settings, service.models, service.audit
    started = time.perf_counter()
    info = await asyncio.to_thread(models.require, close.model)
    base_info = await asyncio.to_thread(models.version, close.model, close.base_version)
    base = await asyncio.to_thread(models.load, base_info)
    method = settings.aggregation_method
    ids = [c.cycle_id for c in members]
    try:
        aggregated = await asyncio.to_thread(
            aggregation.aggregate, [c.deltas for c in members], [c.num_samples for c in members], method,
            client_ids=ids,
        )  # fmt: skip
        delta, refusal, metadata = dict(aggregated), None, camel_keys(aggregated.metadata.to_dict())
    except aggregation.AggregationError as exc:
        delta, refusal, metadata = None, f"aggregation refused the updates: {exc}", {"method": method}
    candidate = consensus.Candidate(info.name, info.signature, close.base_version, base, delta, refusal)
    validators: list[consensus.Validator] = [
        consensus.finite_validator,
        consensus.norm_validator(settings.max_update_norm),
    ]
    if info.program is not None:
        if info.holdout_path:
            program_vote = await evaluate.program_holdout_validator(
                service, info, candidate, info.holdout_path
            )
            if program_vote is not None:
                validators.append(program_vote)
        holdout = None
    else:
        holdout = await asyncio.to_thread(models.holdout, info)
    if holdout is not None:
        validators.append(
            consensus.holdout_validator(
                holdout, service.shared.onnx, settings.validation_tolerance, base_info.sha256
            )
        )
    votes = await asyncio.to_thread(lambda: [v(candidate) for v in validators])
    approved = consensus.decide(votes, settings.aggregation_threshold, settings.consensus_required)
    participants = [
        {"cycleId": c.cycle_id, "agentId": c.agent_id, "numSamples": c.num_samples} for c in members
    ]
    proposal = {
        "baseVersion": close.base_version,
        "round": close.round_id,
        "cycles": ids,
        "participants": participants,
        "enrolled": close.enrolled,
        "needed": close.needed,
        "minClients": close.min_clients,
        "closedBy": str(close.closed_by),
        "roundPolicy": close.policy.as_json(),
        "aggregationMethod": method,
        "votes": [v.as_dict() for v in votes],
        "approved": approved,
    }
    if audit is not None:
        await audit.append("round_proposal", info.name, proposal)
        for vote in votes:
            await audit.append("vote", info.name, {"baseVersion": close.base_version, **vote.as_dict()})
    if service.metrics is not None:
        service.metrics.aggregation_duration.labels(strategy=method).observe(time.perf_counter() - started)
        service.metrics.consensus_rounds.labels(outcome="committed" if approved else "rejected").inc()
    for cycle in members:
        cycle.deltas = None  # consumed by this round either way
    if not approved:
        await _rejected(service, info.name, close, members, votes)
        return RoundResult(None)
    record = {
        "aggregationMethod": method,
        "aggregation": metadata,
        "participants": participants,
        "timestamp": time.time(),
        "metrics": {
            "loss": _mean([c.result["metrics"].get("loss") for c in members]),
            "accuracy": _mean([c.result["metrics"].get("accuracy") for c in members]),
        },
        "votes": proposal["votes"],
        "round": {
            k: proposal[k] for k in ("round", "enrolled", "needed", "minClients", "closedBy", "roundPolicy")
        },
    }

    def mark_aggregated(conn, version: int) -> None:
        for cycle in members:
            cycle.status, cycle.result_version = CycleStatus.AGGREGATED, version
            cycle.result = {
                **(cycle.result or {}),
                "round": {"outcome": str(RoundOutcome.COMMITTED), "version": version},
            }
            service.persist_blocking(cycle, conn)

    version = await asyncio.to_thread(
        models.commit, info.name, candidate.params, close.base_version, record, mark_aggregated
    )
    if audit is not None:
        body = {"version": version, "parentVersion": close.base_version, "cycles": ids}
        await audit.append("model_committed", info.name, body)
    log.info("model committed", extra={"model": info.name, "version": version, "cycles": len(ids)})
    return RoundResult(version)


async def _rejected(service: TrainingService, name: str, close: Close, members: list[Cycle], votes) -> None:
    reasons = "; ".join(f"{v.validator}: {v.reason}" for v in votes if not v.approve)
    for cycle in members:
        cycle.result = {
            **(cycle.result or {}),
            "round": {"outcome": str(RoundOutcome.REJECTED), "reasons": reasons},
        }
        await asyncio.to_thread(service.persist_blocking, cycle)
    if service.audit is not None:
        await service.audit.append(
            "round_rejected", name, {"baseVersion": close.base_version, "reasons": reasons}
        )
    log.warning("candidate rejected", extra={"model": name, "reasons": reasons})


def _mean(values: list) -> float | None:
    clean = [v for v in values if v is not None]
    return sum(clean) / len(clean) if clean else None
