"""Training telemetry over HTTP: query, a live Server-Sent Events stream, and admin ingestion."""

from __future__ import annotations

import json
import re

from aiohttp import web

from ..auth import agent_filter
from ..errors import BadRequest
from ..telemetry_events import TelemetryEvent, TelemetryFilter
from .openapi import Call, Param, Reply, RouteTable, json_reply
from .schemas import AGENT_ID, LIMIT, MAX_SEQ, SEQ, TIMESTAMP_MS, ref

ROUTES = RouteTable("telemetry", "Training telemetry (the seed's TrainingTelemetryEvent)")

KEEPALIVE_S = 15.0
REPLAY_PAGE_EVENTS = 1000
_DIGITS = re.compile(r"^[0-9]{1,16}$")

FILTERS = [
    Param("agentId", AGENT_ID, "Only this agent's events (an agent may name only itself)"),
    Param("event", ref("TelemetryEventKind"), "Only events of this kind"),
    Param("since", TIMESTAMP_MS, "Only events whose timestamp is at or after this (ms)"),
]


def _filters(call: Call) -> TelemetryFilter:
    q = call.query
    return TelemetryFilter(
        agent_id=agent_filter(call.caller, q.get("agentId")), event=q.get("event"), since_ms=q.get("since")
    )


@ROUTES.operation(
    "GET",
    "/v1/telemetry/training",
    summary="Training telemetry events, newest first",
    description="An agent sees only its own events. Includes events accepted but not yet written.",
    access="agent",
    query=[
        *FILTERS,
        Param("beforeSeq", SEQ, "Only events older than this seq (to page backwards)"),
        Param("limit", LIMIT, "At most this many events"),
    ],
    replies=[Reply(200, "Matching events", ref("TelemetryPage"))],
    errors=[403],
)
async def telemetry_events(call: Call) -> web.Response:
    events = await call.services.telemetry.query(
        _filters(call), limit=call.query["limit"], before_seq=call.query.get("beforeSeq")
    )
    return json_reply({"events": [e.to_json() for e in events], "count": len(events)})


@ROUTES.operation(
    "POST",
    "/v1/telemetry/training",
    summary="Record telemetry events (all or none)",
    description="202 means accepted: the events are readable at once and survive a clean shutdown.",
    access="admin",
    body=ref("TelemetryBatch"),
    replies=[Reply(202, "Accepted", ref("TelemetryAccepted"))],
    errors=[503],
)
async def record_telemetry(call: Call) -> web.Response:
    # The body was validated against TelemetryBatch, whose items are TelemetryEventInput.
    accepted = call.services.telemetry.emit_many(call.body["events"], validated=True)
    return json_reply({"accepted": len(accepted), "events": [e.to_json() for e in accepted]}, status=202)


def _sse(event: TelemetryEvent) -> bytes:
    return f"id: {event.seq}\ndata: {json.dumps(event.to_json(), separators=(',', ':'))}\n\n".encode()


@ROUTES.operation(
    "GET",
    "/v1/telemetry/training/stream",
    summary="Live telemetry as Server-Sent Events",
    description=(
        "Each event is `id: <seq>` and `data: <TelemetryEvent JSON>`. Send `Last-Event-ID` (or give "
        "`since`) to first replay stored events after that seq (or from that time). A reader too slow "
        "to keep up gets `event: overflow` and the stream ends; reconnect with Last-Event-ID. "
        f"A comment line is sent every {KEEPALIVE_S:g} s while idle."
    ),
    access="agent",
    query=FILTERS,
    replies=[Reply(200, "An endless event stream", {"type": "string"}, media_type="text/event-stream")],
    errors=[403, 503],
)
async def telemetry_stream(call: Call) -> web.StreamResponse:
    filters = _filters(call)
    raw_last = call.request.headers.get("Last-Event-ID")
    if raw_last is not None and not (_DIGITS.match(raw_last.strip()) and int(raw_last) <= MAX_SEQ):
        raise BadRequest(f"Last-Event-ID must be a telemetry seq (an integer >= 0), got {raw_last[:40]!r}")
    last_seq = int(raw_last) if raw_last is not None else None
    telemetry = call.services.telemetry
    # Subscribe before replaying so nothing emitted in between is missed; seqs remove repeats.
    subscription = telemetry.subscribe(filters)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(call.request)
        await response.write(b"retry: 3000\n\n")
        sent = last_seq or 0
        if last_seq is not None or filters.since_ms is not None:
            while True:
                page = await telemetry.query(
                    filters, limit=REPLAY_PAGE_EVENTS, after_seq=sent, oldest_first=True
                )
                for event in page:
                    await response.write(_sse(event))
                    sent = event.seq
                if len(page) < REPLAY_PAGE_EVENTS:
                    break
        while True:
            event = await subscription.next(KEEPALIVE_S)
            if subscription.overflowed:
                await response.write(f'event: overflow\ndata: {{"lastSeq": {sent}}}\n\n'.encode())
                break
            if event is None:
                if subscription.closed:
                    break
                await response.write(b": keepalive\n\n")
            elif event.seq > sent:
                await response.write(_sse(event))
                sent = event.seq
    except ConnectionResetError:
        pass  # the reader went away
    finally:
        telemetry.unsubscribe(subscription)
    return response
