"""Datasets as files: an agent's upload is streamed to a private temporary file (hashed and
counted on the way, never held whole in memory), checked whole off the event loop, then moved
to STATE/datasets/<sha256>/ where sandboxes read it through a read-only bind. The same bytes
from the same agent are one dataset; each agent has a quota. Nothing of a refused upload stays."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts.datasets import DatasetFile, inspect_dataset
from .audit import AuditLog
from .config import Settings
from .errors import Conflict, NotFound, PayloadTooLarge
from .store import Store

log = logging.getLogger("wondercraft.datasets")

# An .npz may be compressed: its arrays may unpack to this many times the upload cap.
NPZ_MAX_EXPANSION = 4
WRITE_BATCH_BYTES = 1 << 20
INCOMING = ".incoming"


def never_in_use(dataset_id: str) -> bool:
    return False


@dataclass(frozen=True)
class Dataset:
    dataset_id: str
    agent_id: str
    name: str
    sha256: str
    format: str
    size_bytes: int
    num_rows: int
    arrays: dict[str, dict[str, Any]]
    created_at: float

    @property
    def file_name(self) -> str:
        return f"data.{self.format}"

    def to_json(self) -> dict[str, Any]:
        return {
            "datasetId": self.dataset_id,
            "agentId": self.agent_id,
            "name": self.name,
            "sha256": self.sha256,
            "format": self.format,
            "sizeBytes": self.size_bytes,
            "numRows": self.num_rows,
            "arrays": self.arrays,
            "createdAt": round(self.created_at * 1000),
        }


def _row_dataset(row) -> Dataset:
    return Dataset(
        dataset_id=row["dataset_id"],
        agent_id=row["agent_id"],
        name=row["name"],
        sha256=row["sha256"],
        format=row["format"],
        size_bytes=row["size_bytes"],
        num_rows=row["num_rows"],
        arrays=json.loads(row["arrays"]),
        created_at=row["created_at"],
    )


class _Upload:
    """A temporary file being filled: hashed and sized as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._hash = hashlib.sha256()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)

    def finish(self) -> str:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        return self._hash.hexdigest()

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


