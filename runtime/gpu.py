"""GPU inventory and allocation: each sandbox gets specific devices, never shared.

The inventory is the host's /dev/nvidiaN nodes; a sandbox given GPUs gets exactly
those nodes (plus the driver's control nodes) bound into its /dev as /dev/nvidiaN, and
CUDA_VISIBLE_DEVICES naming them. CUDA skips a GPU whose node it cannot open, so inside
the sandbox only the given ones exist for it, numbered from 0."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

# What CUDA opens besides the GPU itself: the driver's control node and unified memory
# (uvm-tools: the profilers' counters). Not nvidia-modeset: that is for displays only.
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
SANDBOX_DEV = "/dev"


class GpuUnavailable(Exception):
    """Fewer free GPUs than a sandbox asked for."""


@dataclass(frozen=True)
class Gpu:
    index: int  # the device minor: /dev/nvidiaN
    device: str
    uuid: str | None = None  # "GPU-..." from the driver, when it is loaded

    @property
    def sandbox_path(self) -> str:
        """Where the node is inside a sandbox, wherever the inventory found it on the host."""
        return f"{SANDBOX_DEV}/nvidia{self.index}"


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


def control_nodes(dev_dir: Path = Path("/dev")) -> list[Path]:
    """The driver's control nodes present in dev_dir (nvidia-uvm appears once its module is loaded)."""
    return [dev_dir / name for name in CONTROL_NODES if (dev_dir / name).exists()]


class GpuAllocator:
    def __init__(self, inventory: list[Gpu], controls: list[Path] | None = None) -> None:
        """inventory: the GPUs to hand out; controls: the control nodes a sandbox given any
        gets too (default: those in /dev)."""
        self._inventory = list(inventory)
        self._controls = list(controls) if controls is not None else control_nodes()
        self._owner: dict[int, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_host(
        cls, dev_dir: Path = Path("/dev"), proc_dir: Path = Path("/proc/driver/nvidia/gpus")
    ) -> GpuAllocator:
        """The GPUs and control nodes of dev_dir (a test points it at stand-in nodes)."""
        return cls(discover(dev_dir, proc_dir), control_nodes(dev_dir))

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

    def device_binds(self, gpus: list[Gpu]) -> list[str]:
        """wc-init's `--dev HOST:SANDBOX` for these GPUs and, when there are any, the control nodes."""
        if not gpus:
            return []
        binds = [f"{g.device}:{g.sandbox_path}" for g in gpus]
        return binds + [f"{node}:{SANDBOX_DEV}/{node.name}" for node in self._controls]


def visible_devices_env(gpus: list[Gpu]) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for a sandbox holding these GPUs' nodes only. A UUID names the
    same GPU however CUDA numbers what it can open; without the driver's UUIDs, the ordinals
    0..k-1 are exactly the k devices CUDA finds there (the host's minor numbers would name
    devices that sandbox does not have)."""
    if not gpus:
        return {}
    if all(g.uuid for g in gpus):
        return {"CUDA_VISIBLE_DEVICES": ",".join(g.uuid for g in gpus)}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(gpus)))}
