"""The host's resources against the configured caps: memory and CPU cores, GPUs and their nodes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from runtime import gpu as gpus

from ..config import Settings
from .checks import FAIL, PASS, WARN, Check


def _meminfo() -> dict[str, int]:
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    return values


def check_memory(settings: Settings, available_bytes: int | None = None) -> Check:
    available = _meminfo().get("MemAvailable", 0) if available_bytes is None else available_bytes
    largest = settings.resource_limits.memory_mb << 20
    busy = settings.max_concurrent_cycles * (settings.sandbox_default_memory_mb << 20)
    gib = 1 << 30
    detail = (
        f"{available / gib:.1f} GiB available; one sandbox may take {largest / gib:.1f} GiB "
        f"(resourceLimits.memory), {settings.max_concurrent_cycles} cycles at the default cap "
        f"{busy / gib:.1f} GiB"
    )
    if available < largest:
        return Check(
            "memory", FAIL, detail,
            "lower resourceLimits.memory in the scaling JSON, or free memory on the host",
        )  # fmt: skip
    if available < busy:
        return Check(
            "memory", WARN, detail,
            "lower PETALS_MAX_CONCURRENT_CYCLES or SANDBOX_DEFAULT_MEMORY so that busy hours fit",
        )  # fmt: skip
    cores = os.cpu_count() or 1
    if settings.resource_limits.cpu_cores > cores:
        return Check(
            "memory", WARN, f"{detail}; resourceLimits.cpu is {settings.resource_limits.cpu_cores:g} cores "
            f"but the host has {cores}",
            "lower resourceLimits.cpu to the host's core count",
        )  # fmt: skip
    return Check("memory", PASS, detail)


def check_gpus(settings: Settings, dev_dir: Path = Path("/dev"), proc_dir: Path | None = None) -> Check:
    proc_dir = proc_dir or Path("/proc/driver/nvidia/gpus")
    found = gpus.discover(dev_dir, proc_dir)
    wanted = settings.resource_limits.gpu_count
    if not found:
        if wanted:
            return Check(
                "gpus", WARN, f"no GPU device nodes (/dev/nvidia<N>); resourceLimits.gpu is {wanted}, so "
                "sandboxes asking for a GPU will be refused",
                "install the NVIDIA driver (nvidia-smi lists the GPUs; nvidia-modprobe creates the nodes), "
                "or set resourceLimits.gpu to 0",
            )  # fmt: skip
        return Check("gpus", PASS, "no GPUs, and none offered (resourceLimits.gpu is 0)")
    problems = []
    for device in found:
        try:
            mode = os.stat(device.device).st_mode
        except OSError as exc:
            problems.append(f"{device.device}: {exc.strerror}")
            continue
        if not stat.S_ISCHR(mode):
            problems.append(f"{device.device} is not a character device")
        elif not os.access(device.device, os.R_OK | os.W_OK):
            problems.append(f"{device.device} is not readable and writable")
    for control in ("nvidiactl", "nvidia-uvm"):
        node = dev_dir / control
        if not node.exists() or not stat.S_ISCHR(node.stat().st_mode):
            problems.append(f"{node} is missing (CUDA needs it)")
    listing = ", ".join(f"{d.device}" + (f" {d.uuid}" if d.uuid else " (no driver UUID)") for d in found)
    if problems:
        return Check(
            "gpus", FAIL, f"{len(found)} GPU(s): {listing}; {'; '.join(problems)}",
            "load the driver and create the nodes: nvidia-modprobe -u -c=0 (or nvidia-smi once as root)",
        )  # fmt: skip
    if wanted > len(found):
        return Check(
            "gpus", WARN, f"{len(found)} GPU(s): {listing}; resourceLimits.gpu is {wanted}",
            f"set resourceLimits.gpu to at most {len(found)}",
        )  # fmt: skip
    if not any(d.uuid for d in found):
        return Check(
            "gpus", WARN, f"{len(found)} GPU(s): {listing}; the driver reports no UUIDs",
            "load the nvidia kernel module so /proc/driver/nvidia/gpus exists",
        )  # fmt: skip
    return Check("gpus", PASS, f"{len(found)} GPU(s) with device nodes: {listing}")