class DatasetService:
    """Uploads, listing and deletion of datasets. `in_use(dataset_id)` tells whether a queued or
    running cycle uses a dataset (the training core provides it); deleting one in use is 409."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        state_dir: Path,
        *,
        audit: AuditLog | None = None,
        in_use: Callable[[str], bool] = never_in_use,
    ) -> None:
        self._settings = settings
        self._store = store
        self._audit = audit
        self.in_use = in_use
        self.root = Path(state_dir) / "datasets"
        self._incoming = self.root / INCOMING
        # Moves into place and deletions are serialised: a file shared by two agents is never
        # removed while another upload of the same bytes is being recorded.
        self._lock = asyncio.Lock()

    # ---- start-up ----

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        # Uploads a crash interrupted, and files no row refers to, are removed.
        shutil.rmtree(self._incoming, ignore_errors=True)
        self._incoming.mkdir(mode=0o700)
        known = {row["sha256"] for row in self._store.query("SELECT DISTINCT sha256 FROM datasets")}
        for entry in self.root.iterdir():
            if entry.name != INCOMING and entry.name not in known:
                log.warning("removing a dataset directory no dataset refers to", extra={"path": str(entry)})
                shutil.rmtree(entry, ignore_errors=True)

    # ---- reads ----

    def directory(self, dataset: Dataset) -> Path:
        """The directory to bind read-only at a sandbox's /data."""
        return self.root / dataset.sha256

    def list(self, agent_id: str | None) -> list[Dataset]:
        if agent_id is None:
            rows = self._store.query("SELECT * FROM datasets ORDER BY created_at, dataset_id")
        else:
            rows = self._store.query(
                "SELECT * FROM datasets WHERE agent_id = ? ORDER BY created_at, dataset_id", (agent_id,)
            )
        return [_row_dataset(row) for row in rows]

    def get(self, dataset_id: str, agent_id: str | None = None) -> Dataset:
        """The dataset; NotFound when missing or (with `agent_id`) another agent's."""
        rows = self._store.query("SELECT * FROM datasets WHERE dataset_id = ?", (dataset_id,))
        if not rows or (agent_id is not None and rows[0]["agent_id"] != agent_id):
            raise NotFound(f"dataset {dataset_id} not found")
        return _row_dataset(rows[0])

    def used_bytes(self, agent_id: str) -> int:
        rows = self._store.query(
            "SELECT COALESCE(SUM(size_bytes), 0) AS used FROM datasets WHERE agent_id = ?", (agent_id,)
        )
        return int(rows[0]["used"])

    # ---- upload ----

    def _check_size(self, size: int) -> None:
        cap = self._settings.dataset_max_bytes
        if size > cap:
            raise PayloadTooLarge(
                f"a dataset file may be at most {cap} bytes; this one is over it ({size} or more)"
            )

    def _check_quota(self, agent_id: str, size: int) -> None:
        quota, used = self._settings.dataset_quota_bytes, self.used_bytes(agent_id)
        if used + size > quota:
            raise PayloadTooLarge(
                f"agent {agent_id}'s datasets would take {used + size} bytes; its quota is {quota} "
                f"({used} used). Delete a dataset first"
            )

    async def upload(
        self, agent_id: str, name: str, chunks: AsyncIterator[bytes], declared_bytes: int | None = None
    ) -> tuple[Dataset, bool]:
        """Streams `chunks` to disk and stores them as `agent_id`'s dataset `name`. Returns the
        dataset and whether it is new (False: the agent had uploaded these bytes before)."""
        # The quota is checked once the content is known (the same bytes again take no room);
        # until then an upload is bounded by the size cap alone.
        if declared_bytes is not None:
            self._check_size(declared_bytes)
        upload = _Upload(self._incoming / f"{secrets.token_hex(12)}.part")
        try:
            pending = bytearray()
            async for chunk in chunks:
                pending += chunk
                self._check_size(upload.size + len(pending))
                if len(pending) >= WRITE_BATCH_BYTES:
                    await asyncio.to_thread(upload.write, bytes(pending))
                    pending.clear()
            if pending:
                await asyncio.to_thread(upload.write, bytes(pending))
            sha256 = await asyncio.to_thread(upload.finish)
            described = await asyncio.to_thread(
                inspect_dataset,
                upload.path,
                max_bytes=self._settings.dataset_max_bytes,
                max_unpacked_bytes=self._settings.dataset_max_bytes * NPZ_MAX_EXPANSION,
            )
            async with self._lock:
                return await asyncio.to_thread(self._record, agent_id, name, upload, sha256, described)
        finally:
            upload.discard()  # moved into place by _record, or refused: either way gone from here

    def _record(
        self, agent_id: str, name: str, upload: _Upload, sha256: str, described: DatasetFile
    ) -> tuple[Dataset, bool]:
        existing = self._store.query(
            "SELECT * FROM datasets WHERE agent_id = ? AND sha256 = ?", (agent_id, sha256)
        )
        if existing:
            return _row_dataset(existing[0]), False
        self._check_quota(agent_id, upload.size)
        dataset = Dataset(
            dataset_id=f"ds-{secrets.token_hex(6)}",
            agent_id=agent_id,
            name=name,
            sha256=sha256,
            format=described.format,
            size_bytes=upload.size,
            num_rows=described.num_rows,
            arrays=described.arrays,
            created_at=time.time(),
        )
        directory = self.root / sha256
        target = directory / dataset.file_name
        placed = False
        if not target.exists():
            directory.mkdir(mode=0o755, exist_ok=True)
            os.chmod(directory, 0o755)
            os.chmod(upload.path, 0o644)
            os.rename(upload.path, target)
            placed = True
        try:
            with self._store.transaction() as conn:
                conn.execute(
                    "INSERT INTO datasets(dataset_id, agent_id, name, sha256, format, size_bytes, num_rows, "
                    "arrays, created_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        dataset.dataset_id,
                        agent_id,
                        name,
                        sha256,
                        dataset.format,
                        dataset.size_bytes,
                        dataset.num_rows,
                        json.dumps(dataset.arrays),
                        dataset.created_at,
                    ),
                )
                if self._audit is not None:
                    self._audit.record(
                        conn,
                        "dataset.uploaded",
                        None,
                        {"datasetId": dataset.dataset_id, "sha256": sha256, "sizeBytes": dataset.size_bytes},
                        agent_id=agent_id,
                    )
        except BaseException:
            if placed:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        return dataset, True

    # ---- delete ----

    async def delete(self, dataset_id: str, agent_id: str | None = None) -> Dataset:
        """Deletes the dataset (and its file, once no other agent's dataset shares it)."""
        async with self._lock:
            dataset = await asyncio.to_thread(self.get, dataset_id, agent_id)
            if self.in_use(dataset_id):
                raise Conflict(
                    f"dataset {dataset_id} is used by a queued or running training cycle; delete it after"
                )
            await asyncio.to_thread(self._remove, dataset)
        return dataset

    def _remove(self, dataset: Dataset) -> None:
        with self._store.transaction() as conn:
            conn.execute("DELETE FROM datasets WHERE dataset_id = ?", (dataset.dataset_id,))
            shared = conn.execute(
                "SELECT 1 FROM datasets WHERE sha256 = ? LIMIT 1", (dataset.sha256,)
            ).fetchone()
            if self._audit is not None:
                self._audit.record(
                    conn,
                    "dataset.deleted",
                    None,
                    {"datasetId": dataset.dataset_id},
                    agent_id=dataset.agent_id,
                )
        if not shared:
            shutil.rmtree(self.root / dataset.sha256, ignore_errors=True)
