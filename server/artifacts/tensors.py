"""Named tensors as .safetensors files, read as untrusted input. The file's size and its header
(names, dtypes, shapes, data offsets) are checked before any tensor data is touched; data is
then decoded by the `safetensors` library (numpy API). Nothing here ever unpickles."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from ..errors import BadRequest

# safetensors dtype -> numpy dtype. BF16 and the F8 kinds have no numpy dtype: refused.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

LENGTH_PREFIX_BYTES = 8
DEFAULT_MAX_HEADER_BYTES = 4 << 20
DEFAULT_MAX_TENSORS = 10_000
MAX_NDIM = 32
# The metadata key holding the tensors' order (a JSON list of every name): a model's own order
# (a PyTorch state_dict's), which safetensors does not keep. Without it, names sort.
ORDER_KEY = "tensor_order"


class BadTensorFile(BadRequest):
    """A .safetensors file that is malformed, too big, or not the tensors expected. `tensor`
    names the first bad tensor when one is to blame."""

    code = "bad_tensor_file"

    def __init__(self, message: str, *, tensor: str | None = None) -> None:
        super().__init__(message, details={"tensor": tensor} if tensor is not None else None)
        self.tensor = tensor


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # offsets into the data section, as the header declares them
    end: int

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype.name}


@dataclass(frozen=True)
class Header:
    """A checked header: every tensor's slice lies in the file, and together they tile it."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int
    data_bytes: int

    @property
    def file_bytes(self) -> int:
        return LENGTH_PREFIX_BYTES + self.header_bytes + self.data_bytes

    @property
    def order(self) -> list[str]:
        """The tensors' names in the model's order: the metadata's `tensor_order`, else sorted."""
        if ORDER_KEY in self.metadata:
            return json.loads(self.metadata[ORDER_KEY])
        return sorted(self.tensors)


def _show(name: str) -> str:
    return json.dumps(name if len(name) <= 80 else name[:77] + "...")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BadTensorFile(f"header names {_show(key)} twice", tensor=key)
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise BadTensorFile(f"header holds {name}, which is not JSON")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(prefix: bytes, file_bytes: int, *, max_header_bytes: int, max_tensors: int) -> Header:
    """Checks the length prefix and the JSON header in `prefix` (the file's first bytes, at least
    8 + the declared header length) against the file's real size."""
    if file_bytes < LENGTH_PREFIX_BYTES or len(prefix) < LENGTH_PREFIX_BYTES:
        raise BadTensorFile(f"file is {file_bytes} bytes, too short for a safetensors header")
    (header_bytes,) = struct.unpack("<Q", prefix[:LENGTH_PREFIX_BYTES])
    if header_bytes > max_header_bytes:
        raise BadTensorFile(f"header declares {header_bytes} bytes; at most {max_header_bytes} are accepted")
    if LENGTH_PREFIX_BYTES + header_bytes > file_bytes:
        raise BadTensorFile(
            f"header declares {header_bytes} bytes but the file is only {file_bytes} (truncated)"
        )
    raw = prefix[LENGTH_PREFIX_BYTES : LENGTH_PREFIX_BYTES + header_bytes]
    if len(raw) < header_bytes:
        raise BadTensorFile("header is truncated")
    try:
        document = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadTensorFile(f"header is not a JSON object: {exc}") from None
    if not isinstance(document, dict):
        raise BadTensorFile(f"header must be a JSON object, got {type(document).__name__}")
    metadata = document.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadTensorFile("header __metadata__ must be an object of strings")
    if len(document) > max_tensors:
        raise BadTensorFile(f"file holds {len(document)} tensors; at most {max_tensors} are accepted")
    data_bytes = file_bytes - LENGTH_PREFIX_BYTES - header_bytes
    tensors = {name: _tensor_info(name, entry, data_bytes) for name, entry in document.items()}
    _check_tiling(tensors, data_bytes)
    if ORDER_KEY in metadata:
        _check_order(metadata[ORDER_KEY], tensors)
    return Header(tensors=tensors, metadata=metadata, header_bytes=header_bytes, data_bytes=data_bytes)


