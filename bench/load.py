"""API load benchmark: GET /v1/petals/status/:id and GET /v1/sandbox/status/:id at
sustained concurrency from a second process while 10 learn cycles train, beside a bare
aiohttp hello-world handler measured in the same run under the same training load; with
the service's own record of its worst event-loop lag."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import numpy as np

from .service import ADMIN_TOKEN, Service, call, free_port

CONCURRENCY = 16
DURATION_S = 8.0
HELLO = """
import sys
from aiohttp import web
async def hello(request):
    return web.json_response({"status": "ok"})
app = web.Application()
app.router.add_get("/hello", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _loadgen(urls: list[str], token: str | None) -> dict:
    argv = [sys.executable, "-m", "bench.loadgen", *urls, "--concurrency", str(CONCURRENCY),
            "--duration", str(DURATION_S)]  # fmt: skip
    if token:
        argv += ["--token", token]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=DURATION_S + 60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _metric(service: Service, name: str) -> float | None:
    request = urllib.request.Request(
        service.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def _training_job(name: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1500, 32))
    y = rng.integers(0, 4, 1500)
    return {
        "modelType": f"softmax:{name}",
        "modelConfig": {"inputDim": 32, "numClasses": 4},
        "dataBatch": [{"x": row.tolist(), "y": float(label)} for row, label in zip(x, y, strict=True)],
        "trainingParams": {"learningRate": 0.01, "batchSize": 8, "epochs": 600},
        # Ten cycles capped at a tenth of a core each take one of this host's two cores,
        # for as long as the measurement runs; the service and the load generator share the other.
        "resourceCaps": {"cpu": 0.1, "memory": 512},
        "seed": seed,
    }


def _start_hello() -> tuple[subprocess.Popen, str]:
    port = free_port()
    hello = subprocess.Popen([sys.executable, "-c", HELLO, str(port)])
    url = f"http://127.0.0.1:{port}/hello"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return hello, url
        except OSError:
            time.sleep(0.05)
    hello.kill()
    raise RuntimeError("the hello-world server did not start")


def run() -> dict:
    hello, hello_url = _start_hello()
    try:
        with Service(PETALS_MAX_CONCURRENT_CYCLES="10", TELEMETRY_FLUSH_INTERVAL="1") as service:
            token = service.agent("load")
            status, sandbox = call(
                "POST",
                service.url + "/v1/sandbox/create",
                {"resourceCaps": {"cpu": 0.5, "memory": 128}},
                token=token,
            )
            assert status == 201, sandbox
            cycles = []
            for i in range(10):
                status, body = call(
                    "POST", service.url + "/v1/petals/train", _training_job(f"load{i}", i), token=token
                )
                assert status == 202, body
                cycles.append(body["cycleId"])
            # Wait until the cycles are training, then measure both servers while they run:
            # the same background load for the bare handler and for the service.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                states = [
                    call("GET", f"{service.url}/v1/petals/status/{c}", token=token)[1]["status"]
                    for c in cycles
                ]
                if states.count("running") >= 10:
                    break
                time.sleep(0.1)
            bare = _loadgen([hello_url], None)
            urls = [
                f"{service.url}/v1/petals/status/{cycles[0]}",
                f"{service.url}/v1/sandbox/status/{sandbox['sandboxId']}",
            ]
            loaded = _loadgen(urls, token)
            states = [
                call("GET", f"{service.url}/v1/petals/status/{c}", token=token)[1]["status"] for c in cycles
            ]
            lag_max = _metric(service, "wondercraft_event_loop_lag_max_seconds")
    finally:
        hello.terminate()
        hello.wait()

    figures = {
        "concurrency": CONCURRENCY,
        "duration_s": DURATION_S,
        "bare_hello_while_training": bare,
        "wondercraft_status_while_training": loaded,
        "cycles_still_training_at_end": states.count("running"),
        "throughput_vs_bare": round(loaded["rps"] / bare["rps"], 3),
        "event_loop_lag_max_ms": round(lag_max * 1e3, 2) if lag_max is not None else None,
    }
    print(f"   both measured while 10 learn cycles train ({CONCURRENCY} connections, {DURATION_S:g} s each)")
    print(f"   {'':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, row in (("bare aiohttp hello", bare), ("cycle + sandbox status", loaded)):
        print(
            f"   {name:<34} {row['rps']:>8.1f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['errors']:>7}"
        )
    print(f"   throughput vs bare: {figures['throughput_vs_bare']:.2f}x; max event-loop lag "
          f"{figures['event_loop_lag_max_ms']} ms; cycles still training at the end: "
          f"{figures['cycles_still_training_at_end']}")  # fmt: skip
    return figures
