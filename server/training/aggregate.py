"""A closed round's work: aggregate its members' deltas with the model's method, let the
validators vote on the candidate, then commit a version atomically with the members' outcome,
or keep the last good one. Every step is recorded in the hash-chained history."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

import aggregation
from aggregation.screening import screen
from aggregation.strategies import DEFAULT_BETA

from .. import consensus
from ..storage import privacy as privacy_rows
from ..storage.cycles import Cycle
from ..vocabulary import CycleStatus, RoundOutcome, camel_keys
from . import evaluate, screening, standing
from .policy import RoundPolicy
from .rounds import Close

if TYPE_CHECKING:
    from .service import TrainingService

log = logging.getLogger("wondercraft.training")


_OPTIMIZER_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class RoundResult:
    version: int | None  # None: the validators refused the candidate


async def aggregate_round(service: TrainingService, close: Close, members: list[Cycle]) -> RoundResult:
    settings, models, audit = service.settings, service.models, service.audit
    started = time.perf_counter()
    info = await asyncio.to_thread(models.require, close.model)
    base_info = await asyncio.to_thread(models.version, close.model, close.base_version)
    base = await asyncio.to_thread(models.load, base_info)
    policy = close.policy
    method = policy.aggregation.method
    ids = [c.cycle_id for c in members]
    screened = await asyncio.to_thread(_screen, close, members)
    kept = [members[k] for k in screened.kept]
    kept_ids = [c.cycle_id for c in kept]
    budget, spent = policy.privacy, None
    refusal = None
    if not screened.enough:
        refusal = screened.refusal(ids)
    elif (
        budget is not None
        and await asyncio.to_thread(privacy_rows.rounds_spent, service.store, info.name)
        >= budget.planned_rounds
    ):
        refusal = standing.privacy_exhausted(info.name, budget, policy)
    delta, metadata, optimizer = None, {"method": method}, None
    if refusal is None:
        try:
            aggregated = await asyncio.to_thread(_combine, policy, kept)
            metadata = camel_keys(aggregated.metadata.to_dict())
            metadata["options"].pop("seed", None)  # the noise's seed would undo the privacy
            delta, optimizer = await asyncio.to_thread(_step, service, info.name, policy, base, aggregated)
            if budget is not None:
                spent = await asyncio.to_thread(privacy_rows.spend_round, service.store, info.name)
        except aggregation.AggregationError as exc:
            refusal = f"aggregation refused the updates: {exc}"
    robust = _robust_record(policy, kept, kept_ids, metadata)
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
        "screening": {c: f for c, f in zip(ids, screened.figures, strict=True)},
        "excluded": [ids[k] for k in screened.excluded],
        **robust,
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
    await _screened_out(service, info.name, close, members, screened)
    privacy_record = None if budget is None else standing.privacy_json(service, info.name, policy, spent)
    if not approved:
        await _rejected(service, info.name, close, kept, votes)
        return RoundResult(None)
    if optimizer is not None:
        _optimizers(service)[info.name] = optimizer
    record = {
        "aggregationMethod": method,
        "aggregation": metadata,
        "serverOptimizer": policy.server_optimizer.as_json(),
        "screening": proposal["screening"],
        "excluded": proposal["excluded"],
        **robust,
        "privacy": privacy_record,
        "participants": [p for p in participants if p["cycleId"] in kept_ids],
        "timestamp": time.time(),
        "metrics": {
            "loss": _mean([c.result["metrics"].get("loss") for c in kept]),
            "accuracy": _mean([c.result["metrics"].get("accuracy") for c in kept]),
        },
        "votes": proposal["votes"],
        "round": {
            k: proposal[k] for k in ("round", "enrolled", "needed", "minClients", "closedBy", "roundPolicy")
        },
    }

    def mark_aggregated(conn, version: int) -> None:
        for cycle in kept:
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
        body = {"version": version, "parentVersion": close.base_version, "cycles": kept_ids}
        if privacy_record is not None:
            body["privacy"] = privacy_record
        await audit.append("model_committed", info.name, body)
    log.info("model committed", extra={"model": info.name, "version": version, "cycles": len(kept_ids)})
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


def _optimizers(service: TrainingService) -> dict[str, aggregation.ServerOptimizer]:
    """Each model's server optimizer (FedAvgM's velocity, FedAdam's moments) as of its last
    committed round; in memory: a restart starts the moments afresh."""
    return _OPTIMIZER_STATE.setdefault(service, {})


def _screen(close: Close, members: list[Cycle]) -> screening.Screened:
    """Blocking: each member's update screened against the others (or all kept)."""
    rule = close.policy.screening
    if not rule.enabled or not members:
        return screening.unscreened(close, len(members))
    try:
        verdicts = screen([c.deltas for c in members], rule.rule(), [c.cycle_id for c in members])
    except aggregation.AggregationError:
        return screening.unscreened(close, len(members))  # aggregation names what is wrong
    return screening.decide(close, verdicts, rule.rule())


