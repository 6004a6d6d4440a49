"""The agents table: each agent's id, the SHA-256 of its token, when it was registered and
revoked, and whether it may define models. Writes take the caller's transaction, so the audit
entry that goes with each lands atomically with it."""

from __future__ import annotations

import sqlite3

from ..store import Store


def all_rows(store: Store) -> list[sqlite3.Row]:
    return store.query("SELECT agent_id, token_sha256, created_at, revoked_at, model_author FROM agents")


def exists(conn: sqlite3.Connection, agent_id: str) -> bool:
    return conn.execute("SELECT 1 FROM agents WHERE agent_id = ?", (agent_id,)).fetchone() is not None


def insert(
    conn: sqlite3.Connection, agent_id: str, token_sha256: str, created_at: float, model_author: bool
) -> None:
    conn.execute(
        "INSERT INTO agents(agent_id, token_sha256, created_at, model_author) VALUES(?, ?, ?, ?)",
        (agent_id, token_sha256, created_at, int(model_author)),
    )


def set_model_author(conn: sqlite3.Connection, agent_id: str, model_author: bool) -> None:
    conn.execute("UPDATE agents SET model_author = ? WHERE agent_id = ?", (int(model_author), agent_id))


def mark_revoked(conn: sqlite3.Connection, agent_id: str, revoked_at: float) -> None:
    conn.execute(
        "UPDATE agents SET revoked_at = ? WHERE agent_id = ? AND revoked_at IS NULL", (revoked_at, agent_id)
    )
