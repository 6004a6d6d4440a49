"""The cycles table: one row per training cycle, its request, status, attempts, result and
error. The Cycle record is what the training service holds for a live cycle."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..store import Store
from ..vocabulary import ACTIVE_STATUSES, CycleStatus


@dataclass
class Cycle:
    cycle_id: str
    agent_id: str
    model_name: str
    status: CycleStatus
    request: dict
    base_version: int
    created_at: float
    attempts: int = 0
    sandbox_id: str | None = None
    result: dict | None = None
    error: dict | None = None
    result_version: int | None = None
    progress: dict = field(default_factory=dict)
    deltas: dict[str, np.ndarray] | None = None  # held until its round closes
    num_samples: int = 0
    node: str | None = None  # the Ray node of its latest attempt (executor `ray`), else None

    def as_json(self) -> dict:
        body: dict[str, Any] = {
            "cycleId": self.cycle_id,
            "agentId": self.agent_id,
            "modelType": self.model_name,
            "status": str(self.status),
            "attempts": self.attempts,
            "sandboxId": self.sandbox_id,
            "baseVersion": self.base_version,
            "resultVersion": self.result_version,
            "createdAt": int(self.created_at * 1000),
            "progress": {"epoch": 0, "epochs": int(self.request.get("epochs", 0)), "loss": None,
                         "accuracy": None, **self.progress},
        }  # fmt: skip
        if self.node is not None:
            body["node"] = self.node
        if self.result is not None:
            body["result"] = {k: v for k, v in self.result.items() if k != "logs"}
            if "logs" in self.result:
                body["logs"] = self.result["logs"]
        if self.error is not None:
            body["error"] = self.error
        return body


def _from_row(row) -> Cycle:
    cycle = Cycle(
        row["cycle_id"], row["agent_id"], row["model_name"], CycleStatus(row["status"]),
        json.loads(row["request"]), row["base_version"], row["created_at"], attempts=row["attempts"],
        sandbox_id=row["sandbox_id"], result=json.loads(row["result"]) if row["result"] else None,
        error=json.loads(row["error"]) if row["error"] else None, result_version=row["result_version"],
    )  # fmt: skip
    if cycle.result:
        cycle.node = cycle.result.get("node")
        metrics = cycle.result.get("metrics", {})
        cycle.progress = {
            "epoch": len(cycle.result.get("epochs", [])),
            "loss": metrics.get("loss"),
            "accuracy": metrics.get("accuracy"),
        }
    return cycle


def insert(store: Store, cycle: Cycle) -> None:
    store.execute(
        "INSERT INTO cycles(cycle_id, agent_id, model_name, status, request, base_version, attempts,"
        " created_at, updated_at) VALUES(?, ?, ?, ?, ?, ?, 0, ?, ?)",
        (cycle.cycle_id, cycle.agent_id, cycle.model_name, str(cycle.status), json.dumps(cycle.request),
         cycle.base_version, cycle.created_at, time.time()),
    )  # fmt: skip


def update(store: Store, cycle: Cycle, conn=None) -> None:
    """Write a cycle's state; inside `conn`'s transaction when given."""
    execute = conn.execute if conn is not None else store.execute
    execute(
        "UPDATE cycles SET status = ?, attempts = ?, sandbox_id = ?, result = ?, error = ?,"
        " result_version = ?, base_version = ?, updated_at = ? WHERE cycle_id = ?",
        (
            str(cycle.status), cycle.attempts, cycle.sandbox_id,
            json.dumps(cycle.result) if cycle.result is not None else None,
            json.dumps(cycle.error) if cycle.error is not None else None,
            cycle.result_version, cycle.base_version, time.time(), cycle.cycle_id,
        ),
    )  # fmt: skip


def get(store: Store, cycle_id: str) -> Cycle | None:
    rows = store.query("SELECT * FROM cycles WHERE cycle_id = ?", (cycle_id,))
    return _from_row(rows[0]) if rows else None


def owner(store: Store, cycle_id: str) -> str | None:
    rows = store.query("SELECT agent_id FROM cycles WHERE cycle_id = ?", (cycle_id,))
    return rows[0]["agent_id"] if rows else None


def unfinished(store: Store) -> list[Cycle]:
    """Cycles a previous run left queued, running or completed without a round, oldest first."""
    statuses = (*ACTIVE_STATUSES, CycleStatus.COMPLETED)
    marks = ", ".join("?" for _ in statuses)
    rows = store.query(
        f"SELECT * FROM cycles WHERE status IN ({marks}) ORDER BY created_at", tuple(map(str, statuses))
    )
    return [
        c
        for c in map(_from_row, rows)
        if not (c.status == CycleStatus.COMPLETED and "round" in (c.result or {}))
    ]


def agents_by_model(store: Store) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in store.query("SELECT DISTINCT model_name, agent_id FROM cycles"):
        found.setdefault(row["model_name"], set()).add(row["agent_id"])
    return found


def count_by_status(store: Store) -> dict[str, int]:
    return {
        r["status"]: r["n"] for r in store.query("SELECT status, COUNT(*) AS n FROM cycles GROUP BY status")
    }


def list_keys(
    store: Store, *, agent_id: str | None, status: str | None, model: str | None
) -> list[tuple[float, str]]:
    """(created_at, cycle_id) of every matching cycle: what a page of the list is cut from."""
    sql, params = "SELECT created_at, cycle_id FROM cycles WHERE 1 = 1", []
    for clause, value in (("agent_id = ?", agent_id), ("status = ?", status), ("model_name = ?", model)):
        if value is not None:
            sql += f" AND {clause}"
            params.append(value)
    return [(float(row["created_at"]), row["cycle_id"]) for row in store.query(sql, params)]


def count_active(store: Store, model: str) -> int:
    marks = ", ".join("?" for _ in ACTIVE_STATUSES)
    rows = store.query(
        f"SELECT COUNT(*) AS n FROM cycles WHERE model_name = ? AND status IN ({marks})",
        (model, *map(str, ACTIVE_STATUSES)),
    )
    return rows[0]["n"]
