"""Resource caps, violations and supervision, each driven from inside a real sandbox.
Runs on the host (hybrid/v1) and in the UML guest (pure v2, marker v2guest)."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time

import pytest

from runtime import gpu as gpus
from runtime.network import NETNS_DIR
from runtime.sandbox import CapacityExhausted, InvalidSpec, ResourceCaps, SandboxManager, SandboxSpec

pytestmark = pytest.mark.v2guest

PY = ["python", "-I", "-S", "-c"]


def caps(**fields) -> ResourceCaps:
    defaults = {"cpu_cores": 1.0, "memory_mb": 256, "pids": 64, "storage_mb": 64}
    defaults.update(fields)
    return ResourceCaps(**defaults)


def py(sandboxes, sandbox, code: str, **kwargs):
    return sandboxes.execute(sandbox, [*PY, textwrap.dedent(code)], **kwargs)


def test_memory_bomb_is_killed_and_reported(sandboxes):
    sandbox = sandboxes.create(caps=caps(memory_mb=64))
    try:
        result = py(
            sandboxes, sandbox, "blocks = []\nwhile True: blocks.append(bytearray(8 << 20))", timeout_s=60
        )
        assert result.signal == signal.SIGKILL
        assert result.termination_reason == "memory_limit"
        assert result.usage["cgroup"]["oom_kills"] >= 1
    finally:
        sandboxes.destroy(sandbox)


def test_fork_bomb_hits_the_pids_cap_and_ends_the_exec(sandboxes):
    sandbox = sandboxes.create(caps=caps(pids=16))
    try:
        code = """
        import os, time
        children = 0
        for _ in range(64):
            try:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
            except OSError:
                pass
        time.sleep(30)
        """
        started = time.monotonic()
        result = py(sandboxes, sandbox, code, timeout_s=60)
        assert result.termination_reason == "pids_limit"
        assert result.usage["cgroup"]["pids_max_events"] > 0
        assert time.monotonic() - started < 20  # ended by the violation, not by the sleep
        # The sandbox itself survives: only the offending exec is ended.
        assert sandboxes.sh(sandbox, "echo alive").stdout == b"alive\n"
    finally:
        sandboxes.destroy(sandbox)


def test_cpu_cap_throttles_a_busy_loop(sandboxes):
    sandbox = sandboxes.create(caps=caps(cpu_cores=0.2))
    try:
        result = py(sandboxes, sandbox, "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass")
        assert result.exit_code == 0
        usage = result.usage
        assert usage["sandbox_cgroup"]["cpu_nr_throttled"] > 0  # the cap is the sandbox's
        # 0.2 cores for ~1.5 s of wall time is ~0.3 s of CPU; allow scheduling slack.
        assert usage["cpu_s"] < 0.2 * usage["wall_s"] + 0.25
    finally:
        sandboxes.destroy(sandbox)


def test_limits_land_in_the_kernel_files(sandboxes):
    sandbox = sandboxes.create(caps=caps(cpu_cores=0.5, memory_mb=96, pids=40))
    try:
        files = {}
        for procs in sandbox._cgroup.procs_files:
            directory = os.path.dirname(procs)
            for name in ("memory.max", "memory.limit_in_bytes", "pids.max", "cpu.max", "cpu.cfs_quota_us"):
                path = os.path.join(directory, name)
                if os.path.exists(path):
                    files[name] = open(path).read().strip()
        assert files.get("memory.max", files.get("memory.limit_in_bytes")) == str(96 << 20)
        assert files["pids.max"] == "40"
        assert files.get("cpu.max", files.get("cpu.cfs_quota_us")).split()[0] == "50000"
    finally:
        sandboxes.destroy(sandbox)


def test_io_caps_land_on_the_state_dir_device_where_the_hierarchy_allows(sandboxes):
    from runtime.sandbox import block_device

    device = block_device(sandboxes.manager.state_dir)
    if device is None:
        pytest.skip("the state dir is not on a block device here (tmpfs or hostfs)")
    sandbox = sandboxes.create(caps=caps(io_read_bps=1 << 20, io_write_bps=2 << 20))
    try:
        found = {}
        for procs in sandbox._cgroup.procs_files:
            directory = os.path.dirname(procs)
            for name in ("io.max", "blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"):
                path = os.path.join(directory, name)
                if os.path.exists(path):
                    found[name] = open(path).read()
        assert found, "no io controller in this hierarchy"
        text = " ".join(found.values())
        assert device in text and str(1 << 20) in text and str(2 << 20) in text
    finally:
        sandboxes.destroy(sandbox)


def test_timeout_ends_one_exec_and_says_why(sandboxes):
    sandbox = sandboxes.create(caps=caps())
    try:
        started = time.monotonic()
        result = sandboxes.sh(sandbox, "sleep 30 & sleep 30", timeout_s=0.5)
        assert time.monotonic() - started < 10
        assert result.termination_reason == "timeout"
        assert result.signal == signal.SIGKILL
        assert sandboxes.sh(sandbox, "pgrep sleep || echo none").stdout == b"none\n"
    finally:
        sandboxes.destroy(sandbox)


def test_lifetime_destroys_the_sandbox_and_ends_running_execs(sandboxes):
    sandbox = sandboxes.create(caps=caps(), lifetime_s=1.0)
    result = sandboxes.sh(sandbox, "sleep 30", timeout_s=20)
    assert result.termination_reason == "lifetime"
    deadline = time.monotonic() + 5
    while sandbox.status != "destroyed" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox.status == "destroyed"
    assert sandbox.final_record["termination_reason"] == "lifetime"


def test_kill_switch_ends_a_running_exec_as_killed(sandboxes):
    sandbox = sandboxes.create(caps=caps())
    manager = sandboxes.manager

    async def run_and_kill():
        exec_task = asyncio.ensure_future(manager.execute(sandbox.id, ["sleep", "30"]))
        await asyncio.sleep(0.3)
        record = await manager.destroy(sandbox.id, reason="killed")
        return await exec_task, record

    result, record = sandboxes.call(run_and_kill())
    assert result.termination_reason == "killed"
    assert record["termination_reason"] == "killed"
    assert record["executions"] == 1


def test_output_is_capped_and_marked_truncated(sandboxes):
    sandbox = sandboxes.create(caps=caps())
    try:
        result = sandboxes.sh(sandbox, "head -c 300000 /dev/zero; echo err >&2", output_limit_bytes=1000)
        assert result.exit_code == 0
        assert result.truncated is True
        assert len(result.stdout) == 1000
        assert result.stderr == b"err\n"
        whole = sandboxes.sh(sandbox, "echo small")
        assert whole.truncated is False and whole.stdout == b"small\n"
    finally:
        sandboxes.destroy(sandbox)


def test_exec_reports_the_kernel_resource_record(sandboxes):
    sandbox = sandboxes.create(caps=caps())
    try:
        result = py(sandboxes, sandbox, "x = bytearray(20 << 20)\nsum(range(2000000))")
        usage = result.usage
        assert result.exit_code == 0 and result.termination_reason is None
        assert usage["cpu_s"] > 0
        assert usage["max_rss_bytes"] >= 20 << 20
        assert usage["cgroup"]["memory_peak_bytes"] >= 20 << 20
        assert usage["wall_s"] > 0
        assert usage["limits"]["memory_mb"] == 256
        missing = sandboxes.execute(sandbox, ["/no/such/program"])
        assert missing.exit_code == 127
        assert b"No such file or directory" in missing.stderr
    finally:
        sandboxes.destroy(sandbox)


def test_bad_specs_are_refused_and_leave_nothing(sandboxes):
    before = set(sandboxes.manager.cgroups.list_names())
    for bad in (caps(memory_mb=4), caps(cpu_cores=0), caps(pids=1), caps(storage_mb=0)):
        with pytest.raises(InvalidSpec):
            sandboxes.create(caps=bad)
    with pytest.raises(InvalidSpec, match="network"):
        sandboxes.create(network="host")
    assert set(sandboxes.manager.cgroups.list_names()) == before


def test_gpu_request_beyond_the_inventory_is_a_clear_error(sandboxes):
    total = sandboxes.manager.gpus.total
    before = set(sandboxes.manager.cgroups.list_names())
    with pytest.raises(
        CapacityExhausted, match=rf"requested {total + 1} GPU\(s\) but {total} of {total} are free"
    ):
        sandboxes.create(caps=caps(gpu_count=total + 1))
    assert set(sandboxes.manager.cgroups.list_names()) == before


def test_gpu_allocator_gives_specific_devices_and_never_oversubscribes():
    inventory = [gpus.Gpu(i, f"/dev/nvidia{i}", f"GPU-{i:04d}") for i in range(4)]
    allocator = gpus.GpuAllocator(inventory)
    first = allocator.allocate(3, "sb-a")
    assert [g.index for g in first] == [0, 1, 2]
    with pytest.raises(gpus.GpuUnavailable, match="requested 2 GPU"):
        allocator.allocate(2, "sb-b")
    assert allocator.owned_by("sb-b") == []  # a failed request takes nothing
    second = allocator.allocate(1, "sb-b")
    assert [g.index for g in second] == [3]
    allocator.release("sb-a")
    assert allocator.free() == 3
    assert gpus.visible_devices_env(second) == {"CUDA_VISIBLE_DEVICES": "GPU-0003"}
    # Without UUIDs, the sandbox holds only its nodes, which CUDA numbers from 0.
    assert gpus.visible_devices_env([gpus.Gpu(5, "/dev/nvidia5")]) == {"CUDA_VISIBLE_DEVICES": "0"}


def test_gpu_inventory_reads_device_nodes_and_driver_uuids(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (dev / name).touch()
    info = tmp_path / "gpus" / "0000:01:00.0"
    info.mkdir(parents=True)
    (info / "information").write_text("Model: X\nGPU UUID: GPU-abc\nDevice Minor: 1\n")
    found = gpus.discover(dev, tmp_path / "gpus")
    assert [(g.index, g.uuid) for g in found] == [(0, None), (1, "GPU-abc")]


CRASHING_SERVICE = """
import asyncio, sys, time
from pathlib import Path
from runtime.sandbox import ResourceCaps, SandboxManager, SandboxSpec