def _tensor_info(name: str, entry: Any, data_bytes: int) -> TensorInfo:
    if not name or len(name) > 1024:
        raise BadTensorFile(f"tensor name {_show(name)} must be 1 to 1024 characters", tensor=name)
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise BadTensorFile(
            f"tensor {_show(name)}: header entry must hold exactly dtype, shape and data_offsets", tensor=name
        )
    dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise BadTensorFile(
            f"tensor {_show(name)} has dtype {json.dumps(entry['dtype'])[:40]}; allowed: {', '.join(DTYPES)}",
            tensor=name,
        )
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
        raise BadTensorFile(
            f"tensor {_show(name)}: shape must be a list of at most {MAX_NDIM} non-negative integers",
            tensor=name,
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise BadTensorFile(f"tensor {_show(name)}: data_offsets must be [begin, end]", tensor=name)
    begin, end = offsets
    expected = math.prod(shape) * dtype.itemsize
    if not 0 <= begin <= end <= data_bytes:
        raise BadTensorFile(
            f"tensor {_show(name)}: data_offsets [{begin}, {end}] lie outside the file's "
            f"{data_bytes} data bytes",
            tensor=name,
        )
    if end - begin != expected:
        raise BadTensorFile(
            f"tensor {_show(name)}: data_offsets span {end - begin} bytes but shape {shape} of "
            f"{entry['dtype']} needs {expected}",
            tensor=name,
        )
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_tiling(tensors: Mapping[str, TensorInfo], data_bytes: int) -> None:
    """The slices follow each other with no gap and no overlap, and end where the file does."""
    position = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != position:
            raise BadTensorFile(
                f"tensor {_show(info.name)} starts at data offset {info.begin}, expected {position} "
                "(slices overlap or leave a gap)",
                tensor=info.name,
            )
        position = info.end
    if position != data_bytes:
        raise BadTensorFile(f"tensors cover {position} data bytes but the file holds {data_bytes}")


def _check_order(raw: str, tensors: Mapping[str, TensorInfo]) -> None:
    try:
        order = json.loads(raw)
    except json.JSONDecodeError:
        order = None
    if not isinstance(order, list) or sorted(order) != sorted(tensors) or len(set(order)) != len(order):
        raise BadTensorFile(f"metadata {ORDER_KEY} must be a JSON list naming every tensor once")


def _open_regular(path: Path, what: str) -> tuple[int, int]:
    """(fd, size) of a regular file; refuses links, FIFOs and devices without blocking on them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadTensorFile(f"{what} is missing") from None
    except OSError as exc:
        raise BadTensorFile(f"{what} cannot be opened ({exc.strerror}); it must be a regular file") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise BadTensorFile(f"{what} is not a regular file")
    return fd, info.st_size


def _read_exactly(fd: int, count: int) -> bytes:
    chunks, left = [], count
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def inspect_file(
    path: Path,
    *,
    max_bytes: int,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_tensors: int = DEFAULT_MAX_TENSORS,
) -> Header:
    """The checked header of a .safetensors file, reading none of its data."""
    fd, size = _open_regular(path, path.name)
    try:
        if size > max_bytes:
            raise BadTensorFile(f"{path.name} is {size} bytes; at most {max_bytes} are accepted")
        prefix = _read_exactly(fd, LENGTH_PREFIX_BYTES)
        if len(prefix) == LENGTH_PREFIX_BYTES:
            declared = struct.unpack("<Q", prefix)[0]
            if declared <= max_header_bytes:
                prefix += _read_exactly(fd, min(declared, size))
        return parse_header(prefix, size, max_header_bytes=max_header_bytes, max_tensors=max_tensors)
    finally:
        os.close(fd)


def check_signature(header: Header, expected: Mapping[str, Sequence[int]], dtype: np.dtype) -> None:
    """The file holds exactly the `expected` names with those shapes, all of `dtype`; the first
    tensor that differs (in the expected order, then extras by name) is named."""
    for name, shape in expected.items():
        info = header.tensors.get(name)
        if info is None:
            raise BadTensorFile(f"tensor {_show(name)} is missing", tensor=name)
        if info.shape != tuple(shape):
            raise BadTensorFile(
                f"tensor {_show(name)} has shape {list(info.shape)}, expected {list(shape)}", tensor=name
            )
        if info.dtype != dtype:
            raise BadTensorFile(
                f"tensor {_show(name)} is {info.dtype.name}, expected {np.dtype(dtype).name}", tensor=name
            )
    extra = sorted(set(header.tensors) - set(expected))
    if extra:
        raise BadTensorFile(
            f"tensor {_show(extra[0])} is not one of the model's tensors "
            f"({len(extra)} unexpected; expected only {', '.join(list(expected)[:8])}"
            f"{', ...' if len(expected) > 8 else ''})",
            tensor=extra[0],
        )


def read_tensors(
    path: Path,
    *,
    max_bytes: int,
    expected: Mapping[str, Sequence[int]] | None = None,
    dtype: np.dtype | type | None = None,
    finite: bool = False,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_tensors: int = DEFAULT_MAX_TENSORS,
) -> dict[str, np.ndarray]:
    """A .safetensors file's tensors, in the header's order (see Header.order). With `expected`
    the names and shapes must match exactly; with `dtype` every tensor must be of it; with
    `finite` every float value must be finite. All checks but `finite` run before decoding."""
    fd, size = _open_regular(path, path.name)
    try:
        if size > max_bytes:
            raise BadTensorFile(f"{path.name} is {size} bytes; at most {max_bytes} are accepted")
        # One read of the checked size: what is decoded is what was checked, even if the file
        # changes meanwhile.
        data = _read_exactly(fd, size)
    finally:
        os.close(fd)
    header = parse_header(data, len(data), max_header_bytes=max_header_bytes, max_tensors=max_tensors)
    if expected is not None:
        check_signature(header, expected, np.dtype(dtype or np.float32))
    elif dtype is not None:
        for name in header.order:
            if header.tensors[name].dtype != np.dtype(dtype):
                raise BadTensorFile(
                    f"tensor {_show(name)} is {header.tensors[name].dtype.name}, expected {np.dtype(dtype).name}",
                    tensor=name,
                )
    try:
        decoded = safetensors.numpy.load(data)
    except Exception as exc:  # the library's own refusal: the checks above should have caught it
        raise BadTensorFile(f"{path.name} is not a valid safetensors file: {exc}") from None
    tensors: dict[str, np.ndarray] = {}
    for name in expected or header.order:
        array = decoded[name]
        if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(np.flatnonzero(~np.isfinite(array.reshape(-1)))[0])
            raise BadTensorFile(
                f"tensor {_show(name)} holds a non-finite value ({array.reshape(-1)[bad]}) at flat index {bad}",
                tensor=name,
            )
        tensors[name] = array
    return tensors


def encode_tensors(
    tensors: Mapping[str, np.ndarray],
    *,
    order: Sequence[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """The .safetensors bytes of `tensors`; `order` (default: the mapping's) is kept in metadata."""
    names = list(order if order is not None else tensors)
    if sorted(names) != sorted(tensors):
        raise ValueError("order must name every tensor once")
    for name, array in tensors.items():
        if np.asarray(array).dtype not in DTYPE_NAMES:
            raise ValueError(
                f"tensor {name!r} has dtype {np.asarray(array).dtype}, which safetensors cannot hold"
            )
    arrays = {name: np.ascontiguousarray(tensors[name]) for name in names}
    return safetensors.numpy.save(arrays, metadata={**(metadata or {}), ORDER_KEY: json.dumps(names)})


def write_tensors(
    path: Path,
    tensors: Mapping[str, np.ndarray],
    *,
    order: Sequence[str] | None = None,
    metadata: Mapping[str, str] | None = None,
    mode: int = 0o644,
) -> str:
    """Writes `tensors` to `path` atomically (a temporary file, fsync, rename) and returns the
    file's sha256. Mode 0644 by default: sandboxes read model files through a read-only bind."""
    data = encode_tensors(tensors, order=order, metadata=metadata)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()
