"""The consensus history (also at the seed's /v1/chat/history) and the admin's chain check."""

from __future__ import annotations

from aiohttp import web

from ..audit import HistoryQuery
from .openapi import Call, Param, Reply, RouteTable, json_reply
from .schemas import AUDIT_KIND_PATTERN, LIMIT, MODEL_NAME, SEQ, TIMESTAMP_MS, ref

ROUTES = RouteTable("consensus", "Consensus history and audit trail (append-only, hash-chained)")

HISTORY_QUERY = [
    Param("modelType", MODEL_NAME, "Only entries about this model"),
    Param("kind", {"type": "string", "pattern": AUDIT_KIND_PATTERN}, "Only entries of this kind"),
    Param("since", TIMESTAMP_MS, "Only entries created at or after this time (ms)"),
    Param("beforeSeq", SEQ, "Only entries older than this seq (to page backwards)"),
    Param("limit", LIMIT, "At most this many entries"),
]
HISTORY = {
    "description": "Newest first. An agent sees entries about no agent in particular (rounds, votes, "
    "commits) and its own; the admin sees all.",
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
    entries = await call.services.audit.history(
        HistoryQuery(
            model_name=q.get("modelType"),
            kind=q.get("kind"),
            since_ms=q.get("since"),
            before_seq=q.get("beforeSeq"),
            visible_to_agent=None if caller.is_admin else caller.agent_id,
            limit=q["limit"],
        )
    )
    return json_reply({"entries": [e.to_json() for e in entries], "count": len(entries)})


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
