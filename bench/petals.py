"""Petal-training benchmark: one learn cycle's wall time through the service (queue,
sandbox, learn program, result parsing) beside the same training in-process, and
completed cycles per minute with 10 concurrent small jobs; each on a service with pool size
0 and on one with a warm pool (WARM_POOL=numpy=10), in the same run."""

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


def _pool_full(service: Service) -> None:
    """Until the warm pool holds its size again (a refill never loads the cycle measured)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, status = call("GET", service.url + "/v1/admin/status")
        pool = (status.get("warmPool") or {}).get("numpy")
        if pool is None or (pool["idle"] == pool["size"] and not pool["warming"]):
            return
        time.sleep(0.02)


def _through_service(x: np.ndarray, y: np.ndarray, warm_pool: str) -> dict:
    """One cycle's latency (p50 of CYCLES_MEASURED) and the burst's cycles per minute, on a
    service with WARM_POOL=warm_pool ("" is pool size 0). Both services give a job that asks
    for no more the same caps, so the pool's profile fits the bench's jobs."""
    env = {"PETALS_MAX_CONCURRENT_CYCLES": "10", "TELEMETRY_FLUSH_INTERVAL": "1", "WARM_POOL": warm_pool,
           "SANDBOX_DEFAULT_CPU": "1", "SANDBOX_DEFAULT_MEMORY": "512", "PETALS_AUTO_CREATE_MODELS": "1"}  # fmt: skip
    with Service(**env) as service:
        token = service.agent("bench")
        sandboxed, inside, warm_hits = [], [], 0
        for seed in range(CYCLES_MEASURED):
            _pool_full(service)
            started = time.perf_counter()
            status, body = call(
                "POST", service.url + "/v1/petals/train", _job(f"one{seed}", x, y, seed), token=token
            )
            assert status == 202, body
            done = _wait(service, token, body["cycleId"])
            sandboxed.append(time.perf_counter() - started)
            assert done["status"] in ("completed", "aggregated"), done
            inside.append(done["result"]["metrics"]["durationSeconds"])
            warm_hits += done["result"]["resourceRecord"].get("warmStart") is not None

        agents = [service.agent(f"load{i}") for i in range(10)]
        _pool_full(service)
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
        burst_warm = sum(
            r.get("result", {}).get("resourceRecord", {}).get("warmStart") is not None for r in results
        )
    return {
        "one_cycle_p50_ms": round(statistics.median(sandboxed) * 1e3, 1),
        "learn_program_inside_p50_ms": round(statistics.median(inside) * 1e3, 1),
        "one_cycle_warm": warm_hits,
        "throughput_completed": completed,
        "throughput_warm": burst_warm,
        "throughput_seconds": round(elapsed, 2),
        "cycles_per_minute_10_concurrent": round(completed / elapsed * 60, 1),
    }


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
    in_process_ms = statistics.median(in_process) * 1e3
    cold = _through_service(x, y, "")
    warm = _through_service(x, y, "numpy=10")

    figures = {
        "one_cycle_in_process_p50_ms": round(in_process_ms, 1),
        "cold": cold,
        "warm_pool_numpy_10": warm,
        "ratio_cold_vs_in_process": round(cold["one_cycle_p50_ms"] / in_process_ms, 2),
        "ratio_warm_vs_in_process": round(warm["one_cycle_p50_ms"] / in_process_ms, 2),
        "ratio_one_cycle_cold_vs_warm": round(cold["one_cycle_p50_ms"] / warm["one_cycle_p50_ms"], 2),
        "ratio_throughput_warm_vs_cold": round(
            warm["cycles_per_minute_10_concurrent"] / cold["cycles_per_minute_10_concurrent"], 2
        ),
        "throughput_cycles": THROUGHPUT_CYCLES,
    }
    print(
        f"   one cycle (softmax 32->4, 512 samples, 10 epochs), p50 of {CYCLES_MEASURED}, through the service:"
    )
    print(f"     pool size 0 (cold sandbox)           {cold['one_cycle_p50_ms']:>8.1f} ms")
    print(f"     warm pool (numpy=10)                 {warm['one_cycle_p50_ms']:>8.1f} ms"
          f"  ({warm['one_cycle_warm']}/{CYCLES_MEASURED} warm)")  # fmt: skip
    print(f"     same training in-process             {figures['one_cycle_in_process_p50_ms']:>8.1f} ms")
    print(f"     learn program's own time (inside)    {cold['learn_program_inside_p50_ms']:>8.1f} ms")
    print(f"     cold / warm {figures['ratio_one_cycle_cold_vs_warm']}x; against in-process: cold "
          f"{figures['ratio_cold_vs_in_process']}x, warm {figures['ratio_warm_vs_in_process']}x")  # fmt: skip
    for name, part in (("pool size 0", cold), ("warm pool", warm)):
        print(f"   {name}: {part['throughput_completed']}/{THROUGHPUT_CYCLES} cycles with 10 concurrent in "
              f"{part['throughput_seconds']:.1f} s: {part['cycles_per_minute_10_concurrent']} cycles/min "
              f"({part['throughput_warm']} warm)")  # fmt: skip
    print(f"   warm / cold throughput: {figures['ratio_throughput_warm_vs_cold']}x")
    return figures