async def main():
    manager = SandboxManager(Path(sys.argv[1]))
    await manager.start()
    sandbox = await manager.create(SandboxSpec(agent_id="a", caps=ResourceCaps(1.0, 128, 32, 16)))
    await manager.execute(sandbox.id, ["sh", "-c", f"setsid {sys.argv[2]} >/dev/null 2>&1 </dev/null &"])
    print(sandbox.id, sandbox.netns, sandbox.init_pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_orphans_of_a_crashed_service_are_swept_at_start(tmp_path, this_run):
    import subprocess
    import sys

    state = tmp_path / "state"
    this_run.register_state_dir(state)
    service = subprocess.Popen(
        [sys.executable, "-c", CRASHING_SERVICE, str(state), this_run.marked_sleep],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        name, netns, init_pid = service.stdout.readline().split()
    finally:
        service.kill()  # SIGKILL: no clean-up code runs
        service.wait()
    # Its launchers die with it (parent-death signal), taking the sandbox's processes along.
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{init_pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{init_pid}")
    assert this_run.marked() == []  # the sandbox's detached sleep went with them
    restarted = SandboxManager(state)
    assert name in restarted.cgroups.list_names()  # what the crash left behind...
    assert os.path.exists(os.path.join(NETNS_DIR, netns))
    removed = asyncio.run(restarted.start())
    try:
        assert removed == {"cgroups": [name], "netns": [netns]}  # ...is gone after start-up
        assert restarted.cgroups.list_names() == []
        assert not os.path.exists(os.path.join(NETNS_DIR, netns))
    finally:
        asyncio.run(restarted.close())


def test_sandbox_spec_defaults_match_the_seed():
    spec = SandboxSpec(agent_id="a")
    assert spec.caps.cpu_cores == 2.0 and spec.caps.memory_mb == 4096 and spec.caps.pids == 256
    assert spec.network == "isolated"


def test_supervisor_pass_destroys_a_sandbox_whose_init_died(sandboxes):
    from runtime.supervisor import supervise_once

    sandbox = sandboxes.create(caps=caps())
    manager = sandboxes.manager
    # Stop the watcher from seeing the death first: the supervisor is the backstop.
    sandbox.status = "running"
    os.kill(sandbox.init_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{sandbox.init_pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    report = sandboxes.call(supervise_once(manager))
    assert sandbox.status == "destroyed"
    assert sandbox.id in report.dead or sandbox.final_record is not None
    assert sandbox.id not in manager.cgroups.list_names()
