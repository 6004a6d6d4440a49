"""Durable state in SQLite (WAL) with versioned migrations.

The file is checked before anything writes to it: a file that is not a SQLite
database, or fails its integrity check, stops start-up and is left untouched."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import StartupRefused

SQLITE_HEADER = b"SQLite format 3\x00"

# Each entry upgrades the schema by one version; entries are never edited once shipped.
MIGRATIONS: list[str] = [
    # 1: the tables every later feature hangs off.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE agents (
        agent_id     TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL,
        created_at   REAL NOT NULL,
        revoked_at   REAL
    );
    CREATE TABLE sandboxes (
        sandbox_id   TEXT PRIMARY KEY,
        agent_id     TEXT NOT NULL,
        status       TEXT NOT NULL,
        spec         TEXT NOT NULL,
        created_at   REAL NOT NULL,
        expires_at   REAL,
        destroyed_at REAL,
        usage        TEXT
    );
    CREATE INDEX sandboxes_by_agent ON sandboxes(agent_id);
    CREATE TABLE cycles (
        cycle_id       TEXT PRIMARY KEY,
        agent_id       TEXT NOT NULL,
        model_name     TEXT NOT NULL,
        status         TEXT NOT NULL,
        request        TEXT NOT NULL,
        base_version   INTEGER,
        result_version INTEGER,
        attempts       INTEGER NOT NULL DEFAULT 0,
        sandbox_id     TEXT,
        result         TEXT,
        error          TEXT,
        created_at     REAL NOT NULL,
        updated_at     REAL NOT NULL
    );
    CREATE INDEX cycles_by_agent ON cycles(agent_id);
    CREATE INDEX cycles_by_status ON cycles(status);
    CREATE TABLE telemetry (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        event     TEXT NOT NULL,
        cycle_id  TEXT,
        agent_id  TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        body      TEXT NOT NULL
    );
    CREATE INDEX telemetry_by_time ON telemetry(timestamp);
    CREATE TABLE model_versions (
        model_name     TEXT NOT NULL,
        version        INTEGER NOT NULL,
        parent_version INTEGER,
        sha256         TEXT NOT NULL,
        path           TEXT NOT NULL,
        metadata       TEXT NOT NULL,
        created_at     REAL NOT NULL,
        PRIMARY KEY (model_name, version)
    );
    CREATE TABLE consensus_log (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        kind       TEXT NOT NULL,
        model_name TEXT,
        body       TEXT NOT NULL,
        prev_hash  TEXT NOT NULL,
        entry_hash TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 2: audit entries may belong to one agent (who alone, besides the admin, may read them);
    # indexes for the history and telemetry filters.
    """
    ALTER TABLE consensus_log ADD COLUMN agent_id TEXT;
    CREATE INDEX consensus_log_by_model ON consensus_log(model_name, seq);
    CREATE INDEX telemetry_by_agent ON telemetry(agent_id, seq);
    CREATE INDEX telemetry_by_event ON telemetry(event, seq);
    """,
    # 3: shared models (a name fixes a signature; the current version can be rolled back) and
    # the lookups rounds and restarts make over cycles.
    """
    CREATE TABLE models (
        model_name      TEXT PRIMARY KEY,
        signature       TEXT NOT NULL,
        current_version INTEGER NOT NULL,
        holdout_path    TEXT,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL
    );
    CREATE INDEX cycles_by_model_base ON cycles(model_name, base_version, status);
    CREATE INDEX sandboxes_by_status ON sandboxes(status);
    """,
    # 4: datasets uploaded as files: one row per (agent, content); the file itself lives once
    # under STATE/datasets/<sha256>/, shared by every agent that uploaded the same bytes.
    """
    CREATE TABLE datasets (
        dataset_id TEXT PRIMARY KEY,
        agent_id   TEXT NOT NULL,
        name       TEXT NOT NULL,
        sha256     TEXT NOT NULL,
        format     TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        num_rows   INTEGER NOT NULL,
        arrays     TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (agent_id, sha256)
    );
    CREATE INDEX datasets_by_sha256 ON datasets(sha256);
    """,
    # 5: a model's round policy and who defined it; agents the admin lets define models.
    """
    ALTER TABLE models ADD COLUMN round_policy TEXT;
    ALTER TABLE models ADD COLUMN created_by TEXT;
    ALTER TABLE agents ADD COLUMN model_author INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: each agent's standing per model (how often its updates were screened out, the last
    # figures, a suspension), and the rounds a model's privacy budget has spent.
    """
    CREATE TABLE agent_standing (
        agent_id          TEXT NOT NULL,
        model_name        TEXT NOT NULL,
        updates           INTEGER NOT NULL DEFAULT 0,
        exclusions        INTEGER NOT NULL DEFAULT 0,
        consecutive       INTEGER NOT NULL DEFAULT 0,
        last_norm         REAL,
        last_median_norm  REAL,
        last_cosine       REAL,
        last_reason       TEXT,
        updated_at        REAL NOT NULL,
        suspended_at      REAL,
        PRIMARY KEY (agent_id, model_name)
    );
    ALTER TABLE models ADD COLUMN privacy_rounds INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: a model with its own program: its program, entrypoints, hyperparameters and ONNX graph
    # (JSON); NULL for the built-in families' models.
    """
    ALTER TABLE models ADD COLUMN program TEXT;
    """,
]


def _refuse_if_corrupt(path: Path) -> None:
    """Read-only checks: the header, then SQLite's own quick_check."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise StartupRefused(
            f"state database {path} is not a SQLite database; refusing to start (file left untouched)"
        )
    try:
        probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            verdict = probe.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            probe.close()
    except sqlite3.DatabaseError as exc:
        raise StartupRefused(
            f"state database {path} is corrupt ({exc}); refusing to start (file left untouched)"
        ) from None
    if verdict != "ok":
        raise StartupRefused(
            f"state database {path} is corrupt ({verdict}); refusing to start (file left untouched)"
        )


class Store:
    """One connection, serialised by a lock; callers off the event loop use a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _refuse_if_corrupt(path)
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.DatabaseError as exc:
            raise StartupRefused(f"state database {path} cannot be opened: {exc}") from None
        self._lock = threading.RLock()
        self._migrate()

    @property
    def schema_version(self) -> int:
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        with self._lock:
            current = self.schema_version
            if current > len(MIGRATIONS):
                raise StartupRefused(
                    f"state database {self.path} has schema version {current}, newer than this "
                    f"release knows ({len(MIGRATIONS)}); refusing to start"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                script = MIGRATIONS[version - 1]
                # executescript commits first; wrap the step and the version bump in one transaction.
                self._conn.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
                )

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._conn.execute(sql, tuple(params))

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Transaction:
    """`with store.transaction() as conn:` runs its statements atomically."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        self._store._lock.acquire()
        self._store._conn.execute("BEGIN IMMEDIATE")
        return self._store._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._store._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._store._lock.release()
