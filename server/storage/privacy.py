"""Rounds a model's privacy budget has spent (models.privacy_rounds): every aggregation of a
model with differential privacy counts, committed or refused, since the validators saw it."""

from __future__ import annotations

from ..store import Store


def rounds_spent(store: Store, model_name: str) -> int:
    rows = store.query("SELECT privacy_rounds FROM models WHERE model_name = ?", (model_name,))
    return int(rows[0][0]) if rows else 0


def spend_round(store: Store, model_name: str) -> int:
    """One more round spent; returns the rounds spent now."""
    with store.transaction() as conn:
        conn.execute(
            "UPDATE models SET privacy_rounds = privacy_rounds + 1 WHERE model_name = ?", (model_name,)
        )
        row = conn.execute("SELECT privacy_rounds FROM models WHERE model_name = ?", (model_name,)).fetchone()
    return int(row[0]) if row else 0
