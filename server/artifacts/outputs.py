"""What a learn cycle's program leaves in /out, read as untrusted input: `deltas.safetensors`
(exactly the base's names and shapes, float32, finite) and `metrics.json` (a small flat JSON
object of numbers with a positive integer numSamples). Anything else is a BadOutput, whose
message names the first bad tensor or field; a cycle failing with it is never retried."""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadRequest
from . import tensors as tensor_files

DELTAS_FILE = "deltas.safetensors"
METRICS_FILE = "metrics.json"
DELTAS_DTYPE = np.dtype(np.float32)
# Room for the header of the expected tensors (names, shapes, offsets, metadata) beyond the data.
HEADER_ALLOWANCE_BYTES = 64 * 1024
HEADER_BYTES_PER_TENSOR = 256
MAX_METRICS_BYTES = 64 * 1024
MAX_METRICS = 64
MAX_METRIC_NAME = 64


class BadOutput(BadRequest):
    """The program's output breaks the contract; `tensor` (or `field`) names the first culprit."""

    code = "bad_output"

    def __init__(self, message: str, *, tensor: str | None = None, field: str | None = None) -> None:
        details = {k: v for k, v in (("tensor", tensor), ("field", field)) if v is not None}
        super().__init__(message, details=details or None)
        self.tensor = tensor
        self.field = field


@dataclass(frozen=True)
class CycleOutput:
    deltas: dict[str, np.ndarray]  # in the base's order
    metrics: dict[str, int | float]

    @property
    def num_samples(self) -> int:
        return int(self.metrics["numSamples"])


def max_deltas_bytes(expected: Mapping[str, Sequence[int]]) -> int:
    """The size bound of a deltas file: its data is exactly the base's, plus a header's room."""
    data = sum(math.prod(shape) for shape in expected.values()) * DELTAS_DTYPE.itemsize
    return (
        tensor_files.LENGTH_PREFIX_BYTES
        + HEADER_ALLOWANCE_BYTES
        + HEADER_BYTES_PER_TENSOR * len(expected)
        + data
    )


def read_deltas(path: Path, expected: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """The deltas in `path`, checked against the base's `expected` {name: shape}: the same names
    and shapes, float32, every value finite, the file within max_deltas_bytes(expected)."""
    limit = max_deltas_bytes(expected)
    try:
        return tensor_files.read_tensors(
            Path(path),
            max_bytes=limit,
            expected=expected,
            dtype=DELTAS_DTYPE,
            finite=True,
            max_header_bytes=limit,
            # A few extras are named in the error; a flood is refused by count alone.
            max_tensors=len(expected) + 16,
        )
    except tensor_files.BadTensorFile as exc:
        raise BadOutput(f"{DELTAS_FILE}: {exc.message}", tensor=exc.tensor) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BadOutput(f"{METRICS_FILE} names {json.dumps(key)[:80]} twice", field=key)
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise BadOutput(f"{METRICS_FILE} holds {name}; metrics must be finite numbers")


def _read_small_file(path: Path, limit: int, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadOutput(f"{what} is missing") from None
    except OSError as exc:
        raise BadOutput(f"{what} cannot be opened ({exc.strerror}); it must be a regular file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadOutput(f"{what} is not a regular file")
        if info.st_size > limit:
            raise BadOutput(f"{what} is {info.st_size} bytes; at most {limit} are accepted")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise BadOutput(f"{what} is over {limit} bytes")
    return data


def parse_metrics(raw: bytes) -> dict[str, int | float]:
    """A flat JSON object of at most MAX_METRICS finite numbers, numSamples a positive integer;
    loss and accuracy, when given, numbers too (accuracy between 0 and 1)."""
    if len(raw) > MAX_METRICS_BYTES:
        raise BadOutput(f"{METRICS_FILE} is {len(raw)} bytes; at most {MAX_METRICS_BYTES} are accepted")
    try:
        document = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadOutput(f"{METRICS_FILE} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadOutput(f"{METRICS_FILE} must hold a JSON object, got {type(document).__name__}")
    if len(document) > MAX_METRICS:
        raise BadOutput(f"{METRICS_FILE} holds {len(document)} entries; at most {MAX_METRICS} are accepted")
    for name, value in document.items():
        if not name or len(name) > MAX_METRIC_NAME:
            raise BadOutput(
                f"{METRICS_FILE}: metric names must be 1 to {MAX_METRIC_NAME} characters", field=name
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise BadOutput(
                f"{METRICS_FILE}: {name} must be a finite number, got {json.dumps(value)[:40]}", field=name
            )
    samples = document.get("numSamples")
    if samples is None:
        raise BadOutput(
            f"{METRICS_FILE} must give numSamples, the number of examples trained on", field="numSamples"
        )
    if not isinstance(samples, int) or not 1 <= samples <= 2**53:
        raise BadOutput(
            f"{METRICS_FILE}: numSamples must be a positive integer, got {samples}", field="numSamples"
        )
    accuracy = document.get("accuracy")
    if accuracy is not None and not 0 <= accuracy <= 1:
        raise BadOutput(f"{METRICS_FILE}: accuracy must be between 0 and 1, got {accuracy}", field="accuracy")
    return document


def read_metrics(path: Path) -> dict[str, int | float]:
    return parse_metrics(_read_small_file(Path(path), MAX_METRICS_BYTES, METRICS_FILE))


def read_outputs(out_dir: Path, expected: Mapping[str, Sequence[int]]) -> CycleOutput:
    """Both files of a finished learn cycle's /out (its host-side directory), checked."""
    out_dir = Path(out_dir)
    metrics = read_metrics(out_dir / METRICS_FILE)
    deltas = read_deltas(out_dir / DELTAS_FILE, expected)
    return CycleOutput(deltas=deltas, metrics=metrics)
