"""The round book: which completed cycles form a round, and when the round closes. Pure: events
go in (a model added, a cycle enrolled, completed or failed, time passing, a round's result
committed), decisions come out (close this round with these members, reject these cycles, wake
me at this time). No I/O, no awaits, no locks: one consumer feeds it and applies what it says.

A round belongs to one model and one base version. It opens at its first enrolment and stays
open for participants for `roundWindowSeconds`; then it closes once `max(minClients,
ceil(aggregationThreshold x clients enrolled when the window closed))` cycles have completed
(enrolled by the round's first completion count too, when that comes after the window).
At `roundDeadlineSeconds` it closes with what it has if that is at least minClients, or at
least one cycle with `allowPartial`; otherwise it expires: its completed cycles are rejected,
and those still running carry over to a new round. While a model aggregates, its next round
fills but waits: it shares the base being replaced."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..vocabulary import ClosedBy, FailureReason
from .policy import RoundPolicy

__all__ = ["RoundPolicy", "RoundBook"]

# ---- events ----


@dataclass(frozen=True)
class ModelAdded:
    model: str
    version: int
    policy: RoundPolicy
    agents: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ModelRemoved:
    model: str
    at: float = 0.0


@dataclass(frozen=True)
class VersionChanged:
    """The current version moved outside a round (a rollback)."""

    model: str
    version: int
    at: float


@dataclass(frozen=True)
class Enrolled:
    cycle_id: str
    model: str
    base_version: int
    agent_id: str
    at: float


@dataclass(frozen=True)
class Completed:
    cycle_id: str
    at: float


@dataclass(frozen=True)
class Failed:
    cycle_id: str
    at: float


@dataclass(frozen=True)
class Deadline:
    """Time has passed: re-evaluate one model's round (None: every model's)."""

    model: str | None
    at: float


@dataclass(frozen=True)
class Committed:
    """A closed round's result: the new version, or None when validators refused it."""

    model: str
    round_id: str
    version: int | None
    at: float


Event = ModelAdded | ModelRemoved | VersionChanged | Enrolled | Completed | Failed | Deadline | Committed

# ---- decisions ----


@dataclass(frozen=True)
class Close:
    round_id: str
    model: str
    base_version: int
    members: tuple[str, ...]
    enrolled: int  # clients enrolled when the window closed (the threshold's base)
    needed: int
    min_clients: int
    closed_by: ClosedBy
    policy: RoundPolicy


@dataclass(frozen=True)
class Reject:
    cycle_ids: tuple[str, ...]
    model: str
    reason: FailureReason
    message: str


@dataclass(frozen=True)
class Wake:
    model: str
    at: float


Decision = Close | Reject | Wake

# ---- state ----


@dataclass
class _Round:
    round_id: str
    base_version: int
    opened_at: float
    enrolled_at: dict[str, float] = field(default_factory=dict)  # every live cycle in it
    completed: dict[str, None] = field(default_factory=dict)  # in completion order
    first_completed_at: float | None = None

    @property
    def empty(self) -> bool:
        return not self.enrolled_at


@dataclass
class _Model:
    version: int
    policy: RoundPolicy
    agents: set[str]
    open: _Round | None = None
    closing: _Round | None = None
    rounds: int = 0


@dataclass
class _Cycle:
    model: str
    round: _Round | None  # None: doomed, rejected with `doom` when it completes
    doom: tuple[FailureReason, str] | None = None


