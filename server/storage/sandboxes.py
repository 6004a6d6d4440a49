"""Reads of the sandboxes table that are not the sandbox service's own (the admin's counts)."""

from __future__ import annotations

from ..store import Store


def count_by_status(store: Store) -> dict[str, int]:
    return {
        r["status"]: r["n"]
        for r in store.query("SELECT status, COUNT(*) AS n FROM sandboxes GROUP BY status")
    }
