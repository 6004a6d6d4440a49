"""The round book on its own: no root, no sandboxes, no event loop. Unit tests of each rule,
then a hypothesis state machine over any interleaving of enrolments, completions, failures,
time passing and commits, checking the invariants every round must keep."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from server.training.rounds import (
    Close,
    Committed,
    Completed,
    Deadline,
    Enrolled,
    Failed,
    ModelAdded,
    ModelRemoved,
    Reject,
    RoundBook,
    RoundPolicy,
    VersionChanged,
    Wake,
)
from server.vocabulary import ClosedBy, FailureReason


def book_with(policy: RoundPolicy, model: str = "mlp:m", version: int = 0) -> RoundBook:
    book = RoundBook()
    book.handle(ModelAdded(model, version, policy))
    return book


def closes(decisions) -> list[Close]:
    return [d for d in decisions if isinstance(d, Close)]


def test_sequential_jobs_of_three_agents_make_one_round_of_three_with_min_clients_3():
    book = book_with(RoundPolicy(min_clients=3, aggregation_threshold=0.67))
    decisions = []
    # Each job is enrolled and completes before the next is sent (300 ms apart).
    for index, agent in enumerate(["a", "b", "c"]):
        at = index * 0.3
        decisions += book.handle(Enrolled(f"c{index}", "mlp:m", 0, agent, at))
        decisions += book.handle(Completed(f"c{index}", at + 0.1))
    (close,) = closes(decisions)
    assert close.members == ("c0", "c1", "c2")
    assert close.closed_by == ClosedBy.THRESHOLD and close.min_clients == 3


def test_the_seed_threshold_alone_closed_each_sequential_job_by_itself():
    # minClients 1 is what made three one-participant versions before the policy existed.
    book = book_with(RoundPolicy(min_clients=1))
    first = book.handle(Enrolled("c0", "mlp:m", 0, "a", 0.0)) + book.handle(Completed("c0", 0.1))
    assert closes(first)[0].members == ("c0",)


def test_min_clients_defaults_to_two_once_a_second_agent_trains_the_model():
    book = book_with(RoundPolicy())
    assert not closes(book.handle(Enrolled("c0", "mlp:m", 0, "a", 0.0)))
    book.handle(Enrolled("c1", "mlp:m", 0, "b", 0.0))
    assert not closes(book.handle(Completed("c0", 1.0)))  # 1 of 2
    (close,) = closes(book.handle(Completed("c1", 1.5)))
    assert close.members == ("c0", "c1") and close.min_clients == 2


def test_the_window_keeps_the_round_open_and_fixes_the_thresholds_base():
    book = book_with(RoundPolicy(min_clients=1, round_window_s=5.0, aggregation_threshold=1.0))
    book.handle(Enrolled("c0", "mlp:m", 0, "a", 0.0))
    decisions = book.handle(Completed("c0", 1.0))
    assert not closes(decisions) and Wake("mlp:m", 5.0) in decisions
    book.handle(Enrolled("c1", "mlp:m", 0, "b", 2.0))
    # At the window's end both are enrolled: threshold 1.0 needs both.
    assert not closes(book.handle(Deadline("mlp:m", 5.0)))
    # A cycle enrolled after the window does not raise the bar.
    book.handle(Enrolled("c2", "mlp:m", 0, "c", 6.0))
    (close,) = closes(book.handle(Completed("c1", 7.0)))
    assert close.members == ("c0", "c1") and close.enrolled == 2


def test_threshold_counts_the_clients_enrolled_when_the_window_closed():
    book = book_with(RoundPolicy(min_clients=2, aggregation_threshold=0.75))
    for index in range(4):
        book.handle(Enrolled(f"c{index}", "mlp:m", 0, f"a{index}", 0.0))
    assert not closes(book.handle(Completed("c0", 1.0)))
    assert not closes(book.handle(Completed("c1", 1.0)))  # 2 of ceil(0.75 * 4) = 3
    (close,) = closes(book.handle(Completed("c2", 1.0)))
    assert close.needed == 3 and close.members == ("c0", "c1", "c2")


def test_a_failure_lowers_the_enrolled_count():
    book = book_with(RoundPolicy(min_clients=1, aggregation_threshold=1.0))
    book.handle(Enrolled("c0", "mlp:m", 0, "a", 0.0))
    book.handle(Enrolled("c1", "mlp:m", 0, "b", 0.0))
    assert not closes(book.handle(Completed("c0", 1.0)))
    (close,) = closes(book.handle(Failed("c1", 2.0)))
    assert close.members == ("c0",)


def test_below_min_clients_the_deadline_expires_the_round_unless_partial_is_allowed():
    strict = book_with(RoundPolicy(min_clients=3, round_deadline_s=10.0))
    strict.handle(Enrolled("c0", "mlp:m", 0, "a", 0.0))
    decisions = strict.handle(Completed("c0", 1.0))
    assert Wake("mlp:m", 10.0) in decisions
    (reject,) = strict.handle(Deadline("mlp:m", 10.0))
    assert isinstance(reject, Reject) and reject.reason == FailureReason.ROUND_EXPIRED
    assert "1 of the 3 clients" in reject.message
    assert strict.open_rounds() == []

    partial = book_with(RoundPolicy(min_clients=3, round_deadline_s=10.0, allow_partial=True))
    partial.handle(Enrolled("c0", "mlp:m", 0, "a", 0.0))
    partial.handle(Completed("c0", 1.0))
    (close,) = closes(partial.handle(Deadline("mlp:m", 10.0)))
    assert close.closed_by == ClosedBy.PARTIAL and close.members == ("c0",)


def test_an_expiring_round_carries_its_running_cycles_over_to_a_new_round():
    book = book_with(RoundPolicy(min_clients=2, round_deadline_s=10.0))
    book.handle(Enrolled("c0", "mlp:m", 0, "a", 0.0))
    book.handle(Enrolled("c1", "mlp:m", 0, "b", 0.0))
    book.handle(Completed("c0", 1.0))
    (reject,) = book.handle(Deadline("mlp:m", 10.0))
    assert reject.cycle_ids == ("c0",) and reject.reason == FailureReason.ROUND_EXPIRED
    ((_, round_id, deadline),) = book.open_rounds()
    assert deadline == 20.0  # c1's new round, opened at the expiry
    book.handle(Enrolled("c2", "mlp:m", 0, "c", 11.0))
    book.handle(Completed("c1", 12.0))
    (close,) = closes(book.handle(Completed("c2", 13.0)))
    assert close.round_id == round_id and close.members == ("c1", "c2")


def test_the_deadline_waives_the_threshold_but_not_min_clients():
    book = book_with(RoundPolicy(min_clients=2, aggregation_threshold=1.0, round_deadline_s=10.0))
    for index in range(4):
        book.handle(Enrolled(f"c{index}", "mlp:m", 0, f"a{index}", 0.0))
    book.handle(Completed("c0", 1.0))
    book.handle(Completed("c1", 1.0))
    (close,) = closes(book.handle(Deadline("mlp:m", 10.0)))
    assert close.closed_by == ClosedBy.DEADLINE and close.members == ("c0", "c1")


def test_a_cycle_completing_while_its_round_aggregates_goes_stale_and_the_model_goes_on():
    # The interleaving that used to wedge a model: a cycle of the same base completes while
    # the round is closing. It must be rejected as stale, and later rounds must still close.
    book = book_with(RoundPolicy(min_clients=2, aggregation_threshold=0.5))
    for index in range(3):
        book.handle(Enrolled(f"c{index}", "mlp:m", 0, f"a{index}", 0.0))
    book.handle(Completed("c0", 1.0))
    (close,) = closes(book.handle(Completed("c1", 1.0)))
    assert close.members == ("c0", "c1")
    assert book.handle(Completed("c2", 1.5)) == []  # waits: its base is being replaced
    (reject,) = book.handle(Committed("mlp:m", close.round_id, 1, 2.0))
    assert reject == Reject(("c2",), "mlp:m", FailureReason.STALE_BASE, reject.message)
    for index in range(3, 5):
        book.handle(Enrolled(f"c{index}", "mlp:m", 1, f"a{index}", 3.0))
    book.handle(Completed("c3", 4.0))
    (again,) = closes(book.handle(Completed("c4", 4.0)))
    assert again.base_version == 1 and again.members == ("c3", "c4")
    assert book.tracked() == 2


def test_running_cycles_of_a_closed_round_carry_over_when_it_is_rejected():
    book = book_with(RoundPolicy(min_clients=1, aggregation_threshold=0.5))
    book.handle(Enrolled("c0", "mlp:m", 0, "a", 0.0))
    book.handle(Enrolled("c1", "mlp:m", 0, "a", 0.0))
    (close,) = closes(book.handle(Completed("c0", 1.0)))
    assert book.handle(Completed("c1", 1.5)) == []
    (again,) = closes(book.handle(Committed("mlp:m", close.round_id, None, 2.0)))
    assert again.members == ("c1",) and again.base_version == 0


def test_a_job_enrolled_against_an_old_base_is_rejected_as_stale_when_it_completes():
    book = book_with(RoundPolicy(min_clients=1), version=3)
    assert book.handle(Enrolled("c0", "mlp:m", 2, "a", 0.0)) == []
    (reject,) = book.handle(Completed("c0", 1.0))
    assert reject.reason == FailureReason.STALE_BASE and "base version 2" in reject.message


def test_a_rollback_makes_the_open_round_stale():
    book = book_with(RoundPolicy(min_clients=2), version=2)
    book.handle(Enrolled("c0", "mlp:m", 2, "a", 0.0))
    book.handle(Enrolled("c1", "mlp:m", 2, "b", 0.0))
    book.handle(Completed("c0", 1.0))
    (reject,) = book.handle(VersionChanged("mlp:m", 1, 2.0))
    assert reject.cycle_ids == ("c0",) and reject.reason == FailureReason.STALE_BASE
    assert book.handle(Completed("c1", 3.0))[0].reason == FailureReason.STALE_BASE


def test_deleting_a_model_rejects_its_open_round():
    book = book_with(RoundPolicy(min_clients=2))
    book.handle(Enrolled("c0", "mlp:m", 0, "a", 0.0))
    book.handle(Completed("c0", 1.0))
    (reject,) = book.handle(ModelRemoved("mlp:m", 2.0))
    assert reject.reason == FailureReason.MODEL_DELETED
    assert book.handle(Enrolled("c1", "mlp:m", 0, "a", 3.0)) == []
    assert book.handle(Completed("c1", 4.0))[0].reason == FailureReason.MODEL_DELETED


def test_policies_out_of_bounds_name_the_field():
    import pytest

    for body, fragment in [
        ({"minClients": 0}, "minClients"),
        ({"aggregationThreshold": 1.5}, "aggregationThreshold"),
        ({"roundDeadlineSeconds": 10, "roundWindowSeconds": 20}, "roundWindowSeconds must be 0..round"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            RoundPolicy().updated(body)


# ---- any interleaving ----

MODELS = ("mlp:a", "linear:b")
AGENTS = ("x", "y", "z")
policies = st.builds(
    RoundPolicy,
    min_clients=st.one_of(st.none(), st.integers(1, 4)),
    round_window_s=st.sampled_from([0.0, 1.0, 3.0]),
    aggregation_threshold=st.sampled_from([0.0, 0.5, 0.67, 1.0]),
    round_deadline_s=st.sampled_from([5.0, 10.0]),
    allow_partial=st.booleans(),
)


class RoundMachine(RuleBasedStateMachine):
    """Drives the book as the service would and checks every decision it makes."""

    @initialize(first=policies, second=policies)
    def start(self, first, second):
        self.book = RoundBook()
        self.now = 0.0
        self.version = dict.fromkeys(MODELS, 0)
        self.policy = dict(zip(MODELS, (first, second), strict=True))
        for model in MODELS:
            self.book.handle(ModelAdded(model, 0, self.policy[model]))
        self.serial = 0
        self.model_of: dict[str, str] = {}
        self.agent_of: dict[str, str] = {}
        self.running: set[str] = set()
        self.completed: set[str] = set()
        self.outcome: dict[str, str] = {}  # completed cycle -> how it ended
        self.member_of: dict[str, str] = {}  # cycle -> round it was a member of
        self.closing: dict[str, Close] = {}  # model -> the round it aggregates
        self.agents: dict[str, set[str]] = {m: set() for m in MODELS}

    # ---- applying what the book says ----

    def apply(self, decisions) -> None:
        for decision in decisions:
            if isinstance(decision, Close):
                self.check_close(decision)
            elif isinstance(decision, Reject):
                for cycle_id in decision.cycle_ids:
                    assert cycle_id in self.completed, f"{cycle_id} rejected before it completed"
                    assert cycle_id not in self.outcome and cycle_id not in self.member_of
                    kind = "stale" if decision.reason == FailureReason.STALE_BASE else "rejected"
                    self.outcome[cycle_id] = kind
            else:
                assert isinstance(decision, Wake) and decision.at > self.now

    def check_close(self, close: Close) -> None:
        assert close.model not in self.closing, "two rounds of one model aggregate at once"
        assert close.base_version == self.version[close.model]
        policy = self.policy[close.model]
        minimum = policy.effective_min_clients(len(self.agents[close.model]))
        assert close.min_clients == minimum
        if close.closed_by == ClosedBy.PARTIAL:
            assert policy.allow_partial and len(close.members) >= 1
        else:
            assert len(close.members) >= minimum, "a round closed below minClients"
        if close.closed_by == ClosedBy.THRESHOLD:
            assert len(close.members) >= close.needed
        for cycle_id in close.members:
            assert cycle_id in self.completed and cycle_id not in self.outcome
            assert cycle_id not in self.member_of, f"{cycle_id} is in two rounds"
            assert self.model_of[cycle_id] == close.model
            self.member_of[cycle_id] = close.round_id
        self.closing[close.model] = close

    # ---- events ----

    @rule(model=st.sampled_from(MODELS), agent=st.sampled_from(AGENTS), behind=st.booleans())
    def enrol(self, model, agent, behind):
        self.serial += 1
        cycle_id = f"c{self.serial}"
        # Now and then a job fixed its base just before a commit: it is one version behind.
        base = max(0, self.version[model] - 1) if behind else self.version[model]
        self.model_of[cycle_id], self.agent_of[cycle_id] = model, agent
        self.agents[model].add(agent)
        self.running.add(cycle_id)
        self.apply(self.book.handle(Enrolled(cycle_id, model, base, agent, self.now)))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def complete(self, data):
        cycle_id = data.draw(st.sampled_from(sorted(self.running)))
        self.running.discard(cycle_id)
        self.completed.add(cycle_id)
        self.apply(self.book.handle(Completed(cycle_id, self.now)))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def fail(self, data):
        cycle_id = data.draw(st.sampled_from(sorted(self.running)))
        self.running.discard(cycle_id)
        self.apply(self.book.handle(Failed(cycle_id, self.now)))

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 6.0, 11.0]))
    def time_passes(self, seconds):
        self.now += seconds
        self.apply(self.book.handle(Deadline(None, self.now)))

    @precondition(lambda self: self.closing)
    @rule(data=st.data(), approved=st.booleans())
    def commit(self, data, approved):
        model = data.draw(st.sampled_from(sorted(self.closing)))
        self.commit_round(model, approved)

    def commit_round(self, model: str, approved: bool) -> None:
        close = self.closing.pop(model)
        version = self.version[model] + 1 if approved else None
        for cycle_id in close.members:
            self.outcome[cycle_id] = "aggregated" if approved else "rejected"
        if approved:
            self.version[model] = version
        self.apply(self.book.handle(Committed(model, close.round_id, version, self.now)))

    # ---- invariants ----

    @invariant()
    def no_round_stays_open_past_its_deadline(self):
        for model, _, deadline in self.book.open_rounds():
            if model not in self.closing:  # a round waits while its model aggregates
                assert deadline > self.now, f"a round of {model} is open past its deadline"

    @invariant()
    def the_book_agrees_on_what_aggregates(self):
        for model in MODELS:
            expected = self.closing[model].round_id if model in self.closing else None
            assert self.book.closing(model) == expected

    def teardown(self):
        if not hasattr(self, "book"):
            return
        # Drain: every cycle finishes, time runs past every deadline, every round commits.
        for _ in range(10):
            for cycle_id in sorted(self.running):
                self.running.discard(cycle_id)
                self.completed.add(cycle_id)
                self.apply(self.book.handle(Completed(cycle_id, self.now)))
            for model in sorted(self.closing):
                self.commit_round(model, True)
            self.now += 100.0
            self.apply(self.book.handle(Deadline(None, self.now)))
            if not self.closing and not self.running and not self.book.open_rounds():
                break
        assert not self.closing and not self.book.open_rounds()
        unresolved = self.completed - set(self.outcome)
        assert not unresolved, f"completed cycles never resolved: {sorted(unresolved)}"
        assert self.book.tracked() == 0


RoundMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_any_interleaving_keeps_the_round_invariants = RoundMachine.TestCase
