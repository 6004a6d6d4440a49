"""Petal-training benchmark: one learn cycle's wall time through the service (queue,
sandbox, learn program, result parsing) beside the same training in-process, and
completed cycles per minute with 10 concurrent small jobs."""

from __future__ import annotations

import statistics
import time

import numpy as np

from rootfs import models

from .service import Service, call

CYCLES_MEASURED = 10
THROUGHPUT_CYCLES = 40
JOB_PARAMS = {"learningRate": 0.05, "batchSize": 32, "epochs": 10}


def _job(name: str, x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    return {
        "modelType": f"softmax:{name}",
        "modelConfig": {"inputDim": x.shape[1], "numClasses": 4},
        "dataBatch": [{"x": row.tolist(), "y": float(label)} for row, label in zip(x, y, strict=True)],
        "trainingParams": JOB_PARAMS,
        "resourceCaps": {"cpu": 1, "memory": 512},
        "seed": seed,
    }


def _wait(service: Service, token: str, cycle_id: str) -> dict:
    while True:
        status, body = call("GET", f"{service.url}/v1/petals/status/{cycle_id}", token=token)
        if body["status"] in ("completed", "failed", "aggregated"):
            return body
        time.sleep(0.005)


def run() -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 32)).astype(np.float32)
    y = rng.integers(0, 4, 512).astype(np.float32)
    signature = models.Signature("softmax", 32, 4, ())
    base = models.initial_parameters(signature, "softmax:bench")

    in_process = []
    for seed in range(CYCLES_MEASURED):
        started = time.perf_counter()
        models.train(signature, base, x, y, learning_rate=0.05, batch_size=32, epochs=10, seed=seed)
        in_process.append(time.perf_counter() - started)

    with Service(PETALS_MAX_CONCURRENT_CYCLES="10", TELEMETRY_FLUSH_INTERVAL="1") as service:
        token = service.agent("bench")
        sandboxed, inside = [], []
        for seed in range(CYCLES_MEASURED):
            started = time.perf_counter()
            status, body = call(
                "POST", service.url + "/v1/petals/train", _job(f"one{seed}", x, y, seed), token=token
            )
            assert status == 202, body
            done = _wait(service, token, body["cycleId"])
            sandboxed.append(time.perf_counter() - started)
            assert done["status"] in ("completed", "aggregated"), done
            inside.append(done["result"]["metrics"]["duration"])

        agents = [service.agent(f"load{i}") for i in range(10)]
        started = time.perf_counter()
        pending = []
        for i in range(THROUGHPUT_CYCLES):
            token_i = agents[i % 10]
            status, body = call("POST", service.url + "/v1/petals/train", _job(f"tp{i}", x[:128], y[:128], i),
                                token=token_i)  # fmt: skip
            assert status == 202, body
            pending.append((token_i, body["cycleId"]))
        results = [_wait(service, t, c) for t, c in pending]
        elapsed = time.perf_counter() - started
        completed = sum(r["status"] in ("completed", "aggregated") for r in results)

    p50 = statistics.median
    figures = {
        "one_cycle_sandboxed_p50_ms": round(p50(sandboxed) * 1e3, 1),
        "one_cycle_in_process_p50_ms": round(p50(in_process) * 1e3, 1),
        "learn_program_inside_p50_ms": round(p50(inside) * 1e3, 1),
        "overhead_ms": round((p50(sandboxed) - p50(in_process)) * 1e3, 1),
        "ratio_sandboxed_vs_in_process": round(p50(sandboxed) / p50(in_process), 2),
        "throughput_cycles": THROUGHPUT_CYCLES,
        "throughput_completed": completed,
        "throughput_seconds": round(elapsed, 2),
        "cycles_per_minute_10_concurrent": round(completed / elapsed * 60, 1),
    }
    print(f"   one cycle (softmax 32->4, 512 samples, 10 epochs), p50 of {CYCLES_MEASURED}:")
    print(f"     through the service, in a sandbox   {figures['one_cycle_sandboxed_p50_ms']:>8.1f} ms")
    print(f"     same training in-process             {figures['one_cycle_in_process_p50_ms']:>8.1f} ms")
    print(f"     learn program's own time (inside)    {figures['learn_program_inside_p50_ms']:>8.1f} ms")
    print(f"     overhead {figures['overhead_ms']:.1f} ms, ratio {figures['ratio_sandboxed_vs_in_process']}x")
    print(f"   {completed}/{THROUGHPUT_CYCLES} cycles with 10 concurrent in {elapsed:.1f} s: "
          f"{figures['cycles_per_minute_10_concurrent']} cycles/min")  # fmt: skip
    return figures
