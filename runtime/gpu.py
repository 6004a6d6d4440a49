"""GPU inventory and allocation: each sandbox gets specific devices, never shared.

The inventory is the host's /dev/nvidiaN nodes; a sandbox given GPUs gets exactly
those nodes (plus the driver's control nodes) bound into its /dev, and
CUDA_VISIBLE_DEVICES naming them."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


class GpuUnavailable(Exception):
    """Fewer free GPUs than a sandbox asked for."""


@dataclass(frozen=True)
class Gpu:
    index: int  # the device minor: /dev/nvidiaN
    device: str
    uuid: str | None = None  # "GPU-..." from the driver, when it is loaded

    @property
    def cuda_id(self) -> str:
        # A UUID names the same GPU however CUDA numbers the devices it can open.
        return self.uuid or str(self.index)


def _driver_uuids(proc_dir: Path) -> dict[int, str]:
    """Device minor -> UUID from /proc/driver/nvidia/gpus/*/information."""
    uuids = {}
    for info in proc_dir.glob("*/information"):
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in info.read_text().splitlines())
        )
        if fields.get("Device Minor", "").isdigit() and fields.get("GPU UUID"):
            uuids[int(fields["Device Minor"])] = fields["GPU UUID"]
    return uuids


def discover(dev_dir: Path = Path("/dev"), proc_dir: Path = Path("/proc/driver/nvidia/gpus")) -> list[Gpu]:
    uuids = _driver_uuids(proc_dir) if proc_dir.is_dir() else {}
    found = []
    for node in dev_dir.glob("nvidia*"):
        match = re.fullmatch(r"nvidia(\d+)", node.name)
        if match:
            index = int(match.group(1))
            found.append(Gpu(index, str(node), uuids.get(index)))
    return sorted(found, key=lambda g: g.index)


class GpuAllocator:
    def __init__(self, inventory: list[Gpu]) -> None:
        self._inventory = list(inventory)
        self._owner: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return len(self._inventory)

    def free(self) -> int:
        with self._lock:
            return len(self._inventory) - len(self._owner)

    def allocate(self, count: int, owner: str) -> list[Gpu]:
        if count <= 0:
            return []
        with self._lock:
            free = [g for g in self._inventory if g.index not in self._owner]
            if len(free) < count:
                raise GpuUnavailable(
                    f"requested {count} GPU(s) but {len(free)} of {len(self._inventory)} are free on this host"
                )
            chosen = free[:count]
            for gpu in chosen:
                self._owner[gpu.index] = owner
            return chosen

    def release(self, owner: str) -> None:
        with self._lock:
            for index in [i for i, o in self._owner.items() if o == owner]:
                del self._owner[index]

    def owned_by(self, owner: str) -> list[int]:
        with self._lock:
            return sorted(i for i, o in self._owner.items() if o == owner)


def device_nodes(gpus: list[Gpu]) -> list[str]:
    if not gpus:
        return []
    return [g.device for g in gpus] + [n for n in CONTROL_NODES if Path(n).exists()]


def visible_devices_env(gpus: list[Gpu]) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ",".join(g.cuda_id for g in gpus)} if gpus else {}
