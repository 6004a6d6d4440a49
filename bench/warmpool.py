"""Warm pool benchmark: request -> the learn program's first line running with numpy (or
torch) imported, through a warm sandbox (runtime/pool.py), beside `python -c 'import numpy'`
in a fresh sandbox and beside the cold path (a fresh sandbox with the program's inputs
bound, running the program), interleaved round by round in the same run; the memory each
warm sandbox holds; and cycles per minute of 10 concurrent small jobs at the runtime level
(SandboxManager + WarmPool, no HTTP service), warm against pool size 0.

"First line running" is the program's own CLOCK_MONOTONIC reading on its first line (the
clock is shared with the host: there is no time namespace), minus the moment the request
began. Warm rounds start only once the pool is full again, so a refill in the background
never loads the path being measured."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from runtime.mounts import PROGRAM_DIR, Bind
from runtime.pool import WarmPool, WarmProfile, run_cycle
from runtime.sandbox import ResourceCaps, SandboxManager, SandboxSpec

ITERATIONS = int(os.environ.get("BENCH_WARM_ITERATIONS", "40"))
TORCH_ITERATIONS = int(os.environ.get("BENCH_WARM_TORCH_ITERATIONS", "6"))
THROUGHPUT_S = float(os.environ.get("BENCH_WARM_THROUGHPUT_S", "30"))
CONCURRENCY = 10
CAPS = ResourceCaps(cpu_cores=1.0, memory_mb=1024, pids=128, storage_mb=128)
TORCH_CAPS = ResourceCaps(cpu_cores=1.0, memory_mb=4096, pids=256, storage_mb=128)
FIRST_LINE = "import time, {module}\nprint(time.monotonic(), flush=True)\n"
SMALL_JOB = """import time, numpy
print(time.monotonic(), flush=True)
import wondercraft_learn as wl
x = numpy.random.default_rng(0).normal(size=(256, 8)).astype('float32')
w = numpy.zeros((8, 1), 'float32')
for _ in range(20):
    w -= 0.01 * x.T @ (x @ w - 1) / len(x)
open('/out/metrics.json', 'w').write('{"numSamples": 256}')
"""


def _percentiles(samples_ms: list[float]) -> dict:
    if not samples_ms:
        return {"p50_ms": None, "p99_ms": None, "n": 0}
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"p50_ms": round(statistics.median(ordered), 3), "p99_ms": round(p99, 3), "n": len(ordered)}


def _program(root: Path, name: str, text: str) -> list[Bind]:
    program = root / name
    program.mkdir(mode=0o755)
    (program / "main.py").write_text(text)
    os.chmod(program / "main.py", 0o644)
    job = root / f"{name}.json"
    job.write_text('{"epochs": 1}')
    os.chmod(job, 0o644)
    return [Bind(str(program), "/program"), Bind(str(job), "/job.json")]


def _first_line_ms(result, began: float) -> float:
    assert result.exit_code == 0, (result.exit_code, result.stderr[-2000:])
    return (float(result.stdout.split(b"\n", 1)[0]) - began) * 1000


async def _full(pool: WarmPool, name: str) -> None:
    status = pool.status()[name]
    while status["idle"] < status["size"] or status["warming"]:
        await asyncio.sleep(0.02)
        status = pool.status()[name]


async def _warm_round(pool: WarmPool, profile: str, binds: list[Bind], steps: dict) -> float:
    await _full(pool, profile)
    began = time.monotonic()
    warm = await pool.acquire(profile, "bench")
    acquired = time.monotonic()
    result = (await warm.run(binds, ["python", "/program/main.py"], timeout_s=120)).result
    ms = _first_line_ms(result, began)
    steps.setdefault("acquire", []).append((acquired - began) * 1000)
    for step, value in warm.timings_ms.items():
        steps.setdefault(step, []).append(value)
    steps.setdefault("job_sent_to_first_line", []).append(
        ms - (acquired - began) * 1000 - sum(warm.timings_ms.values())
    )
    return ms


async def _cold_round(
    manager: SandboxManager, caps: ResourceCaps, binds: list[Bind], argv: list[str]
) -> float:
    began = time.monotonic()
    sandbox = await manager.create(SandboxSpec(agent_id="bench", caps=caps, binds=tuple(binds)))
    try:
        result = await manager.execute(sandbox.id, argv, timeout_s=120, env={"PYTHONPATH": PROGRAM_DIR})
    finally:
        await manager.destroy(sandbox.id)
        manager.forget(sandbox.id)
    return _first_line_ms(result, began)


async def _held_memory(manager: SandboxManager, pool: WarmPool, name: str) -> dict:
    await _full(pool, name)
    held = [manager.usage(w.id).memory_current_bytes for w in pool._idle[name]]
    held = [value for value in held if value is not None]
    return {"mb_each": [round(value / 2**20, 1) for value in held]}


def _host_busy_s() -> float:
    """CPU seconds the whole host has spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - fields[3] - fields[4]) / ticks


