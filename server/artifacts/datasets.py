"""An uploaded dataset file checked without trusting it: an .npz (a zip of .npy arrays, read
as np.load(allow_pickle=False) would, but member by member in bounded memory, every byte
and CRC checked) or a .safetensors file (header and offsets checked). Every array numeric,
at least one dimension, all with the same first dimension (the examples)."""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadRequest
from . import tensors as tensor_files

FORMATS = ("npz", "safetensors")
MAX_ARRAYS = 256
MAX_NPY_HEADER_BYTES = 10_000  # numpy's own default bound
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_CHUNK = 1 << 20
# bool, signed and unsigned integers, floats: what a learn program trains on. Object arrays
# (pickles) are refused, as np.load(allow_pickle=False) would; strings and structs are too.
_NUMERIC_KINDS = "biuf"


class BadDataset(BadRequest):
    """A dataset file that is corrupt, truncated, holds a pickle, or whose arrays disagree."""

    code = "bad_dataset"

    def __init__(self, message: str, *, array: str | None = None) -> None:
        super().__init__(message, details={"array": array} if array is not None else None)
        self.array = array


@dataclass(frozen=True)
class DatasetFile:
    format: str  # "npz" or "safetensors"
    arrays: dict[str, dict[str, Any]]  # name -> {"shape": [...], "dtype": "float32"}
    num_rows: int  # the arrays' common first dimension


def _show(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:77] + "...")


def _check_array(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if dtype.hasobject:
        raise BadDataset(
            f"array {_show(name)} holds Python objects (a pickle); only numeric arrays are accepted",
            array=name,
        )
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise BadDataset(
            f"array {_show(name)} has dtype {dtype.str}; only bool, integer and float arrays are accepted",
            array=name,
        )
    if not shape:
        raise BadDataset(
            f"array {_show(name)} is a scalar; arrays need a first dimension (the examples)", array=name
        )


def _read_npy_header(source, name: str) -> tuple[np.dtype, tuple[int, ...]]:
    try:
        version = np.lib.format.read_magic(source)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                source, max_header_size=MAX_NPY_HEADER_BYTES
            )
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                source, max_header_size=MAX_NPY_HEADER_BYTES
            )
        else:
            raise BadDataset(
                f"array {_show(name)} is .npy format {version}; 1.0 and 2.0 are accepted", array=name
            )
    except BadDataset:
        raise
    except (ValueError, EOFError, SyntaxError) as exc:  # corrupt zip data: the caller's to report
        # An object dtype's header is refused here by numpy too ("dtype with objects").
        message = str(exc)
        if "object" in message.lower() or "pickle" in message.lower():
            raise BadDataset(
                f"array {_show(name)} holds Python objects (a pickle); only numeric arrays are accepted",
                array=name,
            ) from None
        raise BadDataset(
            f"array {_show(name)} has no valid .npy header: {message[:200]}", array=name
        ) from None
    return dtype, tuple(int(d) for d in shape)


def _inspect_npz(path: Path, max_unpacked_bytes: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise BadDataset(f"not a readable .npz (zip) file: {exc}") from None
    found: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ARRAYS:
            raise BadDataset(f"the .npz holds {len(entries)} members; at most {MAX_ARRAYS} are accepted")
        declared = sum(info.file_size for info in entries)
        if declared > max_unpacked_bytes:
            raise BadDataset(
                f"the .npz declares {declared} unpacked bytes; at most {max_unpacked_bytes} are accepted"
            )
        for info in entries:
            if not info.filename.endswith(".npy") or "/" in info.filename or info.is_dir():
                raise BadDataset(
                    f"member {_show(info.filename)} is not an array: an .npz holds only NAME.npy members",
                    array=info.filename,
                )
            name = info.filename[: -len(".npy")]
            if not name or name in found:
                raise BadDataset(f"array {_show(name)} is unnamed or appears twice", array=name)
            if info.flag_bits & 0x1:
                raise BadDataset(f"array {_show(name)} is encrypted", array=name)
            found[name] = _inspect_npy_member(archive, info, name)
    return found


def _inspect_npy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str):
    try:
        with archive.open(info) as source:
            dtype, shape = _read_npy_header(source, name)
            _check_array(name, dtype, shape)
            expected = math.prod(shape) * dtype.itemsize
            # Read every byte: zipfile checks the CRC at the end, so corruption anywhere is found.
            data_bytes = 0
            while chunk := source.read(_CHUNK):
                data_bytes += len(chunk)
                if data_bytes > expected:
                    break
    except BadDataset:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as exc:
        raise BadDataset(f"array {_show(name)} is corrupt or truncated: {exc}", array=name) from None
    if data_bytes != expected:
        raise BadDataset(
            f"array {_show(name)} holds {data_bytes} data bytes but shape {list(shape)} of {dtype.name} needs {expected}",
            array=name,
        )
    return dtype, shape


def _inspect_safetensors(path: Path, max_bytes: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    try:
        header = tensor_files.inspect_file(path, max_bytes=max_bytes, max_tensors=MAX_ARRAYS)
    except tensor_files.BadTensorFile as exc:
        raise BadDataset(
            f"neither an .npz nor a valid .safetensors file: {exc.message}", array=exc.tensor
        ) from None
    return {name: (header.tensors[name].dtype, header.tensors[name].shape) for name in header.order}


def inspect_dataset(path: Path, *, max_bytes: int, max_unpacked_bytes: int) -> DatasetFile:
    """Checks the dataset file at `path` whole and describes its arrays, or raises BadDataset."""
    path = Path(path)
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic in _ZIP_MAGICS:
        kind, found = "npz", _inspect_npz(path, max_unpacked_bytes)
    else:
        kind, found = "safetensors", _inspect_safetensors(path, max_bytes)
    if not found:
        raise BadDataset("the file holds no arrays")
    for name, (dtype, shape) in found.items():
        _check_array(name, dtype, shape)
    rows = {name: shape[0] for name, (_, shape) in found.items()}
    first = next(iter(rows))
    for name, count in rows.items():
        if count != rows[first]:
            raise BadDataset(
                f"arrays' first dimensions disagree: {_show(first)} has {rows[first]} rows, {_show(name)} has {count}",
                array=name,
            )
    arrays = {name: {"shape": list(shape), "dtype": dtype.name} for name, (dtype, shape) in found.items()}
    return DatasetFile(format=kind, arrays=arrays, num_rows=rows[first])
