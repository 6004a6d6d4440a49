"""PyTorch learn-cycle benchmark: the digits CNN program (tests/programs/digits_cnn) trained
once through a real sandbox (runtime's SandboxManager, cold: create, exec, destroy), beside
the same program as a plain process on the host and the same training in this process (torch
already imported). Each is split into interpreter start, `import torch`, data load and
training, from timestamps the program prints (bench/torch_phases.py); the medians of a few
runs are printed as ratios to the host process, and the totals to the in-process baseline."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime import mounts
from runtime.sandbox import ResourceCaps, SandboxManager, SandboxSpec

REPO = Path(__file__).resolve().parent.parent
PROGRAM = REPO / "tests" / "programs" / "digits_cnn" / "digits_cnn.py"
PHASES_SCRIPT = Path(__file__).resolve().with_name("torch_phases.py")
RUNS = 3
JOB = {"learningRate": 0.05, "batchSize": 32, "epochs": 5, "seed": 0, "hyperparameters": {}}
# One core, as a learn cycle usually gets: the sandbox's OMP_NUM_THREADS follows its cap, and
# the host process and in-process runs are held to the same thread count.
CAPS = ResourceCaps(cpu_cores=1.0, memory_mb=1024, pids=64, storage_mb=64)
PHASES = ("interpreter start", "import torch", "data load", "training")


def _layout(workspace: Path) -> None:
    """/program, /model, /data and /job.json under `workspace`, readable by a sandbox's own uid."""
    sys.path.insert(0, str(PROGRAM.parent))
    from digits_cnn import export
    from sklearn.datasets import load_digits

    for folder in ("program", "model", "data", "out"):
        (workspace / folder).mkdir(parents=True)
    shutil.copy(PROGRAM, workspace / "program" / PROGRAM.name)
    shutil.copy(PHASES_SCRIPT, workspace / "program" / "timed.py")
    parameters, _ = export(workspace / "export")
    shutil.copy(parameters, workspace / "model" / "base.safetensors")
    digits = load_digits()
    np.savez(workspace / "data" / "data.npz", x=(digits.data / 16).astype(np.float32), y=digits.target)
    (workspace / "job.json").write_text(json.dumps({**JOB, "numSamples": len(digits.target)}))
    for path in [workspace, *workspace.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chmod(workspace / "out", 0o777)


def _phases(launched: float, stderr: str, ended: float) -> dict[str, float]:
    stamps = json.loads(stderr.strip().splitlines()[-1])["stamps"]
    return {
        "interpreter start": stamps["started"] - launched,
        "import torch": stamps["torch"] - stamps["started"],
        "data load": stamps["data"] - stamps["torch"],
        "training": stamps["trained"] - stamps["data"],
        "total": ended - launched,
    }


def _host_process(workspace: Path) -> dict[str, float]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1",
        "WONDERCRAFT_LEARN_ROOT": str(workspace), "PYTHONPATH": str(REPO / "rootfs"),
    }  # fmt: skip
    launched = time.time()
    done = subprocess.run(
        [sys.executable, str(workspace / "program" / "timed.py")], env=env, capture_output=True, text=True
    )
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"the program failed on the host: {done.stderr[-2000:]}")
    return _phases(launched, done.stderr, ended)


def _in_process(workspace: Path) -> dict[str, float]:
    import torch
    from digits_cnn import train

    from rootfs import wondercraft_learn as wl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ[wl.ROOT_ENV] = str(workspace)
    original = wl.read_data
    stamps = {}

    def timed_read_data():
        data = original()
        stamps["data"] = time.time()
        return data

    wl.read_data = timed_read_data
    sys.modules["wondercraft_learn"] = wl  # the program's own `import wondercraft_learn`
    try:
        started = time.time()
        with contextlib.redirect_stderr(io.StringIO()):
            train()
        ended = time.time()
    finally:
        wl.read_data = original
        os.environ.pop(wl.ROOT_ENV, None)
        torch.set_num_threads(threads)
    return {
        "data load": stamps["data"] - started,
        "training": ended - stamps["data"],
        "total": ended - started,
    }


