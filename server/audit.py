"""The consensus history and audit trail: an append-only, hash-chained log in SQLite.

Each entry's hash covers its content and the previous entry's hash, and the newest entry's
seq and hash are also kept in `meta`, so `verify()` finds an edited, inserted or deleted row."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest
from .store import Store

GENESIS_HASH = "0" * 64
HEAD_KEY = "audit_head"
PSEUDONYM_KEY = "pseudonym_key"  # meta: the secret agents' pseudonyms are keyed with
PSEUDONYM_HEX_CHARS = 12
# Fields of an entry (at any depth of its body) that name an agent.
AGENT_FIELDS = frozenset({"agentId", "createdBy"})
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
VERIFY_CHUNK_ROWS = 1000


def canonical_json(value: Any) -> str:
    """The one serialisation hashes are computed over: sorted keys, no spaces, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(
    seq: int,
    kind: str,
    model_name: str | None,
    agent_id: str | None,
    body: Any,
    created_at: float,
    prev_hash: str,
) -> str:
    content = canonical_json(
        {
            "seq": seq,
            "kind": kind,
            "modelName": model_name,
            "agentId": agent_id,
            "body": body,
            "createdAt": created_at,
            "prevHash": prev_hash,
        }
    )
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    kind: str
    model_name: str | None
    agent_id: str | None
    body: Any
    prev_hash: str
    entry_hash: str
    created_at: float

    def to_json(self) -> dict:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "modelName": self.model_name,
            "agentId": self.agent_id,
            "body": self.body,
            "createdAt": round(self.created_at * 1000),
            "prevHash": self.prev_hash,
            "entryHash": self.entry_hash,
        }


def pseudonym(secret: bytes, agent_id: str) -> str:
    """A stable stand-in for another agent's id: a keyed hash, truncated."""
    digest = hmac.new(secret, agent_id.encode(), hashlib.sha256).hexdigest()
    return f"agent-{digest[:PSEUDONYM_HEX_CHARS]}"


