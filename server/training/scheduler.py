"""Which cycle runs next and how often it is tried: a queue fair across agents, a fixed number
of slots (PETALS_MAX_CONCURRENT_CYCLES), and retries with jittered exponential backoff. A slot
is held for one cycle's attempts and nothing else; the final outcome is handed on and the slot
freed at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..vocabulary import FailureReason
from .runner import CycleOutcome, Verdict

log = logging.getLogger("wondercraft.training")

WAIT_POLL_S = 1.0  # the longest a cycle refused by a full host waits before it asks again


class FairQueue:
    """Round-robin across agents: each agent's jobs wait in its own line."""

    def __init__(self) -> None:
        self._lines: OrderedDict[str, deque[str]] = OrderedDict()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def put(self, agent_id: str, cycle_id: str) -> None:
        self._lines.setdefault(agent_id, deque()).append(cycle_id)
        self._ready.set()

    async def get(self) -> str:
        while not self._lines:
            self._ready.clear()
            await self._ready.wait()
        agent_id, line = next(iter(self._lines.items()))
        cycle_id = line.popleft()
        del self._lines[agent_id]
        if line:
            self._lines[agent_id] = line  # to the back: the next agent goes first
        return cycle_id


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    base_delay_s: float

    def delay_s(self, attempts: int) -> float:
        # Jitter: retries of one shared failure spread out instead of arriving together.
        return self.base_delay_s * (2 ** (attempts - 1)) * random.uniform(0.5, 1.5)


@dataclass
class CycleHooks:
    """What the scheduler tells the service; none of these may wait on a round."""

    attempt: Callable[[str], Awaitable[CycleOutcome]]  # one try (counts the attempt)
    attempts: Callable[[str], int]
    # Another try after a delay; with a WAIT outcome the cycle is queued again, its attempt uncounted.
    retrying: Callable[[str, float, CycleOutcome], Awaitable[None]]
    finished: Callable[[str, CycleOutcome], Awaitable[None]]
    interrupted: Callable[[str], Awaitable[None]]  # cancelled by a stop: back to queued


class Scheduler:
    def __init__(self, slots: int, retry: RetryPolicy, hooks: CycleHooks) -> None:
        self.queue = FairQueue()
        self.slots_total = slots
        self._slots = asyncio.Semaphore(slots)
        self._retry = retry
        self._hooks = hooks
        self._running: set[asyncio.Task] = set()
        self._dispatcher: asyncio.Task | None = None
        self._agents: dict[str, str] = {}  # cycle -> agent, for putting a waiting cycle back
        self._requeues: dict[str, asyncio.TimerHandle] = {}

    @property
    def slots_in_use(self) -> int:
        return len(self._running)

    def start(self) -> None:
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    def put(self, agent_id: str, cycle_id: str) -> None:
        self._agents[cycle_id] = agent_id
        self.queue.put(agent_id, cycle_id)

    def _put_back_later(self, cycle_id: str, delay_s: float) -> None:
        """A cycle the host's budget could not take now waits in the queue, holding no slot."""

        def put_back() -> None:
            self._requeues.pop(cycle_id, None)
            self.queue.put(self._agents[cycle_id], cycle_id)

        self._requeues[cycle_id] = asyncio.get_running_loop().call_later(delay_s, put_back)

    async def stop(self, grace_s: float) -> None:
        """No new cycle starts; running ones get `grace_s`, then are cancelled."""
        for timer in self._requeues.values():
            timer.cancel()  # those cycles are persisted as queued: the next start takes them
        self._requeues.clear()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        running = [t for t in self._running if not t.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _dispatch(self) -> None:
        while True:
            cycle_id = await self.queue.get()
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._run(cycle_id))
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _run(self, cycle_id: str) -> None:
        hooks = self._hooks
        try:
            while True:
                outcome = await hooks.attempt(cycle_id)
                if outcome.verdict == Verdict.WAIT:
                    # The hint is when a reservation expires at the latest; sandboxes usually end
                    # sooner, so a waiting cycle looks again within a second or two.
                    delay = min(WAIT_POLL_S, max(0.1, float(outcome.retry_after_s or WAIT_POLL_S)))
                    await hooks.retrying(cycle_id, delay, outcome)
                    self._put_back_later(cycle_id, delay)
                    return
                if outcome.verdict != Verdict.RETRY:
                    break
                attempts = hooks.attempts(cycle_id)
                if attempts >= self._retry.max_retries + 1:
                    message = (
                        f"the learn cycle failed {attempts} times; giving up (last: {outcome.message[:500]})"
                    )
                    outcome = CycleOutcome(
                        Verdict.FAILED, FailureReason.CRASHED, message, result=outcome.result
                    )
                    break
                delay = self._retry.delay_s(attempts)
                await hooks.retrying(cycle_id, delay, outcome)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            await asyncio.shield(hooks.interrupted(cycle_id))
            raise
        except Exception as exc:
            log.exception("learn cycle crashed the runner", extra={"cycle_id": cycle_id})
            outcome = CycleOutcome(Verdict.FAILED, FailureReason.INTERNAL, f"internal error: {exc}")
        self._agents.pop(cycle_id, None)
        await hooks.finished(cycle_id, outcome)
