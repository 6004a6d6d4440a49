"""Model parameter layout: names, shapes and offsets of float32 tensors in one flat buffer.

Also builds the address tables through which kernels read many clients' separately allocated
tensors in one pass, without stacking them into a K x model copy first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import LayoutError, NonFiniteUpdateError

DTYPE = np.dtype(np.float32)


def describe_client(index: int, client_ids: Sequence[str] | None) -> str:
    """How an error message names a client: its id when known, else its position."""
    if client_ids is None:
        return f"client {index}"
    return f"client {index} ({client_ids[index]!r})"


@dataclass(frozen=True)
class ModelLayout:
    """Tensor names in order, their shapes, and where each lives in a flat float32 buffer."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...] = field(init=False)
    offsets: tuple[int, ...] = field(init=False)
    num_parameters: int = field(init=False)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise LayoutError(f"layout has {len(self.names)} names but {len(self.shapes)} shapes")
        sizes = tuple(math.prod(shape) for shape in self.shapes)
        offsets, total = [], 0
        for size in sizes:
            offsets.append(total)
            total += size
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "offsets", tuple(offsets))
        object.__setattr__(self, "num_parameters", total)

    @classmethod
    def of(cls, update: Mapping[str, np.ndarray], client: str = "client 0") -> ModelLayout:
        """The layout of one update, in its own tensor order; checks names and dtypes."""
        if not isinstance(update, Mapping):
            raise LayoutError(
                f"update from {client} must be a mapping of tensor name to array, got {type(update).__name__}"
            )
        if not update:
            raise LayoutError(f"update from {client} holds no tensors, expected at least one")
        names, shapes = [], []
        for name, tensor in update.items():
            if not isinstance(name, str):
                raise LayoutError(f"update from {client}: tensor names must be str, got {name!r}")
            _check_array(tensor, name, client)
            names.append(name)
            shapes.append(tuple(int(d) for d in tensor.shape))
        return cls(tuple(names), tuple(shapes))

    def check(self, update: Mapping[str, np.ndarray], client: str) -> None:
        """Raise LayoutError naming the tensor and client if ``update`` does not match this layout."""
        if not isinstance(update, Mapping):
            raise LayoutError(
                f"update from {client} must be a mapping of tensor name to array, got {type(update).__name__}"
            )
        missing = [name for name in self.names if name not in update]
        if missing:
            raise LayoutError(f"update from {client} lacks tensor(s) {', '.join(map(repr, missing))}")
        if len(update) != len(self.names):
            extra = [name for name in update if name not in set(self.names)]
            raise LayoutError(
                f"update from {client} has unexpected tensor(s) {', '.join(map(repr, extra))}; "
                f"expected exactly {', '.join(map(repr, self.names))}"
            )
        for name, shape in zip(self.names, self.shapes, strict=True):
            tensor = update[name]
            _check_array(tensor, name, client)
            if tensor.shape != shape:
                raise LayoutError(
                    f"update from {client}: tensor {name!r} has shape {tensor.shape}, expected {shape}"
                )

    def empty_flat(self) -> np.ndarray:
        return np.empty(self.num_parameters, dtype=DTYPE)

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of ``flat`` shaped as this layout's tensors (no copy)."""
        return {
            name: flat[offset : offset + size].reshape(shape)
            for name, shape, size, offset in zip(
                self.names, self.shapes, self.sizes, self.offsets, strict=True
            )
        }

    def flatten(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """A new flat buffer holding ``tensors`` in layout order."""
        flat = self.empty_flat()
        for name, size, offset in zip(self.names, self.sizes, self.offsets, strict=True):
            flat[offset : offset + size] = np.asarray(tensors[name], dtype=DTYPE).reshape(-1)
        return flat


def _check_array(tensor: object, name: str, client: str) -> None:
    if not isinstance(tensor, np.ndarray):
        raise LayoutError(
            f"update from {client}: tensor {name!r} is a {type(tensor).__name__}, expected a numpy array"
        )
    if tensor.dtype != DTYPE:
        raise LayoutError(f"update from {client}: tensor {name!r} has dtype {tensor.dtype}, expected float32")


@dataclass
class TensorTable:
    """Raw addresses of K clients' tensors (one row per client) plus the chunking kernels iterate over.

    ``keepalive`` holds every array whose address is in the table (contiguous copies included), so the
    memory stays valid for as long as the table does.
    """

    addresses: np.ndarray  # int64 (K, T)
    sizes: np.ndarray  # int64 (T,)
    offsets: np.ndarray  # int64 (T,): where each tensor starts in the layout's flat buffer
    tensor_indices: tuple[int, ...]  # positions of the T tensors in the layout
    keepalive: list[np.ndarray]

    @property
    def num_clients(self) -> int:
        return int(self.addresses.shape[0])

    @property
    def num_parameters(self) -> int:
        return int(self.sizes.sum())


def tensor_table(
    layout: ModelLayout,
    updates: Sequence[Mapping[str, np.ndarray]],
    tensor_indices: Sequence[int] | None = None,
) -> TensorTable:
    """Address table for ``updates`` (already checked against ``layout``) over the chosen tensors."""
    if tensor_indices is None:
        tensor_indices = range(len(layout.names))
    tensor_indices = tuple(tensor_indices)
    names = [layout.names[i] for i in tensor_indices]
    addresses = np.empty((len(updates), len(names)), dtype=np.int64)
    keepalive: list[np.ndarray] = []
    for k, update in enumerate(updates):
        for t, name in enumerate(names):
            # Kernels read tensors as flat runs of floats; a strided view gets a contiguous copy.
            tensor = np.ascontiguousarray(update[name])
            keepalive.append(tensor)
            addresses[k, t] = tensor.ctypes.data
    sizes = np.array([layout.sizes[i] for i in tensor_indices], dtype=np.int64)
    offsets = np.array([layout.offsets[i] for i in tensor_indices], dtype=np.int64)
    return TensorTable(addresses, sizes, offsets, tensor_indices, keepalive)


def find_non_finite(
    layout: ModelLayout,
    updates: Sequence[Mapping[str, np.ndarray]],
    client_ids: Sequence[str] | None,
    tensor_indices: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> NonFiniteUpdateError:
    """The error naming the first client and tensor holding NaN or Inf.

    Only called after a kernel has seen a non-finite value, so the slow scan costs nothing on good input.
    """
    indices = range(len(layout.names)) if tensor_indices is None else tensor_indices
    for k in range(len(updates)) if positions is None else positions:
        for i in indices:
            name = layout.names[i]
            tensor = updates[k][name]
            finite = np.isfinite(tensor)
            if not finite.all():
                bad = tuple(int(j) for j in np.argwhere(~finite)[0])
                value = tensor[bad] if bad else tensor[()]
                return NonFiniteUpdateError(
                    f"update from {describe_client(k, client_ids)}: tensor {name!r} holds {value} at index {bad}, "
                    "expected only finite values"
                )
    return NonFiniteUpdateError(
        "the aggregate overflowed the float32 range although every update is finite; expected updates well "
        "inside +/-3.4e38"
    )