def _combine(policy: RoundPolicy, kept: list[Cycle]) -> aggregation.AggregatedModel:
    """Blocking: the kept updates combined by the model's method; with privacy, each clipped and
    their plain mean noised (the noise is calibrated to it)."""
    choice, budget = policy.aggregation, policy.privacy
    updates, counts, ids = [c.deltas for c in kept], [c.num_samples for c in kept], [c.cycle_id for c in kept]
    if budget is None:
        return aggregation.aggregate(updates, counts, choice.method, client_ids=ids, **choice.kwargs())
    return aggregation.aggregate(
        updates, counts, "mean", client_ids=ids, clip_norm=float(budget.clip_norm),
        noise_multiplier=budget.noise_multiplier, seed=secrets.randbits(63),
    )  # fmt: skip


def _step(service: TrainingService, name: str, policy: RoundPolicy, base: dict, aggregated) -> tuple:
    """Blocking: the server optimizer's next model, as the change from the base (what the
    validators judge), and the optimizer holding the state to keep if the round commits."""
    current = _optimizers(service).get(name)
    trial = policy.server_optimizer.make()
    if current is not None and current.name == trial.name and current.layout is not None:
        trial.load_state_dict(current.state_dict())
    stepped = trial.step(base, dict(aggregated))
    return {n: (stepped[n] - base[n]).astype(np.float32) for n in base}, trial


def _robust_record(policy: RoundPolicy, kept: list[Cycle], ids: list[str], metadata: dict) -> dict:
    """Which updates the robust methods left out: krum / multi-krum whole updates, trimmed mean
    a share of each update's values."""
    choice = policy.aggregation
    out: dict = {}
    if metadata.get("selected"):
        out["droppedByAggregation"] = screening.dropped_by_krum(metadata["selected"], ids)
    if "trimmed_mean" in (choice.method, choice.bias_method) and policy.privacy is None and kept:
        beta = choice.beta if choice.beta is not None else DEFAULT_BETA
        if kept[0].deltas is not None:
            out["trimmedShare"] = screening.trimmed_shares([c.deltas for c in kept], beta, ids)
    return out


async def _screened_out(
    service: TrainingService, name: str, close: Close, members: list[Cycle], screened: screening.Screened
) -> None:
    """Excluded members: their round outcome and figures in their status, a telemetry event; every
    screened member's standing, with the history entries (standing.py)."""
    if close.policy.screening.enabled and members:
        suspended = await asyncio.to_thread(
            standing.record_round, service, name, close.round_id, members, screened, close.policy
        )
        for agent in suspended:
            log.warning("agent suspended", extra={"model": name, "agent_id": agent})
    for k, cycle in enumerate(members):
        figures = screened.figures[k]
        if figures:
            cycle.result = {**(cycle.result or {}), "screening": figures}
        if k in screened.excluded:
            cycle.result = {**cycle.result, "round": {"outcome": str(RoundOutcome.EXCLUDED),
                                                     "reasons": f"screening: {figures['message']}"}}  # fmt: skip
            service._emit(
                cycle,
                "training_update_excluded",
                f"update_excluded: {figures['reason']}: {figures['message']}",
            )
        if figures:
            await asyncio.to_thread(service.persist_blocking, cycle)


def _mean(values: list) -> float | None:
    clean = [v for v in values if v is not None]
    return sum(clean) / len(clean) if clean else None