async def _sandboxed(manager: SandboxManager, workspace: Path) -> dict[str, float]:
    binds = (
        mounts.Bind(str(workspace / "program"), "/program"),
        mounts.Bind(str(workspace / "model"), mounts.MODEL_DIR),
        mounts.Bind(str(workspace / "data"), mounts.DATA_DIR),
        mounts.Bind(str(workspace / "job.json"), "/job.json"),
    )
    began = time.time()
    sandbox = await manager.create(SandboxSpec(agent_id="bench", caps=CAPS, binds=binds))
    try:
        launched = time.time()
        result = await manager.execute(
            sandbox.id, ["python", "/program/timed.py"], env={"PYTHONPATH": mounts.PROGRAM_DIR}, timeout_s=600
        )
        ended = time.time()
    finally:
        await manager.destroy(sandbox.id)
        manager.forget(sandbox.id)
    destroyed = time.time()
    if result.exit_code != 0:
        raise RuntimeError(
            f"the program failed in the sandbox: {result.stderr.decode(errors='replace')[-2000:]}"
        )
    phases = _phases(launched, result.stderr.decode(), ended)
    return {"sandbox create": launched - began, **phases, "sandbox destroy": destroyed - ended,
            "total": destroyed - began}  # fmt: skip


async def _measure(workspace: Path, state_dir: Path) -> dict[str, list[dict[str, float]]]:
    manager = SandboxManager(state_dir)
    await manager.start()
    runs: dict[str, list[dict[str, float]]] = {"sandbox": [], "host process": [], "in-process": []}
    try:
        _host_process(workspace)  # warms the page cache: torch's files are read once, from disk
        for _ in range(RUNS):
            # Interleaved, so that all three see the same load on a shared host.
            runs["sandbox"].append(await _sandboxed(manager, workspace))
            runs["host process"].append(_host_process(workspace))
            runs["in-process"].append(_in_process(workspace))
    finally:
        await manager.close()
    return runs


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _print(figures: dict[str, dict[str, float]]) -> None:
    sandbox, host, inner = figures["sandbox"], figures["host process"], figures["in-process"]
    ms = lambda value: f"{value * 1e3:9.0f} ms" if value is not None else f"{'-':>12}"  # noqa: E731
    print(f"   {'phase':<20}{'in-process':>12}{'host process':>14}{'sandbox':>12}{'sandbox/host':>14}")
    for phase in ("sandbox create", *PHASES, "sandbox destroy", "total"):
        ratio = f"{sandbox[phase] / host[phase]:13.2f}x" if phase in host and host[phase] > 0 else f"{'':14}"
        print(f"   {phase:<20}{ms(inner.get(phase))}{ms(host.get(phase)):>14}{ms(sandbox[phase])}{ratio}")
    print(
        f"   one PyTorch cycle: sandbox {sandbox['total']:.2f} s = {sandbox['total'] / inner['total']:.2f}x "
        f"the in-process training ({inner['total']:.2f} s), {sandbox['total'] / host['total']:.2f}x a host process"
    )


def run() -> dict:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("torch is missing: `make install` installs the torch extra") from None
    root = Path(tempfile.mkdtemp(prefix="wondercraft-bench-torch-"))
    try:
        os.chmod(root, 0o755)
        _layout(root / "workspace")
        runs = asyncio.run(_measure(root / "workspace", root / "state"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures = {name: _median(values) for name, values in runs.items()}
    _print(figures)
    result = {
        name: {phase.replace(" ", "_") + "_ms": round(value * 1e3, 1) for phase, value in phases.items()}
        for name, phases in figures.items()
    }
    result["sandbox_over_in_process"] = round(figures["sandbox"]["total"] / figures["in-process"]["total"], 2)
    result["sandbox_over_host_process"] = round(
        figures["sandbox"]["total"] / figures["host process"]["total"], 2
    )
    result["runs"] = RUNS
    return result