def pseudonymized(value: Any, viewer: str, secret: bytes) -> Any:
    """`value` (an entry as JSON) with every agent id other than `viewer`'s replaced by its
    pseudonym, at any depth."""
    if isinstance(value, dict):
        return {
            k: pseudonym(secret, v)
            if k in AGENT_FIELDS and isinstance(v, str) and v != viewer
            else pseudonymized(v, viewer, secret)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [pseudonymized(v, viewer, secret) for v in value]
    return value


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    head_seq: int | None
    head_hash: str
    first_bad_seq: int | None = None
    reason: str | None = None

    def to_json(self) -> dict:
        answer: dict[str, Any] = {
            "ok": self.ok,
            "entries": self.entries,
            "headSeq": self.head_seq,
            "headHash": self.head_hash,
        }
        if not self.ok:
            answer["firstBadSeq"] = self.first_bad_seq
            answer["reason"] = self.reason
        return answer


@dataclass(frozen=True)
class HistoryQuery:
    model_name: str | None = None
    kind: str | None = None
    since_ms: int | None = None
    before_seq: int | None = None
    # Some(agent): that agent's own entries, and the entries owned by nobody about a model it
    # trains (has a cycle of) or defined; None: everything (admin).
    visible_to_agent: str | None = None
    limit: int = 100


def _row_entry(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        seq=row["seq"],
        kind=row["kind"],
        model_name=row["model_name"],
        agent_id=row["agent_id"],
        body=json.loads(row["body"]),
        prev_hash=row["prev_hash"],
        entry_hash=row["entry_hash"],
        created_at=row["created_at"],
    )


class AuditLog:
    """Append and read the chain. `append` is for the event loop (it runs in a thread);
    `record` joins a transaction the caller already holds, so a state change and its audit entry
    commit together."""

    def __init__(self, store: Store, metrics: Any | None = None) -> None:
        self._store = store
        self._metrics = metrics

    # ---- writing ----

    def record(
        self,
        conn: sqlite3.Connection,
        kind: str,
        model_name: str | None,
        body: Mapping[str, Any],
        *,
        agent_id: str | None = None,
    ) -> AuditEntry:
        """Appends inside `with store.transaction() as conn:`; the entry commits with the caller's."""
        if not KIND_PATTERN.match(kind):
            raise BadRequest(f"audit kind must match {KIND_PATTERN.pattern}, got {kind!r}")
        if not isinstance(body, Mapping):
            raise BadRequest(f"audit body must be a JSON object, got {type(body).__name__}")
        try:
            body_text = canonical_json(body)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"audit body is not plain finite JSON: {exc}") from None
        body_value = json.loads(body_text)
        last = conn.execute("SELECT seq, entry_hash FROM consensus_log ORDER BY seq DESC LIMIT 1").fetchone()
        seq = (last[0] if last else 0) + 1
        prev = last[1] if last else GENESIS_HASH
        created_at = round(time.time(), 3)
        digest = entry_hash(seq, kind, model_name, agent_id, body_value, created_at, prev)
        conn.execute(
            "INSERT INTO consensus_log(seq, kind, model_name, agent_id, body, prev_hash, entry_hash, created_at)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, kind, model_name, agent_id, body_text, prev, digest, created_at),
        )
        conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (HEAD_KEY, f"{seq}:{digest}"),
        )
        if self._metrics is not None:
            self._metrics.audit_entries.labels(kind=kind).inc()
        return AuditEntry(seq, kind, model_name, agent_id, body_value, prev, digest, created_at)

    def append_blocking(
        self, kind: str, model_name: str | None, body: Mapping[str, Any], *, agent_id: str | None = None
    ) -> AuditEntry:
        """For code already off the event loop (worker threads)."""
        with self._store.transaction() as conn:
            return self.record(conn, kind, model_name, body, agent_id=agent_id)

    async def append(
        self, kind: str, model_name: str | None, body: Mapping[str, Any], *, agent_id: str | None = None
    ) -> AuditEntry:
        """Appends one entry (round opened, vote, commit, sandbox lifecycle...) without blocking
        the event loop. `agent_id` makes the entry visible to that agent; None: to every agent."""
        return await asyncio.to_thread(self.append_blocking, kind, model_name, body, agent_id=agent_id)

    # ---- reading ----

    def history_blocking(self, query: HistoryQuery) -> list[AuditEntry]:
        clauses, params = [], []
        if query.model_name is not None:
            clauses.append("model_name = ?")
            params.append(query.model_name)
        if query.kind is not None:
            clauses.append("kind = ?")
            params.append(query.kind)
        if query.since_ms is not None:
            clauses.append("created_at >= ?")
            params.append(query.since_ms / 1000.0)
        if query.before_seq is not None:
            clauses.append("seq < ?")
            params.append(query.before_seq)
        if query.visible_to_agent is not None:
            clauses.append(
                "(agent_id = ? OR (agent_id IS NULL AND model_name IN ("
                "SELECT model_name FROM cycles WHERE agent_id = ? "
                "UNION SELECT model_name FROM models WHERE created_by = ?)))"
            )
            params.extend([query.visible_to_agent] * 3)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._store.query(
            f"SELECT * FROM consensus_log {where} ORDER BY seq DESC LIMIT ?", (*params, query.limit)
        )
        return [_row_entry(row) for row in rows]

    async def history(self, query: HistoryQuery) -> list[AuditEntry]:
        """Newest first."""
        return await asyncio.to_thread(self.history_blocking, query)

    def pseudonym_secret(self) -> bytes:
        """The service's secret for agents' pseudonyms: made once, kept in the database, so a
        pseudonym is the same across requests and restarts and cannot be reversed without it."""
        value = self._store.get_meta(PSEUDONYM_KEY)
        if value is None:
            self._store.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES(?, ?)", (PSEUDONYM_KEY, secrets.token_hex(32))
            )
            value = self._store.get_meta(PSEUDONYM_KEY)
        return bytes.fromhex(value)

    # ---- verification ----

    def verify_blocking(self) -> VerifyResult:
        """Walks the whole chain; the first problem found is named by its seq."""
        head = self._store.get_meta(HEAD_KEY)
        head_seq, head_hash = (int(head.split(":")[0]), head.split(":")[1]) if head else (None, GENESIS_HASH)
        expected_seq, prev_hash, count = 1, GENESIS_HASH, 0

        def bad(seq: int, reason: str) -> VerifyResult:
            return VerifyResult(False, count, head_seq, head_hash, first_bad_seq=seq, reason=reason)

        last_seq = 0
        while True:
            rows = self._store.query(
                "SELECT * FROM consensus_log WHERE seq > ? ORDER BY seq LIMIT ?",
                (last_seq, VERIFY_CHUNK_ROWS),
            )
            if not rows:
                break
            for row in rows:
                seq = row["seq"]
                if seq != expected_seq:
                    return bad(
                        expected_seq,
                        f"entry {expected_seq} is missing (entry {seq} follows entry {expected_seq - 1})",
                    )
                if row["prev_hash"] != prev_hash:
                    return bad(seq, f"entry {seq} does not link to entry {seq - 1}: prev_hash differs")
                try:
                    body = json.loads(row["body"])
                except (TypeError, ValueError):
                    return bad(seq, f"entry {seq} body is not valid JSON: it was changed")
                if not isinstance(body, dict) or canonical_json(body) != row["body"]:
                    return bad(seq, f"entry {seq} body is not in canonical form: it was changed")
                digest = entry_hash(
                    seq, row["kind"], row["model_name"], row["agent_id"], body, row["created_at"], prev_hash
                )
                if digest != row["entry_hash"]:
                    return bad(seq, f"entry {seq} content does not match its hash: it was changed")
                prev_hash, expected_seq, count = digest, seq + 1, count + 1
                last_seq = seq
        # The head record catches rows removed from, or added to, the end of the chain.
        tail_seq = expected_seq - 1
        if head is None and tail_seq:
            return bad(tail_seq, f"the log has {tail_seq} entries but no recorded head")
        if head is not None and tail_seq < head_seq:
            return bad(
                tail_seq + 1, f"entry {tail_seq + 1} is missing: the recorded head is entry {head_seq}"
            )
        if head is not None and tail_seq > head_seq:
            return bad(
                head_seq + 1,
                f"entry {head_seq + 1} was added outside the log: the recorded head is entry {head_seq}",
            )
        if head is not None and prev_hash != head_hash:
            return bad(tail_seq, f"entry {tail_seq} hash differs from the recorded head")
        return VerifyResult(True, count, head_seq, head_hash)

    async def verify(self) -> VerifyResult:
        return await asyncio.to_thread(self.verify_blocking)
