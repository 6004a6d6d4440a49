"""GPU binding through real sandboxes on a host without GPUs: the inventory is stand-in
/dev/nvidiaN nodes made with mknod as clones of /dev/null (char 1:3, harmless), so the kernel
really binds them into each sandbox's /dev; what a sandbox sees is read from inside it."""

from __future__ import annotations

import os
import stat

import pytest

from runtime import gpu as gpus
from runtime.sandbox import CapacityExhausted, ResourceCaps
from tests.sandboxes import SyncManager

NULL = os.stat("/dev/null").st_rdev
LIST_DEVICES = (
    'for n in /dev/nvidia*; do [ -c "$n" ] && echo "$n $(stat -c %t:%T "$n")"; done; '
    'echo "cuda=${CUDA_VISIBLE_DEVICES-unset}"; echo ok > /dev/nvidia-uvm && echo writable'
)


def caps(gpu_count: int) -> ResourceCaps:
    return ResourceCaps(cpu_cores=1.0, memory_mb=128, pids=32, storage_mb=16, gpu_count=gpu_count)


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    """Stand-ins for GPUs 0 and 3 (the driver knows 3's UUID), nvidiactl and nvidia-uvm."""
    root = tmp_path_factory.mktemp("gpu-inventory")
    dev, info = root / "dev", root / "proc" / "0000:03:00.0"
    dev.mkdir()
    info.mkdir(parents=True)
    nodes = [dev / name for name in ("nvidia0", "nvidia3", "nvidiactl", "nvidia-uvm")]
    for node in nodes:
        os.mknod(node, 0o666 | stat.S_IFCHR, NULL)
        os.chmod(node, 0o666)
    (dev / "nvidia-modeset").write_text("not a device, and not a control node CUDA needs")
    (info / "information").write_text("Model: Stand-in\nGPU UUID: GPU-3333\nDevice Minor: 3\n")
    yield gpus.GpuAllocator.from_host(dev, root / "proc")
    for node in nodes:
        node.unlink()


@pytest.fixture(scope="module")
def gpu_sandboxes(tmp_path_factory, inventory):
    manager = SyncManager(tmp_path_factory.mktemp("gpu-state"), gpu_allocator=inventory)
    yield manager
    manager.close()


def devices_seen(manager: SyncManager, sandbox) -> list[str]:
    result = manager.sh(sandbox, LIST_DEVICES)
    assert result.exit_code in (0, 1), result.stderr
    return result.stdout.decode().split("\n")[:-1]


def test_a_sandbox_sees_exactly_its_gpus_and_the_control_nodes(gpu_sandboxes, inventory):
    first = gpu_sandboxes.create(caps=caps(1))
    try:
        second = gpu_sandboxes.create(caps=caps(1))
        try:
            major_minor = f"{os.major(NULL):x}:{os.minor(NULL):x}"
            # Each is given one of the two, at /dev/nvidiaN whatever the host path was.
            assert devices_seen(gpu_sandboxes, first) == [
                f"/dev/nvidia-uvm {major_minor}", f"/dev/nvidia0 {major_minor}",
                f"/dev/nvidiactl {major_minor}", "cuda=0", "writable",
            ]  # fmt: skip
            assert devices_seen(gpu_sandboxes, second) == [
                f"/dev/nvidia-uvm {major_minor}", f"/dev/nvidia3 {major_minor}",
                f"/dev/nvidiactl {major_minor}", "cuda=GPU-3333", "writable",
            ]  # fmt: skip
            assert inventory.free() == 0
            # None is shared: a third asking for one is refused by name, and takes nothing.
            with pytest.raises(CapacityExhausted, match=r"requested 1 GPU\(s\) but 0 of 2 are free"):
                gpu_sandboxes.create(caps=caps(1))
        finally:
            gpu_sandboxes.destroy(second)
    finally:
        gpu_sandboxes.destroy(first)
    assert inventory.free() == 2


def test_a_sandbox_without_gpus_sees_no_nvidia_node_and_no_cuda_variable(gpu_sandboxes):
    sandbox = gpu_sandboxes.create(caps=caps(0))
    try:
        result = gpu_sandboxes.sh(sandbox, LIST_DEVICES)
        assert result.stdout.decode().split("\n")[:-1] == ["cuda=unset"]
        assert result.exit_code != 0  # /dev/nvidia-uvm cannot be created in its read-only /dev
    finally:
        gpu_sandboxes.destroy(sandbox)


def test_both_gpus_are_numbered_from_zero_when_one_has_no_uuid(gpu_sandboxes):
    sandbox = gpu_sandboxes.create(caps=caps(2))
    try:
        seen = devices_seen(gpu_sandboxes, sandbox)
        assert [line.split()[0] for line in seen[:4]] == [
            "/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidia3", "/dev/nvidiactl",
        ]  # fmt: skip
        assert seen[4] == "cuda=0,1"
        threads = gpu_sandboxes.sh(sandbox, "echo $OMP_NUM_THREADS").stdout
        assert threads == b"1\n"  # thread pools follow the cpu cap, not the host's cores
    finally:
        gpu_sandboxes.destroy(sandbox)


def test_an_inventory_entry_that_is_not_a_character_device_is_refused(tmp_path_factory, tmp_path):
    fake = tmp_path / "nvidia5"
    fake.write_text("a regular file")
    allocator = gpus.GpuAllocator([gpus.Gpu(5, str(fake))], controls=[])
    manager = SyncManager(tmp_path_factory.mktemp("gpu-refused-state"), gpu_allocator=allocator)
    try:
        before = set(manager.manager.cgroups.list_names())
        with pytest.raises(Exception, match="not a character device"):
            manager.create(caps=caps(1))
        assert set(manager.manager.cgroups.list_names()) == before
        assert allocator.free() == 1 and manager.manager.list() == []
    finally:
        manager.close()