async def _throughput(manager: SandboxManager, pool: WarmPool | None, binds: list[Bind]) -> dict:
    """Cycles completed per minute by CONCURRENCY workers looping run_cycle, and where the
    host's CPU went per cycle: inside the sandboxes (each one's cgroup, warm-up included)
    and everything else (creating and destroying sandboxes, this process)."""
    done = {"warm": 0, "cold": 0, "failed": 0}
    inside_s = [0.0]
    deadline = time.monotonic() + THROUGHPUT_S
    spec = SandboxSpec(agent_id="bench", caps=CAPS, binds=tuple(binds), env={"PYTHONPATH": PROGRAM_DIR})

    async def worker() -> None:
        while time.monotonic() < deadline:
            result, warm, _ = await run_cycle(
                manager, pool, "numpy", spec, ["python", "/program/main.py"], timeout_s=120
            )
            done["failed" if result.exit_code != 0 else "warm" if warm else "cold"] += 1
            cgroup = (result.usage.get("sandbox_record") or {}).get("cgroup") or {}
            inside_s[0] += (cgroup.get("cpu_user_s") or 0.0) + (cgroup.get("cpu_system_s") or 0.0)

    busy = _host_busy_s()
    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.monotonic() - began
    busy = _host_busy_s() - busy
    cycles = done["warm"] + done["cold"]
    per_cycle = {
        "host_cpu_ms": round(busy * 1000 / max(1, cycles), 1),
        "inside_sandbox_cpu_ms": round(inside_s[0] * 1000 / max(1, cycles), 1),
    }
    per_cycle["outside_cpu_ms"] = round(per_cycle["host_cpu_ms"] - per_cycle["inside_sandbox_cpu_ms"], 1)
    return {
        "cycles_per_min": round(cycles * 60 / elapsed, 1), **done, "seconds": round(elapsed, 1),
        "cpu_per_cycle": per_cycle, "host_cores": os.cpu_count(),
    }  # fmt: skip


async def _measure(root: Path) -> dict:
    manager = SandboxManager(root / "state")
    await manager.start()
    numpy_binds = _program(root, "numpy-program", FIRST_LINE.format(module="numpy"))
    torch_binds = _program(root, "torch-program", FIRST_LINE.format(module="torch"))
    small_binds = _program(root, "small-program", SMALL_JOB)
    numpy_only = ["python", "-c", FIRST_LINE.format(module="numpy")]
    figures: dict = {}
    pool = WarmPool(manager, [WarmProfile("numpy", CAPS, size=2)])
    pool.start()
    try:
        samples: dict[str, list[float]] = {"warm": [], "fresh_import_numpy": [], "cold_path": []}
        steps: dict[str, list[float]] = {}
        for _ in range(ITERATIONS):
            samples["warm"].append(await _warm_round(pool, "numpy", numpy_binds, steps))
            await _full(pool, "numpy")
            samples["fresh_import_numpy"].append(await _cold_round(manager, CAPS, [], numpy_only))
            samples["cold_path"].append(
                await _cold_round(manager, CAPS, numpy_binds, ["python", "/program/main.py"])
            )
        figures["numpy"] = {name: _percentiles(values) for name, values in samples.items()}
        figures["numpy"]["warm_steps"] = {name: _percentiles(values) for name, values in steps.items()}
        figures["numpy"]["memory"] = await _held_memory(manager, pool, "numpy")
        figures["numpy"]["warmup_ms_p50"] = pool.status()["numpy"]["warmupMsP50"]
    finally:
        await pool.close()
    try:
        import torch  # noqa: F401 - only whether it is installed
    except ImportError:
        figures["torch"] = "torch is not installed: skipped"
    else:
        pool = WarmPool(
            manager, [WarmProfile("torch", TORCH_CAPS, ("numpy", "torch", "wondercraft_learn"), size=1)]
        )
        pool.start()
        try:
            samples = {"warm": [], "fresh_import_torch": []}
            steps = {}
            torch_only = ["python", "-c", FIRST_LINE.format(module="torch")]
            for _ in range(TORCH_ITERATIONS):
                samples["warm"].append(await _warm_round(pool, "torch", torch_binds, steps))
                await _full(pool, "torch")
                samples["fresh_import_torch"].append(await _cold_round(manager, TORCH_CAPS, [], torch_only))
            figures["torch"] = {name: _percentiles(values) for name, values in samples.items()}
            figures["torch"]["memory"] = await _held_memory(manager, pool, "torch")
            figures["torch"]["warmup_ms_p50"] = pool.status()["torch"]["warmupMsP50"]
        finally:
            await pool.close()
    if THROUGHPUT_S > 0:
        figures["throughput_cold"] = await _throughput(manager, None, small_binds)
        pool = WarmPool(manager, [WarmProfile("numpy", CAPS, size=CONCURRENCY)])
        pool.start()
        try:
            await _full(pool, "numpy")
            figures["throughput_warm"] = await _throughput(manager, pool, small_binds)
        finally:
            await pool.close()
    await manager.close()
    return figures


