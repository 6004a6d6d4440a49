"""Training telemetry (the seed's TrainingTelemetryEvent): accepted at once, buffered, written
to SQLite in batches from a worker thread, pruned after the retention period, readable while
still buffered, and fanned out live to stream subscribers. A clean stop writes everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ServiceUnavailable
from .http.schemas import COMPONENTS
from .metrics import Metrics
from .store import Store
from .telemetry_events import Subscription, TelemetryEvent, TelemetryFilter
from .validation import SchemaValidator, document_registry

log = logging.getLogger("wondercraft.telemetry")

DAY_MS = 86_400_000
# Accepted-but-unwritten events are capped: past this, emit refuses instead of dropping.
MAX_PENDING_EVENTS = 100_000
PRUNE_EVERY_S = 3600.0
FLUSH_RETRY_S = 1.0
SEQ_RESERVED_KEY = "telemetry_seq_reserved"
SEQ_RESERVE_BLOCK = 10000
_SCHEMA_URI = "urn:wondercraft:schemas"


@dataclass
class _Batches:
    pending: list[TelemetryEvent] = field(default_factory=list)
    # Taken for writing, not yet committed: still served to readers.
    inflight: list[TelemetryEvent] = field(default_factory=list)


class TelemetryService:
    """Call `emit()` from the event loop (or `emit_threadsafe()` from a worker thread)."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        batch_size: int,
        flush_interval_s: float,
        retention_days: int,
        max_pending: int = MAX_PENDING_EVENTS,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retention_days = retention_days
        self._max_pending = max_pending
        self._buffers = _Batches()
        self._subscribers: set[Subscription] = set()
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_prune = 0.0
        self._stopping = False
        self._closing = False
        components = {"components": {"schemas": COMPONENTS}}
        self._validator = SchemaValidator(
            {"$ref": f"{_SCHEMA_URI}#/components/schemas/TelemetryEventInput"},
            registry=document_registry(components, _SCHEMA_URI),
            document=components,
            document_uri=_SCHEMA_URI,
        )
        # Seqs are handed out here, not by SQLite, so a buffered event already has its id;
        # sqlite_sequence remembers the highest ever used, even after pruning.
        row = store.query("SELECT seq FROM sqlite_sequence WHERE name = 'telemetry'")
        top = store.query("SELECT MAX(seq) AS seq FROM telemetry")[0]["seq"] or 0
        # Seqs handed out but lost in a crash must not be handed out again (a reader resuming
        # with Last-Event-ID would skip the new events): blocks of seqs are reserved in
        # `meta` ahead of use, and a clean stop gives back what it did not use.
        reserved = int(store.get_meta(SEQ_RESERVED_KEY) or 0)
        self._next_seq = max(row[0]["seq"] if row else 0, top, reserved) + 1
        self._reserved = 0
        self._reserve(0)

    def _reserve(self, needed: int) -> None:
        """Reserve seqs up to `needed` beyond the next one, plus a block (one small write)."""
        self._reserved = self._next_seq + needed + SEQ_RESERVE_BLOCK - 1
        self._store.set_meta(SEQ_RESERVED_KEY, str(self._reserved))

    # ---- life cycle ----

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._prune()
        self._task = self._loop.create_task(self._run(), name="telemetry-flusher")

    def begin_shutdown(self) -> None:
        """Ends live streams so their requests can finish; emit() still accepts events."""
        self._stopping = True
        for subscription in list(self._subscribers):
            subscription.close()

    async def stop(self) -> None:
        """Writes everything accepted so far, then stops the background writer."""
        self.begin_shutdown()
        if self._task is not None:
            # Not cancelled: a batch being written in a thread must finish before the store closes.
            self._closing = True
            self._wake.set()
            await self._task
            self._task = None
        await self.flush()
        left = len(self._buffers.pending)
        if left:
            log.error("telemetry events not written at shutdown", extra={"events": left})
        else:
            # Everything is written: the next start continues right after the last seq.
            self._store.set_meta(SEQ_RESERVED_KEY, str(self._next_seq - 1))

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
            self._wake.clear()
            if await self.flush() is None:
                # The store refused the batch (disk full?): retry, but not in a tight loop.
                await asyncio.sleep(FLUSH_RETRY_S)
            if not self._closing and time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
                await self._prune()

    # ---- writing ----

    def emit(self, event: Mapping[str, Any]) -> TelemetryEvent:
        """Validates and accepts one event (the seed's TrainingTelemetryEvent; `timestamp` in ms
        defaults to now). Once this returns, a clean shutdown will not lose the event.
        Raises BadRequest for an invalid event, ServiceUnavailable when writes are far behind."""
        self._validator.check(dict(event), whole="event")
        return self._accept([event])[0]

    def emit_many(self, events: list[Mapping[str, Any]], *, validated: bool = False) -> list[TelemetryEvent]:
        """All or nothing: one invalid event rejects the batch. `validated=True` skips the
        check for events already validated against the TelemetryEventInput schema."""
        if not validated:
            for index, event in enumerate(events):
                self._validator.check(dict(event), prefix=f"events[{index}]", whole="event")
        return self._accept(events)

    def emit_threadsafe(self, event: Mapping[str, Any]) -> None:
        """From a worker thread: hands the event to the loop (validation errors are logged)."""
        if self._loop is None:
            raise RuntimeError("telemetry service is not started")

        def deliver() -> None:
            try:
                self.emit(event)
            except Exception:
                log.exception("telemetry event rejected", extra={"event": dict(event)})

        self._loop.call_soon_threadsafe(deliver)

    def _accept(self, events: list[Mapping[str, Any]]) -> list[TelemetryEvent]:
        waiting = len(self._buffers.pending) + len(self._buffers.inflight)
        if waiting + len(events) > self._max_pending:
            raise ServiceUnavailable(
                f"telemetry buffer is full ({waiting} events awaiting write, limit {self._max_pending}); "
                "retry later"
            )
        now_ms = int(time.time() * 1000)
        if self._next_seq + len(events) - 1 > self._reserved:
            self._reserve(len(events))
        accepted = []
        for event in events:
            record = TelemetryEvent(
                seq=self._next_seq,
                event=event["event"],
                agent_id=event["agentId"],
                timestamp_ms=int(event.get("timestamp", now_ms)),
                cycle_id=event.get("cycleId"),
                deltas=event.get("deltas"),
                metrics=event.get("metrics"),
                error=event.get("error"),
            )
            self._next_seq += 1
            self._buffers.pending.append(record)
            self._metrics.count_telemetry(record.event)
            for subscription in self._subscribers:
                subscription.offer(record)
            accepted.append(record)
        self._metrics.telemetry_pending.set(len(self._buffers.pending) + len(self._buffers.inflight))
        if len(self._buffers.pending) >= self._batch_size:
            self._wake.set()
        return accepted

    async def flush(self) -> int | None:
        """Writes every buffered event now; returns how many were written, None if a write failed."""
        written: int | None = 0
        async with self._flush_lock:
            while self._buffers.pending:
                batch = self._buffers.pending
                self._buffers.pending = []
                self._buffers.inflight = batch
                started = time.perf_counter()
                try:
                    await asyncio.to_thread(self._write, batch)
                except Exception:
                    # Keep the events, in order, ahead of newer ones; the next flush retries.
                    self._buffers.pending = batch + self._buffers.pending
                    self._buffers.inflight = []
                    self._metrics.telemetry_flush_failures.inc()
                    log.exception("telemetry batch write failed", extra={"events": len(batch)})
                    written = None
                    break
                self._buffers.inflight = []
                written += len(batch)
                self._metrics.telemetry_flush_duration.observe(time.perf_counter() - started)
                self._metrics.telemetry_written.inc(len(batch))
            self._metrics.telemetry_pending.set(len(self._buffers.pending))
        return written

    def _write(self, batch: list[TelemetryEvent]) -> None:
        rows = [
            (
                e.seq,
                e.event,
                e.cycle_id,
                e.agent_id,
                e.timestamp_ms,
                json.dumps(e.body(), separators=(",", ":")),
            )
            for e in batch
        ]
        with self._store.transaction() as conn:
            conn.executemany(
                "INSERT INTO telemetry(seq, event, cycle_id, agent_id, timestamp, body) VALUES(?, ?, ?, ?, ?, ?)",
                rows,
            )

    async def _prune(self) -> int:
        self._last_prune = time.monotonic()
        cutoff_ms = int(time.time() * 1000) - self._retention_days * DAY_MS
        try:
            removed = await asyncio.to_thread(self._delete_before, cutoff_ms)
        except Exception:
            log.exception("telemetry prune failed")
            return 0
        if removed:
            self._metrics.telemetry_pruned.inc(removed)
            log.info("telemetry pruned", extra={"events": removed, "retention_days": self._retention_days})
        return removed

    def _delete_before(self, cutoff_ms: int) -> int:
        with self._store.transaction() as conn:
            return conn.execute("DELETE FROM telemetry WHERE timestamp < ?", (cutoff_ms,)).rowcount

    # ---- reading ----

    async def query(
        self,
        filters: TelemetryFilter,
        *,
        limit: int = 100,
        before_seq: int | None = None,
        after_seq: int | None = None,
        oldest_first: bool = False,
    ) -> list[TelemetryEvent]:
        """Matching events, newest first (or oldest first, for replaying after a seq),
        including those not yet written."""
        # Snapshot the buffers before reading SQLite: an event committed meanwhile is then in
        # one or both, never in neither.
        buffered = [
            e
            for e in (*self._buffers.inflight, *self._buffers.pending)
            if filters.matches(e)
            and (before_seq is None or e.seq < before_seq)
            and (after_seq is None or e.seq > after_seq)
        ]
        stored = await asyncio.to_thread(self._select, filters, limit, before_seq, after_seq, oldest_first)
        merged = {e.seq: e for e in stored}
        merged.update((e.seq, e) for e in buffered)
        return [merged[seq] for seq in sorted(merged, reverse=not oldest_first)[:limit]]

    def _select(
        self,
        filters: TelemetryFilter,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
        oldest_first: bool,
    ) -> list[TelemetryEvent]:
        clauses, params = [], []
        for column, value in (
            ("agent_id = ?", filters.agent_id),
            ("event = ?", filters.event),
            ("timestamp >= ?", filters.since_ms),
            ("seq < ?", before_seq),
            ("seq > ?", after_seq),
        ):
            if value is not None:
                clauses.append(column)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ASC" if oldest_first else "DESC"
        rows = self._store.query(
            f"SELECT seq, body FROM telemetry {where} ORDER BY seq {order} LIMIT ?", (*params, limit)
        )
        return [TelemetryEvent.from_row(row["seq"], row["body"]) for row in rows]

    def subscribe(self, filters: TelemetryFilter) -> Subscription:
        if self._stopping:
            raise ServiceUnavailable("the service is shutting down")
        subscription = Subscription(filters)
        self._subscribers.add(subscription)
        self._metrics.telemetry_subscribers.set(len(self._subscribers))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.close()
        self._subscribers.discard(subscription)
        self._metrics.telemetry_subscribers.set(len(self._subscribers))
