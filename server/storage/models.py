"""The models and model_versions tables: versioned shared models as immutable, content-hashed
parameter files written atomically (temp file, fsync, rename, fsync of the directory), indexed
with their metadata. A model's name fixes its signature and round policy; the current version
can be rolled back by the admin."""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy

from rootfs import models

from ..artifacts import tensors as tensor_files
from ..errors import Conflict, NotFound
from ..store import Store


@dataclass(frozen=True)
class ModelInfo:
    name: str
    signature: models.Signature | None  # None for a model with its own program
    current_version: int
    holdout_path: str | None
    round_policy: dict | None = None  # camelCase, as set with the model
    created_by: str | None = None
    # A model with its own program (signature None): programSha256, entrypoint,
    # evaluateEntrypoint, hyperparameters, onnxSha256.
    program: dict | None = None


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    parent_version: int | None
    sha256: str
    path: str
    metadata: dict
    created_at: float


def unknown_model(name: str, known: list[str]) -> NotFound:
    """A 404 naming the closest existing model, if one is close."""
    if not known:
        return NotFound(
            f"no shared model named {name!r}; none exists yet (POST /v1/petals/models creates one)"
        )
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else f"; the models are {', '.join(known[:20])}"
    return NotFound(f"no shared model named {name!r}{hint}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # Readable by the sandbox user, to whom the base model is bound read-only.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def params_to_bytes(params: dict[str, np.ndarray]) -> bytes:
    """A version's file: .safetensors, float32, the model's tensor order in its metadata; the
    very file a learn cycle sees at /model/base.safetensors."""
    return tensor_files.encode_tensors(
        {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in params.items()}
    )


def params_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    header = tensor_files.parse_header(
        data, len(data), max_header_bytes=len(data), max_tensors=tensor_files.DEFAULT_MAX_TENSORS
    )
    decoded = safetensors.numpy.load(data)
    return {name: decoded[name] for name in header.order}


class ModelStore:
    """All blocking: call from a worker thread."""

    def __init__(self, store: Store, state_dir: Path) -> None:
        self._store = store
        self._root = Path(state_dir) / "models"

    def _dir(self, name: str) -> Path:
        # Hashed, so no model name can reach outside the models directory.
        return self._root / hashlib.sha256(name.encode()).hexdigest()[:24]

    def get(self, name: str) -> ModelInfo | None:
        rows = self._store.query("SELECT * FROM models WHERE model_name = ?", (name,))
        if not rows:
            return None
        row = rows[0]
        signature = json.loads(row["signature"])
        return ModelInfo(
            row["model_name"],
            models.Signature.from_dict(signature) if signature else None,
            row["current_version"],
            row["holdout_path"],
            json.loads(row["round_policy"]) if row["round_policy"] else None,
            row["created_by"],
            json.loads(row["program"]) if row["program"] else None,
        )

    def require(self, name: str) -> ModelInfo:
        info = self.get(name)
        if info is None:
            raise unknown_model(name, self.names())
        return info

    def names(self) -> list[str]:
        return [
            row["model_name"]
            for row in self._store.query("SELECT model_name FROM models ORDER BY model_name")
        ]

    def list_models(self) -> list[ModelInfo]:
        return [info for info in map(self.get, self.names()) if info is not None]

    def summaries(self) -> list[dict]:
        """Each model's name, current version and number of versions (for the admin's status)."""
        rows = self._store.query(
            "SELECT m.model_name, m.current_version, (SELECT COUNT(*) FROM model_versions v"
            " WHERE v.model_name = m.model_name) AS versions FROM models m ORDER BY m.model_name"
        )
        return [
            {"modelType": r["model_name"], "currentVersion": r["current_version"], "versions": r["versions"]}
            for r in rows
        ]

    def delete(self, name: str) -> None:
        """The model, its versions and their files go; the consensus history keeps its entries."""
        self.require(name)
        with self._store.transaction() as conn:
            conn.execute("DELETE FROM model_versions WHERE model_name = ?", (name,))
            conn.execute("DELETE FROM models WHERE model_name = ?", (name,))
        shutil.rmtree(self._dir(name), ignore_errors=True)

    def ensure(
        self,
        name: str,
        signature: models.Signature,
        round_policy: dict | None = None,
        created_by: str | None = None,
    ) -> tuple[ModelInfo, bool]:
        """The model, created at version 0 (deterministic parameters) if it is new.
        A different signature for an existing name is a Conflict naming what differs."""
        existing = self.get(name)
        if existing is not None:
            differences = existing.signature.differences(signature)
            if differences:
                raise Conflict(
                    f"model {name!r} already exists with another signature: " + "; ".join(differences),
                    details={"signature": existing.signature.as_dict()},
                )
            return existing, False
        params = models.initial_parameters(signature, name)
        try:
            self._create_at_version_zero(
                name, params, signature.as_dict(), None, round_policy, created_by, {}
            )
        except Exception:
            # Another request created it first: compare against the winner.
            if self.get(name) is None:
                raise
            return self.ensure(name, signature, round_policy, created_by)
        return self.get(name), True

    def _create_at_version_zero(
        self,
        name: str,
        params: dict[str, np.ndarray],
        signature: dict | None,
        program: dict | None,
        round_policy: dict | None,
        created_by: str | None,
        extra_metadata: dict,
    ) -> None:
        """Version 0's tensors written, then the model's row and version 0's in one transaction
        (raises what the insert raises when the name was taken meanwhile)."""
        data = params_to_bytes(params)
        digest = hashlib.sha256(data).hexdigest()
        path = self._dir(name) / f"v0-{digest[:16]}.safetensors"
        write_atomically(path, data)
        now = time.time()
        metadata = {"version": 0, "parentVersion": None, "aggregationMethod": None, "participants": [],
                    "timestamp": now, "sha256": digest, "metrics": {}, "signature": signature,
                    **extra_metadata, "roundPolicy": round_policy}  # fmt: skip
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO models(model_name, signature, current_version, created_at, updated_at,"
                " round_policy, created_by, program) VALUES(?, ?, 0, ?, ?, ?, ?, ?)",
                (name, json.dumps(signature), now, now, json.dumps(round_policy), created_by,
                 json.dumps(program) if program is not None else None),
            )  # fmt: skip
            conn.execute(
                "INSERT INTO model_versions(model_name, version, parent_version, sha256, path, metadata,"
                " created_at) VALUES(?, 0, NULL, ?, ?, ?, ?)",
                (name, digest, str(path), json.dumps(metadata), now),
            )

    def create_program_model(
        self,
        name: str,
        params: dict[str, np.ndarray],
        program: dict,
        round_policy: dict,
        created_by: str | None,
    ) -> ModelInfo:
        """A model with its own program at version 0 (the uploaded tensors); a Conflict if the
        name is taken. `program` is stored as is; each version's metadata names its sha256."""
        if self.get(name) is not None:
            raise Conflict(f"model {name!r} already exists")
        try:
            self._create_at_version_zero(
                name,
                params,
                None,
                program,
                round_policy,
                created_by,
                {"programSha256": program["programSha256"]},
            )
        except Exception:
            if self.get(name) is not None:
                raise Conflict(f"model {name!r} already exists") from None
            raise
        return self.get(name)

    def version(self, name: str, version: int | None = None) -> VersionInfo:
        info = self.require(name)
        number = info.current_version if version is None else version
        rows = self._store.query(
            "SELECT * FROM model_versions WHERE model_name = ? AND version = ?", (name, number)
        )
        if not rows:
            raise NotFound(f"model {name!r} has no version {number}")
        row = rows[0]
        return VersionInfo(
            name, row["version"], row["parent_version"], row["sha256"], row["path"],
            json.loads(row["metadata"]), row["created_at"],
        )  # fmt: skip

    def versions(self, name: str) -> list[VersionInfo]:
        self.require(name)
        rows = self._store.query(
            "SELECT version FROM model_versions WHERE model_name = ? ORDER BY version", (name,)
        )
        return [self.version(name, row["version"]) for row in rows]

    def load(self, info: VersionInfo) -> dict[str, np.ndarray]:
        data = Path(info.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise RuntimeError(
                f"model file {info.path} does not match its recorded sha256; refusing to use it"
            )
        return params_from_bytes(data)

    def commit(
        self, name: str, params: dict[str, np.ndarray], parent: int, metadata: dict, conn_hook=None
    ) -> int:
        """Write a new immutable version and make it current, atomically with `conn_hook(conn,
        version)` (which records the round's outcome in the same transaction)."""
        data = params_to_bytes(params)
        digest = hashlib.sha256(data).hexdigest()
        with self._store.transaction() as conn:
            version = conn.execute(
                "SELECT COALESCE(MAX(version), -1) + 1 FROM model_versions WHERE model_name = ?", (name,)
            ).fetchone()[0]
            path = self._dir(name) / f"v{version}-{digest[:16]}.safetensors"
            write_atomically(path, data)
            record = {**metadata, "version": version, "parentVersion": parent, "sha256": digest}
            program = conn.execute("SELECT program FROM models WHERE model_name = ?", (name,)).fetchone()
            if program is not None and program[0]:
                record["programSha256"] = json.loads(program[0])["programSha256"]
            now = time.time()
            conn.execute(
                "INSERT INTO model_versions(model_name, version, parent_version, sha256, path, metadata, created_at)"
                " VALUES(?, ?, ?, ?, ?, ?, ?)",
                (name, version, parent, digest, str(path), json.dumps(record), now),
            )
            conn.execute(
                "UPDATE models SET current_version = ?, updated_at = ? WHERE model_name = ?",
                (version, now, name),
            )
            if conn_hook is not None:
                conn_hook(conn, version)
        return version

    def rollback(self, name: str, version: int) -> VersionInfo:
        target = self.version(name, version)
        self._store.execute(
            "UPDATE models SET current_version = ?, updated_at = ? WHERE model_name = ?",
            (version, time.time(), name),
        )
        return target

    def set_holdout(self, name: str, x: np.ndarray, y: np.ndarray) -> str:
        self.require(name)
        buffer = io.BytesIO()
        np.savez(buffer, x=x.astype(np.float32), y=y.astype(np.float32))
        # In a folder of its own: a program model's evaluateEntrypoint sees it as its /data.
        path = self._dir(name) / "holdout" / "data.npz"
        write_atomically(path, buffer.getvalue())
        self._store.execute("UPDATE models SET holdout_path = ? WHERE model_name = ?", (str(path), name))
        return str(path)

    def holdout(self, info: ModelInfo) -> tuple[np.ndarray, np.ndarray] | None:
        if not info.holdout_path or not os.path.exists(info.holdout_path):
            return None
        with np.load(info.holdout_path, allow_pickle=False) as archive:
            return archive["x"], archive["y"]
