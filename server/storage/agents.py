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


# ---- standing: how each agent's updates fared in screening, per model ----

STANDING_COLUMNS = (
    "agent_id, model_name, updates, exclusions, consecutive, last_norm, last_median_norm, last_cosine, "
    "last_reason, updated_at, suspended_at"
)


def record_screening(
    conn: sqlite3.Connection, agent_id: str, model_name: str, excluded: bool, figures: dict, at: float
) -> sqlite3.Row:
    """One screened update of `agent_id` for `model_name`; returns the standing after it."""
    conn.execute(
        "INSERT INTO agent_standing(agent_id, model_name, updated_at) VALUES(?, ?, ?) "
        "ON CONFLICT(agent_id, model_name) DO NOTHING",
        (agent_id, model_name, at),
    )
    conn.execute(
        "UPDATE agent_standing SET updates = updates + 1, exclusions = exclusions + ?, "
        "consecutive = CASE WHEN ? THEN consecutive + 1 ELSE 0 END, last_norm = ?, "
        "last_median_norm = ?, last_cosine = ?, last_reason = ?, updated_at = ? "
        "WHERE agent_id = ? AND model_name = ?",
        (int(excluded), int(excluded), figures.get("norm"), figures.get("medianNorm"), figures.get("cosine"),
         figures.get("reason"), at, agent_id, model_name),
    )  # fmt: skip
    return conn.execute(
        f"SELECT {STANDING_COLUMNS} FROM agent_standing WHERE agent_id = ? AND model_name = ?",
        (agent_id, model_name),
    ).fetchone()


def suspend(conn: sqlite3.Connection, agent_id: str, model_name: str, at: float) -> None:
    conn.execute(
        "UPDATE agent_standing SET suspended_at = ? WHERE agent_id = ? AND model_name = ? "
        "AND suspended_at IS NULL",
        (at, agent_id, model_name),
    )


def reinstate(conn: sqlite3.Connection, agent_id: str, model_name: str | None, at: float) -> list[str]:
    """Lift the agent's suspensions (for one model, or all); returns the models reinstated."""
    where, params = "agent_id = ? AND suspended_at IS NOT NULL", [agent_id]
    if model_name is not None:
        where, params = where + " AND model_name = ?", [agent_id, model_name]
    models = [r[0] for r in conn.execute(f"SELECT model_name FROM agent_standing WHERE {where}", params)]
    conn.execute(f"UPDATE agent_standing SET suspended_at = NULL, consecutive = 0, updated_at = ? WHERE {where}",
                 [at, *params])  # fmt: skip
    return models


def suspended(store: Store, agent_id: str, model_name: str) -> sqlite3.Row | None:
    rows = store.query(
        f"SELECT {STANDING_COLUMNS} FROM agent_standing WHERE agent_id = ? AND model_name = ? "
        "AND suspended_at IS NOT NULL",
        (agent_id, model_name),
    )
    return rows[0] if rows else None


def standing_rows(store: Store) -> list[sqlite3.Row]:
    return store.query(f"SELECT {STANDING_COLUMNS} FROM agent_standing ORDER BY agent_id, model_name")


def standing_json(rows: list[sqlite3.Row]) -> dict:
    """An agent's standing over its models: totals, and each model's figures."""
    models = [
        {
            "modelType": r["model_name"],
            "updates": r["updates"],
            "exclusions": r["exclusions"],
            "consecutiveExclusions": r["consecutive"],
            "lastNorm": r["last_norm"],
            "lastMedianNorm": r["last_median_norm"],
            "lastCosine": r["last_cosine"],
            "lastReason": r["last_reason"],
            "suspended": r["suspended_at"] is not None,
        }
        for r in rows
    ]
    latest = max(rows, key=lambda r: r["updated_at"], default=None)
    return {
        "updates": sum(m["updates"] for m in models),
        "exclusions": sum(m["exclusions"] for m in models),
        "consecutiveExclusions": max((m["consecutiveExclusions"] for m in models), default=0),
        "lastNorm": None if latest is None else latest["last_norm"],
        "suspendedModels": [m["modelType"] for m in models if m["suspended"]],
        "models": models,
    }
