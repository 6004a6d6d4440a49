"""The consensus history (also at the seed's /v1/chat/history) and the admin's chain check."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..audit import HistoryQuery, pseudonymized
from .openapi import Call, Param, Reply, RouteTable, json_reply
from .paging import PAGE_QUERY, encode_cursor, page_answer, page_request
from .schemas import AUDIT_KIND_PATTERN, MODEL_NAME, SEQ, TIMESTAMP_MS, ref

ROUTES = RouteTable("consensus", "Consensus history and audit trail (append-only, hash-chained)")

HISTORY_QUERY = [
    Param("modelType", MODEL_NAME, "Only entries about this model"),
    Param("kind", {"type": "string", "pattern": AUDIT_KIND_PATTERN}, "Only entries of this kind"),
    Param("since", TIMESTAMP_MS, "Only entries created at or after this time (ms)"),
    Param("beforeSeq", SEQ, "Only entries older than this seq (to page backwards)"),
    *PAGE_QUERY,
]
HISTORY = {
    "description": "Newest first, paged by `cursor`. An agent sees its own entries and those about no "
    "agent in particular (rounds, votes, commits) of the models it trains or defined, with every other "
    "agent's id replaced by a stable pseudonym (`agent-` and 12 hex digits, a keyed hash of the id); "
    "the admin sees all of it as recorded.",
    "access": "agent",
    "query": HISTORY_QUERY,
    "replies": [Reply(200, "Matching entries", ref("AuditHistory"))],
}


@ROUTES.operation(
    "GET",
    "/v1/chat/history",
    summary="Consensus history (the seed's name for it)",
    operation_id="chat_history",
    **HISTORY,
)
@ROUTES.operation("GET", "/v1/consensus/history", summary="Consensus history and audit trail", **HISTORY)
async def consensus_history(call: Call) -> web.Response:
    caller, q = call.caller, call.query
    wanted = page_request(q, "history", (int,))
    before = [seq for seq in (q.get("beforeSeq"), wanted.after and wanted.after[0]) if seq is not None]
    entries = await call.services.audit.history(
        HistoryQuery(
            model_name=q.get("modelType"),
            kind=q.get("kind"),
            since_ms=q.get("since"),
            before_seq=min(before) if before else None,
            visible_to_agent=None if caller.is_admin else caller.agent_id,
            limit=wanted.limit + 1,  # one more than the page: whether another page follows
        )
    )
    shown = entries[: wanted.limit]
    more = len(entries) > wanted.limit
    next_cursor = encode_cursor("history", (shown[-1].seq,)) if more else None
    found = [e.to_json() for e in shown]
    if not caller.is_admin:
        secret = await asyncio.to_thread(call.services.audit.pseudonym_secret)
        found = [pseudonymized(e, caller.agent_id, secret) for e in found]
    return json_reply(page_answer("entries", found, next_cursor))


@ROUTES.operation(
    "GET",
    "/v1/audit/verify",
    summary="Check the whole hash chain",
    description="ok is false when an entry was edited, inserted or deleted; firstBadSeq names it.",
    access="admin",
    replies=[Reply(200, "The verdict", ref("AuditVerification"))],
)
async def verify_audit(call: Call) -> web.Response:
    result = await call.services.audit.verify()
    return json_reply(result.to_json())
