"""Telemetry events as the service holds them, the filters readers give, and a live
subscription: a bounded queue that cuts off a reader too slow to keep up."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

SUBSCRIBER_QUEUE_EVENTS = 1000


@dataclass(frozen=True)
class TelemetryEvent:
    seq: int
    event: str
    agent_id: str
    timestamp_ms: int
    cycle_id: str | None = None
    deltas: dict | None = None
    metrics: dict | None = None
    error: str | None = None

    def body(self) -> dict[str, Any]:
        """The event as the API shows it, without seq (what the `body` column holds)."""
        out: dict[str, Any] = {"event": self.event, "agentId": self.agent_id, "timestamp": self.timestamp_ms}
        for key, value in (
            ("cycleId", self.cycle_id),
            ("deltas", self.deltas),
            ("metrics", self.metrics),
            ("error", self.error),
        ):
            if value is not None:
                out[key] = value
        return out

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, **self.body()}

    @classmethod
    def from_row(cls, seq: int, body_text: str) -> TelemetryEvent:
        body = json.loads(body_text)
        return cls(
            seq=seq,
            event=body["event"],
            agent_id=body["agentId"],
            timestamp_ms=body["timestamp"],
            cycle_id=body.get("cycleId"),
            deltas=body.get("deltas"),
            metrics=body.get("metrics"),
            error=body.get("error"),
        )


@dataclass(frozen=True)
class TelemetryFilter:
    agent_id: str | None = None
    event: str | None = None
    since_ms: int | None = None

    def matches(self, event: TelemetryEvent) -> bool:
        return (
            (self.agent_id is None or event.agent_id == self.agent_id)
            and (self.event is None or event.event == self.event)
            and (self.since_ms is None or event.timestamp_ms >= self.since_ms)
        )


class Subscription:
    """One live reader. A reader too slow to keep up is cut off (`overflowed`) rather than
    letting its queue grow; it can resume from the last seq it saw."""

    def __init__(self, filters: TelemetryFilter, max_queued: int = SUBSCRIBER_QUEUE_EVENTS) -> None:
        self.filters = filters
        self.overflowed = False
        self.closed = False
        self._queue: asyncio.Queue[TelemetryEvent | None] = asyncio.Queue(max_queued)

    def offer(self, event: TelemetryEvent) -> None:
        if self.closed or self.overflowed or not self.filters.matches(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def next(self, timeout_s: float) -> TelemetryEvent | None:
        """The next event, or None after `timeout_s` with nothing new (or once closed)."""
        if self.closed:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None
