"""Runtime benchmark: create -> execute `true` -> destroy of a full sandbox (cgroup,
overlay root, isolated netns), beside bwrap and unshare doing the least they can,
all in the same run, with a breakdown of where our time goes."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from runtime.cgroups.base import CgroupLimits
from runtime.sandbox import ResourceCaps, SandboxManager, SandboxSpec

ITERATIONS = int(os.environ.get("BENCH_RUNTIME_ITERATIONS", "300"))
WARMUP = 20
BWRAP = [
    "bwrap",
    "--unshare-all",
    "--die-with-parent",
    "--ro-bind",
    "/",
    "/",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "true",
]
UNSHARE = ["unshare", "--pid", "--mount", "--net", "--uts", "--ipc", "--fork", "--mount-proc", "true"]


def _percentiles(samples_s: list[float]) -> dict:
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1e3, 3),
        "p99_ms": round(p99 * 1e3, 3),
        "n": len(ordered),
    }


def _time_command(argv: list[str], iterations: int) -> list[float]:
    for _ in range(WARMUP):
        subprocess.run(argv, check=True)
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        subprocess.run(argv, check=True)
        samples.append(time.perf_counter() - started)
    return samples


async def _launcher_breakdown(manager: SandboxManager, samples: int = 30) -> dict[str, float]:
    """Where wc-init's own time goes (WC_INIT_TRACE), in microseconds, median of `samples`."""
    spec = SandboxSpec(
        agent_id="bench", caps=ResourceCaps(cpu_cores=1.0, memory_mb=256, pids=64, storage_mb=64)
    )
    sandbox = await manager.create(spec)
    steps: dict[str, list[int]] = {}
    env = dict(os.environ, WC_INIT_TRACE="1")

    def collect(text: str) -> None:
        for line in text.splitlines():
            if line.startswith("wc-init trace "):
                parts = line.split()
                steps.setdefault(" ".join(parts[3:-2]), []).append(int(parts[-2]))

    try:
        for _ in range(samples):
            read_end, write_end = os.pipe()
            argv = [
                manager._launcher,
                "exec",
                "--target",
                str(sandbox.init_pid),
                "--status-fd",
                str(write_end),
            ]
            for path in sandbox._cgroup.procs_files:
                argv += ["--cgroup-procs", path]
            done = subprocess.run(
                [*argv, "--", "true"], pass_fds=(write_end,), env=env, capture_output=True, text=True
            )
            os.close(write_end)
            os.close(read_end)
            collect(done.stderr)
        create_argv = manager._create_args(sandbox)
    finally:
        await manager.destroy(sandbox.id)
        manager.forget(sandbox.id)
    for index in range(samples):
        cgroup = manager.cgroups.create(
            f"sb-{index:012x}", CgroupLimits(cpu_cores=1.0, memory_mb=256, pids_max=64)
        )
        argv, skip = [], False
        for arg in create_argv:
            if skip:
                skip = False
                continue
            if arg == "--cgroup-procs":
                skip = True
                continue
            argv.append(arg)
        for path in cgroup.procs_files:
            argv += ["--cgroup-procs", path]
        shim = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        shim.stdout.readline()
        time.sleep(0.005)  # let PID 1 finish writing its trace
        shim.kill()
        collect(shim.stderr.read())
        shim.wait()
        cgroup.destroy()
    return {step: round(statistics.median(values), 1) for step, values in steps.items()}


async def _time_sandboxes(
    state_dir: Path, iterations: int
) -> tuple[list[float], dict[str, list[float]], dict]:
    manager = SandboxManager(state_dir)
    await manager.start()
    spec = SandboxSpec(
        agent_id="bench", caps=ResourceCaps(cpu_cores=1.0, memory_mb=256, pids=64, storage_mb=64)
    )
    totals: list[float] = []
    steps: dict[str, list[float]] = {}
    try:
        for i in range(WARMUP + iterations):
            started = time.perf_counter()
            sandbox = await manager.create(spec)
            created = time.perf_counter()
            result = await manager.execute(sandbox.id, ["true"])
            executed = time.perf_counter()
            await manager.destroy(sandbox.id)
            finished = time.perf_counter()
            manager.forget(sandbox.id)
            assert result.exit_code == 0, result
            if i < WARMUP:
                continue
            totals.append(finished - started)
            for step, value in (
                ("create", created - started),
                ("execute", executed - created),
                ("destroy", finished - executed),
            ):
                steps.setdefault(step, []).append(value)
            for step, ms in sandbox.timings_ms.items():
                steps.setdefault(step, []).append(ms / 1e3)
        launcher = await _launcher_breakdown(manager)
    finally:
        await manager.close()
    return totals, steps, launcher


def run() -> dict:
    if shutil.which("bwrap") is None:
        raise SystemExit("bwrap is missing: `make bench` installs Debian's bubblewrap")
    state_dir = Path(tempfile.mkdtemp(prefix="wondercraft-bench-"))
    try:
        ours, steps, launcher = asyncio.run(_time_sandboxes(state_dir, ITERATIONS))
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    bwrap = _time_command(BWRAP, ITERATIONS)
    unshare = _time_command(UNSHARE, ITERATIONS)
    figures = {
        "wondercraft": _percentiles(ours),
        "bwrap": _percentiles(bwrap),
        "unshare": _percentiles(unshare),
        "steps": {name: _percentiles(values) for name, values in steps.items()},
        "launcher_steps_us": launcher,
    }
    figures["ratio_p50_vs_bwrap"] = round(figures["wondercraft"]["p50_ms"] / figures["bwrap"]["p50_ms"], 2)
    figures["ratio_p50_vs_unshare"] = round(
        figures["wondercraft"]["p50_ms"] / figures["unshare"]["p50_ms"], 2
    )
    print(f"   {'create+exec true+destroy':<28} {'p50 ms':>8} {'p99 ms':>8}")
    for name in ("wondercraft", "bwrap", "unshare"):
        print(f"   {name:<28} {figures[name]['p50_ms']:>8.2f} {figures[name]['p99_ms']:>8.2f}")
    print(
        f"   ratio p50 vs bwrap: {figures['ratio_p50_vs_bwrap']}x, vs unshare: {figures['ratio_p50_vs_unshare']}x"
    )
    print("   where our time goes (p50 ms):")
    for name, value in figures["steps"].items():
        print(f"     {name:<26} {value['p50_ms']:>8.3f}")
    print("   inside wc-init (p50 us, WC_INIT_TRACE):")
    for name, value in launcher.items():
        print(f"     {name:<34} {value:>8.1f}")
    return figures