class RoundBook:
    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}
        self._cycles: dict[str, _Cycle] = {}
        self._now = 0.0

    # ---- what the service reads ----

    def policy(self, model: str) -> RoundPolicy | None:
        state = self._models.get(model)
        return state.policy if state else None

    def open_rounds(self) -> list[tuple[str, str, float]]:
        """(model, round id, deadline) of every round accepting or holding cycles."""
        return [
            (name, state.open.round_id, state.open.opened_at + state.policy.round_deadline_s)
            for name, state in self._models.items()
            if state.open is not None
        ]

    def closing(self, model: str) -> str | None:
        state = self._models.get(model)
        return state.closing.round_id if state and state.closing else None

    def tracked(self) -> int:
        return len(self._cycles)

    # ---- events in, decisions out ----

    def handle(self, event: Event) -> list[Decision]:
        self._now = max(self._now, getattr(event, "at", self._now))
        match event:
            case ModelAdded():
                self._models[event.model] = _Model(event.version, event.policy, set(event.agents))
                return []
            case ModelRemoved():
                return self._remove(event.model)
            case VersionChanged():
                return self._rebase(event.model, event.version)
            case Enrolled():
                return self._enrol(event)
            case Completed():
                return self._complete(event.cycle_id)
            case Failed():
                return self._fail(event.cycle_id)
            case Deadline():
                models = [event.model] if event.model is not None else list(self._models)
                return [d for name in models if name in self._models for d in self._evaluate(name)]
            case Committed():
                return self._committed(event)
        raise TypeError(f"not a round event: {event!r}")

    def _enrol(self, event: Enrolled) -> list[Decision]:
        state = self._models.get(event.model)
        if state is None:
            self._cycles[event.cycle_id] = _Cycle(
                event.model, None, (FailureReason.MODEL_DELETED, f"model {event.model!r} no longer exists")
            )
            return []
        state.agents.add(event.agent_id)
        if event.base_version != state.version:
            self._cycles[event.cycle_id] = _Cycle(
                event.model, None, _stale(event.base_version, state.version)
            )
            return []
        if state.open is None:
            state.open = self._new_round(event.model, state)
        state.open.enrolled_at[event.cycle_id] = self._now
        self._cycles[event.cycle_id] = _Cycle(event.model, state.open)
        return self._evaluate(event.model)

    def _complete(self, cycle_id: str) -> list[Decision]:
        cycle = self._cycles.get(cycle_id)
        if cycle is None:
            return []
        if cycle.round is None:
            del self._cycles[cycle_id]
            reason, message = cycle.doom or (FailureReason.STALE_BASE, "its round is gone")
            return [Reject((cycle_id,), cycle.model, reason, message)]
        cycle.round.completed[cycle_id] = None
        if cycle.round.first_completed_at is None:
            cycle.round.first_completed_at = self._now
        return self._evaluate(cycle.model)

    def _fail(self, cycle_id: str) -> list[Decision]:
        cycle = self._cycles.pop(cycle_id, None)
        if cycle is None or cycle.round is None:
            return []
        if cycle_id in cycle.round.completed:  # a completed cycle does not fail later
            self._cycles[cycle_id] = cycle
            return []
        cycle.round.enrolled_at.pop(cycle_id, None)
        return self._evaluate(cycle.model)

    def _committed(self, event: Committed) -> list[Decision]:
        state = self._models.get(event.model)
        if state is None or state.closing is None or state.closing.round_id != event.round_id:
            return []
        for cycle_id in state.closing.completed:
            self._cycles.pop(cycle_id, None)  # members: resolved by this result
        state.closing = None
        if event.version is None:
            return self._evaluate(event.model)
        return self._rebase(event.model, event.version)

    def _rebase(self, model: str, version: int) -> list[Decision]:
        """A new current version: the open round's cycles computed against the old one are stale."""
        state = self._models.get(model)
        if state is None:
            return []
        old, state.version = state.version, version
        decisions = self._dissolve(model, state.open, _stale(old, version))
        state.open = None
        return decisions

    def _remove(self, model: str) -> list[Decision]:
        state = self._models.pop(model, None)
        if state is None:
            return []
        # The service refuses to delete a model while it aggregates: only the open round is left.
        return self._dissolve(
            model, state.open, (FailureReason.MODEL_DELETED, f"model {model!r} was deleted")
        )

    def _dissolve(self, model: str, r: _Round | None, doom: tuple[FailureReason, str]) -> list[Decision]:
        """Reject a round's completed cycles now, and doom its running ones."""
        if r is None:
            return []
        completed = tuple(c for c in r.completed if c in self._cycles)
        for cycle_id in completed:
            del self._cycles[cycle_id]
        for cycle_id in r.enrolled_at:
            if cycle_id in self._cycles:
                self._cycles[cycle_id] = _Cycle(model, None, doom)
        return [Reject(completed, model, *doom)] if completed else []

    # ---- the rule ----

    def _evaluate(self, model: str) -> list[Decision]:
        state = self._models[model]
        r = state.open
        if r is None or state.closing is not None:
            return []  # nothing to close, or the base it would close on is being replaced
        if r.empty:
            state.open = None
            return []
        policy, now = state.policy, self._now
        window_end = r.opened_at + policy.round_window_s
        deadline = r.opened_at + policy.round_deadline_s
        min_clients = policy.effective_min_clients(len(state.agents))
        done = len(r.completed)
        # The threshold's base: who was enrolled when the window closed, or when the first cycle
        # completed if that was later (with no window, everyone who joined before any finished).
        counted_until = max(window_end, r.first_completed_at if r.first_completed_at is not None else now)
        enrolled = sum(1 for at in r.enrolled_at.values() if at <= counted_until)
        needed = max(1, min_clients, math.ceil(policy.aggregation_threshold * enrolled - 1e-9))
        if now >= window_end and done >= needed:
            return self._close(model, state, ClosedBy.THRESHOLD, enrolled, needed, min_clients)
        if now >= deadline:
            if done >= min_clients:
                return self._close(model, state, ClosedBy.DEADLINE, enrolled, needed, min_clients)
            if policy.allow_partial and done >= 1:
                return self._close(model, state, ClosedBy.PARTIAL, enrolled, needed, min_clients)
            message = (
                f"the round's deadline ({policy.round_deadline_s:g} s) passed with {done} of the "
                f"{min_clients} clients its policy needs (minClients) and allowPartial false"
            )
            return self._expire(model, state, message)
        wake = window_end if now < window_end else deadline
        return [Wake(model, wake)]

    def _close(
        self, model: str, state: _Model, closed_by: ClosedBy, enrolled: int, needed: int, min_clients: int
    ) -> list[Decision]:
        r = state.open
        assert r is not None
        members = tuple(r.completed)
        state.closing = r
        self._carry_over(model, state, r)
        return [
            Close(r.round_id, model, r.base_version, members, enrolled, needed, min_clients, closed_by,
                  state.policy)
        ]  # fmt: skip

    def _expire(self, model: str, state: _Model, message: str) -> list[Decision]:
        """The round ends without a version: its completed cycles are rejected; those still
        running carry over (their base is still current) to a round of their own."""
        r = state.open
        assert r is not None
        completed = tuple(r.completed)
        for cycle_id in completed:
            del self._cycles[cycle_id]
            del r.enrolled_at[cycle_id]
        self._carry_over(model, state, r)
        return [Reject(completed, model, FailureReason.ROUND_EXPIRED, message)] if completed else []

    def _carry_over(self, model: str, state: _Model, r: _Round) -> None:
        """Cycles of `r` still running move to a new open round: same base, members nowhere yet."""
        late = [c for c in r.enrolled_at if c not in r.completed]
        for cycle_id in late:
            del r.enrolled_at[cycle_id]
        state.open = self._new_round(model, state) if late else None
        for cycle_id in late:
            state.open.enrolled_at[cycle_id] = self._now
            self._cycles[cycle_id].round = state.open

    def _new_round(self, model: str, state: _Model) -> _Round:
        state.rounds += 1
        return _Round(f"{model}#{state.version}.{state.rounds}", state.version, self._now)


def _stale(base: int, current: int) -> tuple[FailureReason, str]:
    return (
        FailureReason.STALE_BASE,
        f"base version {base} is older than the current version {current}; stale deltas are rejected",
    )