def _ratio(a, b) -> float | None:
    return round(a / b, 2) if a and b else None


def run() -> dict:
    gc.collect()
    gc.freeze()
    root = Path(tempfile.mkdtemp(prefix="wondercraft-bench-warm-"))
    os.chmod(root, 0o755)
    try:
        figures = asyncio.run(_measure(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    numpy_figures = figures["numpy"]
    print(f"   request -> first line, numpy imported    {'p50 ms':>8} {'p99 ms':>8}")
    for name in ("warm", "fresh_import_numpy", "cold_path"):
        print(f"   {name:<40} {numpy_figures[name]['p50_ms']:>8.2f} {numpy_figures[name]['p99_ms']:>8.2f}")
    figures["ratio_cold_path_vs_warm_p50"] = _ratio(
        numpy_figures["cold_path"]["p50_ms"], numpy_figures["warm"]["p50_ms"]
    )
    print(f"   cold path / warm, p50: {figures['ratio_cold_path_vs_warm_p50']}x")
    print("   warm steps (p50 / p99 ms):")
    for name, value in numpy_figures["warm_steps"].items():
        print(f"     {name:<38} {value['p50_ms']:>8.3f} {value['p99_ms']:>8.3f}")
    print(f"   memory held per warm numpy sandbox (MB): {numpy_figures['memory']['mb_each']}")
    if isinstance(figures.get("torch"), dict):
        torch_figures = figures["torch"]
        for name in ("warm", "fresh_import_torch"):
            print(
                f"   torch {name:<34} {torch_figures[name]['p50_ms']:>8.2f} {torch_figures[name]['p99_ms']:>8.2f}"
            )
        print(f"   memory held per warm torch sandbox (MB): {torch_figures['memory']['mb_each']}")
    else:
        print(f"   {figures.get('torch')}")
    if "throughput_warm" in figures:
        warm, cold = figures["throughput_warm"], figures["throughput_cold"]
        figures["ratio_throughput_warm_vs_cold"] = _ratio(warm["cycles_per_min"], cold["cycles_per_min"])
        print(
            f"   {CONCURRENCY} concurrent small jobs (runtime level, no service): warm {warm['cycles_per_min']}/min"
            f" ({warm['warm']} warm, {warm['cold']} cold), pool size 0 {cold['cycles_per_min']}/min:"
            f" {figures['ratio_throughput_warm_vs_cold']}x"
        )
        for name, part in (("warm", warm), ("pool size 0", cold)):
            cpu = part["cpu_per_cycle"]
            print(
                f"     {name}: host CPU per cycle {cpu['host_cpu_ms']} ms = inside the sandbox"
                f" {cpu['inside_sandbox_cpu_ms']} ms + creating, destroying and the rest {cpu['outside_cpu_ms']} ms"
            )
    return figures
