"""Runtime benchmark: create -> execute `true` -> destroy of a full sandbox (cgroup, its
own uid, overlay root, isolated netns, a cgroup per execution), beside bwrap and unshare
doing the least they can, interleaved round by round in the same run, with a breakdown
of where our time goes (p50 and p99 per step)."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

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


async def _launcher_breakdown(manager: SandboxManager, samples: int = 100) -> dict[str, float]:
    """Where wc-init's own time goes (its --trace-fd lines), in microseconds, median of `samples`
    create -> exec `true` -> destroy rounds."""
    spec = SandboxSpec(
        agent_id="bench", caps=ResourceCaps(cpu_cores=1.0, memory_mb=256, pids=64, storage_mb=64)
    )
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    manager.trace_to(write_end)
    text = b""
    try:
        for _ in range(samples):
            sandbox = await manager.create(spec)
            await manager.execute(sandbox.id, ["true"])
            await manager.destroy(sandbox.id)
            manager.forget(sandbox.id)
            while True:
                try:
                    chunk = os.read(read_end, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                text += chunk
    finally:
        manager.trace_to(None)
        os.close(write_end)
        os.close(read_end)
    steps: dict[str, list[int]] = {}
    for line in text.decode().splitlines():
        if line.startswith("wc-init trace "):
            parts = line.split()
            steps.setdefault(" ".join(parts[2:-2]), []).append(int(parts[-2]))
    return {
        step: {
            "p50": round(statistics.median(values), 1),
            "p99": round(sorted(values)[int(0.99 * (len(values) - 1))], 1),
        }
        for step, values in steps.items()
    }


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
    others: dict[str, list[float]] = {"bwrap": [], "unshare": []}
    try:
        for i in range(WARMUP + iterations):
            # bwrap and unshare run between our rounds, so that all three see the same load
            # on a shared host (one after the other, a busy minute skews the ratio).
            for name, argv in (("bwrap", BWRAP), ("unshare", UNSHARE)):
                mark = time.perf_counter()
                subprocess.run(argv, check=True)
                if i >= WARMUP:
                    others[name].append(time.perf_counter() - mark)
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
    return totals, steps, launcher, others


def run() -> dict:
    # As the service does once started: what start-up made is never scanned by the GC again.
    gc.collect()
    gc.freeze()
    if shutil.which("bwrap") is None:
        raise SystemExit("bwrap is missing: `make bench` installs Debian's bubblewrap")
    state_dir = Path(tempfile.mkdtemp(prefix="wondercraft-bench-"))
    try:
        ours, steps, launcher, others = asyncio.run(_time_sandboxes(state_dir, ITERATIONS))
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    bwrap, unshare = others["bwrap"], others["unshare"]
    figures = {
        "wondercraft": _percentiles(ours),
        "bwrap": _percentiles(bwrap),
        "unshare": _percentiles(unshare),
        "steps": {name: _percentiles(values) for name, values in steps.items()},
        "launcher_steps_us": launcher,
    }
    figures["ratio_p50_vs_bwrap"] = round(figures["wondercraft"]["p50_ms"] / figures["bwrap"]["p50_ms"], 2)
    figures["ratio_p99_vs_bwrap"] = round(figures["wondercraft"]["p99_ms"] / figures["bwrap"]["p99_ms"], 2)
    figures["ratio_p50_vs_unshare"] = round(
        figures["wondercraft"]["p50_ms"] / figures["unshare"]["p50_ms"], 2
    )
    print(f"   {'create+exec true+destroy':<28} {'p50 ms':>8} {'p99 ms':>8}")
    for name in ("wondercraft", "bwrap", "unshare"):
        print(f"   {name:<28} {figures[name]['p50_ms']:>8.2f} {figures[name]['p99_ms']:>8.2f}")
    print(
        f"   ratio vs bwrap: p50 {figures['ratio_p50_vs_bwrap']}x, p99 {figures['ratio_p99_vs_bwrap']}x;"
        f" p50 vs unshare: {figures['ratio_p50_vs_unshare']}x"
    )
    print("   where our time goes (p50 / p99 ms):")
    for name, value in figures["steps"].items():
        print(f"     {name:<26} {value['p50_ms']:>8.3f} {value['p99_ms']:>8.3f}")
    print("   inside wc-init (p50 / p99 us, --trace-fd):")
    for name, value in launcher.items():
        print(f"     {name:<34} {value['p50']:>8.1f} {value['p99']:>8.1f}")
    return figures
