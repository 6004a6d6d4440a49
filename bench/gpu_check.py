"""Proves GPU isolation on a GPU host, against a running service:

1. registers the PyTorch digits CNN (tests/programs/digits_cnn) as a model with a program;
2. a sandbox with `gpu: 1` sees exactly one /dev/nvidiaN, the control nodes and
   CUDA_VISIBLE_DEVICES, torch counts one device and a CUDA matmul runs; a training cycle with
   `gpu: 1` trains on it (its metrics' cudaDevices is 1);
3. a sandbox (and a cycle) with `gpu: 0` sees no GPU at all;
4. asking for more GPUs than are free is refused, both in one request and once every free GPU
   is held by other sandboxes.

    python -m bench.gpu_check --url http://127.0.0.1:3000 --admin-token "$(cat var/admin.token)"

The service must offer GPUs (resourceLimits.gpu of 1 or more). It needs torch where it runs
(to export the model) and prints one line per check; the exit status is 0 only when every
check passed. Everything it creates is removed at the end."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

PROGRAM = Path(__file__).resolve().parent.parent / "tests" / "programs" / "digits_cnn" / "digits_cnn.py"
CYCLE_ENDS = ("completed", "failed", "aggregated")
REFUSED = (400, 409, 429, 503)
# What a sandbox reports about its GPUs, as one JSON line.
PROBE = """
import glob, json, os
seen = {"nodes": sorted(glob.glob("/dev/nvidia*")), "cudaVisibleDevices": os.environ.get("CUDA_VISIBLE_DEVICES")}
import torch
seen["deviceCount"] = torch.cuda.device_count()
if seen["deviceCount"]:
    a = torch.arange(16.0, device="cuda").reshape(4, 4)
    seen["matmulSum"] = float((a @ a).sum().item())
    seen["deviceName"] = torch.cuda.get_device_name(0)
print(json.dumps(seen))
"""
# sum(a @ a) for a = arange(16).reshape(4, 4): the CUDA result must be exactly this.
MATMUL_SUM = float(sum(sum(4 * i + k for i in range(4)) * sum(4 * k + j for j in range(4)) for k in range(4)))
SANDBOX_CAPS = {"cpu": 1, "memory": 4096}


@dataclass
class Report:
    results: list[tuple[bool, str, str]] = field(default_factory=list)

    def check(self, passed: bool, name: str, detail: Any = "") -> bool:
        detail = detail if isinstance(detail, str) else json.dumps(detail)[:600]
        self.results.append((passed, name, detail))
        print(f"{'PASS' if passed else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)
        return passed

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(ok for ok, _, _ in self.results)


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url.rstrip("/")

    async def call(self, method: str, path: str, token: str, **kwargs) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


def _export(directory: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(PROGRAM.parent))
    from digits_cnn import export  # the same file the sandbox runs

    return export(directory)


def _dataset() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.random((256, 64), dtype=np.float32), y=rng.integers(0, 10, 256))
    return buffer.getvalue()


def _find(tree: Any, key: str) -> Any:
    """The first value under `key` anywhere in a JSON tree (a cycle's metrics sit in its result)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = _find(item, key)
            if found is not None:
                return found
    return None


class GpuCheck:
    def __init__(self, client: Client, admin_token: str, timeout_s: float) -> None:
        self.client, self.admin, self.timeout_s = client, admin_token, timeout_s
        suffix = secrets.token_hex(3)
        self.agent, self.model = f"gpu-check-{suffix}", f"gpu-check-cnn-{suffix}"
        self.token = ""
        self.dataset_id: str | None = None
        self.sandboxes: list[str] = []
        self.report = Report()

    # ---- set-up ----

    async def start(self) -> bool:
        status, body = await self.client.call("GET", "/v1/admin/status", self.admin)
        if status != 200:
            return self.report.check(False, "service reachable with the admin token", body)
        self.gpus = body.get("gpus", {})
        if not self.report.check(self.gpus.get("total", 0) >= 1, "the service has GPUs", self.gpus):
            return False
        status, body = await self.client.call("POST", "/v1/agents", self.admin, json={"agentId": self.agent})
        if status != 201:
            return self.report.check(False, "register an agent", body)
        self.token = body["token"]
        return True

    async def register_model(self) -> bool:
        with tempfile.TemporaryDirectory() as directory:
            parameters, graph = await asyncio.to_thread(_export, Path(directory))
            spec = {"modelType": self.model, "entrypoint": PROGRAM.name, "roundPolicy": {"minClients": 1},
                    "hyperparameters": {}}  # fmt: skip
            form = aiohttp.FormData()
            form.add_field("spec", json.dumps(spec), content_type="application/json", filename="spec.json")
            form.add_field(
                "program", PROGRAM.read_bytes(), filename=PROGRAM.name, content_type="text/x-python"
            )
            form.add_field("parameters", parameters.read_bytes(), filename=parameters.name)
            form.add_field("onnx", graph.read_bytes(), filename=graph.name)
            status, body = await self.client.call("POST", "/v1/petals/models", self.admin, data=form)
        if not self.report.check(status == 201, "1. register the PyTorch program", f"HTTP {status}"):
            print(f"      {body}", flush=True)
            return False
        status, body = await self.client.call(
            "POST", f"/v1/datasets?name={self.agent}", self.token, data=_dataset(),
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        if status not in (200, 201):
            return self.report.check(False, "upload a dataset", body)
        self.dataset_id = body["datasetId"]
        return True

    # ---- sandboxes ----

    async def create_sandbox(self, gpu_count: int) -> tuple[int, Any]:
        caps = {**SANDBOX_CAPS, "gpu": gpu_count}
        status, body = await self.client.call(
            "POST", "/v1/sandbox/create", self.token, json={"resourceCaps": caps, "lifetimeSeconds": 600}
        )
        if status == 201:
            self.sandboxes.append(body["sandboxId"])
        return status, body

    async def probe(self, sandbox_id: str) -> dict:
        status, body = await self.client.call(
            "POST", "/v1/sandbox/execute", self.token,
            json={"sandboxId": sandbox_id, "command": ["python", "-c", PROBE], "timeoutSeconds": 300},
        )  # fmt: skip
        if status != 200 or body.get("exitCode") != 0:
            return {"error": f"HTTP {status}", "body": body}
        return json.loads(body["stdout"].strip().splitlines()[-1])

    async def check_one_gpu(self) -> None:
        status, body = await self.create_sandbox(1)
        if not self.report.check(
            status == 201, "2. a sandbox with gpu: 1 is created", f"HTTP {status}: {_message(body)}"
        ):
            return
        seen = await self.probe(body["sandboxId"])
        gpu_nodes = [n for n in seen.get("nodes", []) if n[len("/dev/nvidia") :].isdigit()]
        self.report.check(len(gpu_nodes) == 1, "2. exactly one /dev/nvidiaN inside", seen.get("nodes", seen))
        self.report.check(
            {"/dev/nvidiactl", "/dev/nvidia-uvm"} <= set(seen.get("nodes", [])),
            "2. nvidiactl and nvidia-uvm inside", seen.get("nodes", seen),
        )  # fmt: skip
        visible = seen.get("cudaVisibleDevices")
        self.report.check(
            bool(visible) and "," not in visible, "2. CUDA_VISIBLE_DEVICES names one GPU", visible
        )
        self.report.check(seen.get("deviceCount") == 1, "2. torch.cuda.device_count() == 1", seen)
        self.report.check(
            seen.get("matmulSum") == MATMUL_SUM, "2. a CUDA matmul runs", seen.get("deviceName", seen)
        )
        await self.delete_sandboxes()

    async def check_no_gpu(self) -> None:
        status, body = await self.create_sandbox(0)
        if not self.report.check(
            status == 201, "3. a sandbox with gpu: 0 is created", f"HTTP {status}: {_message(body)}"
        ):
            return
        seen = await self.probe(body["sandboxId"])
        self.report.check(seen.get("nodes") == [], "3. no /dev/nvidia* inside", seen)
        self.report.check(seen.get("cudaVisibleDevices") is None, "3. no CUDA_VISIBLE_DEVICES", seen)
        self.report.check(seen.get("deviceCount") == 0, "3. torch sees no CUDA device", seen)
        await self.delete_sandboxes()

    async def check_refusals(self) -> None:
        free = int(self.gpus.get("free", self.gpus.get("total", 0)))
        status, body = await self.create_sandbox(free + 1)
        self.report.check(status in REFUSED, f"4. gpu: {free + 1} with {free} free is refused",
                          f"HTTP {status}: {_message(body)}")  # fmt: skip
        held = []
        for _ in range(free):
            status, body = await self.create_sandbox(1)
            if status != 201:
                break
            held.append(body["sandboxId"])
        if len(held) == free:
            status, body = await self.create_sandbox(1)
            self.report.check(status in REFUSED, f"4. gpu: 1 while all {free} are held is refused",
                              f"HTTP {status}: {_message(body)}")  # fmt: skip
        else:
            self.report.check(
                False, f"4. hold all {free} free GPUs one sandbox each", f"HTTP {status}: {body}"
            )
        await self.delete_sandboxes()

    async def delete_sandboxes(self) -> None:
        for sandbox_id in self.sandboxes:
            await self.client.call("DELETE", f"/v1/sandbox/{sandbox_id}", self.token)
        self.sandboxes.clear()

    # ---- training cycles ----

    async def train(self, gpu_count: int, seed: int) -> dict:
        job = {"modelType": self.model, "datasetId": self.dataset_id, "seed": seed,
               "trainingParams": {"learningRate": 0.05, "batchSize": 32, "epochs": 2},
               "resourceCaps": {**SANDBOX_CAPS, "gpu": gpu_count}}  # fmt: skip
        status, body = await self.client.call("POST", "/v1/petals/train", self.token, json=job)
        if status != 202:
            return {"status": f"HTTP {status}", "body": body}
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            status, cycle = await self.client.call("GET", f"/v1/petals/status/{body['cycleId']}", self.token)
            if status == 200 and cycle.get("status") in CYCLE_ENDS:
                return cycle
            await asyncio.sleep(0.5)
        return {"status": "timed out", "cycleId": body["cycleId"]}

    async def check_training(self) -> None:
        for gpu_count, expected in ((1, 1), (0, 0)):
            cycle = await self.train(gpu_count, seed=gpu_count)
            trained = cycle.get("status") in ("completed", "aggregated")
            devices = _find(cycle.get("result"), "cudaDevices")
            step = 2 if gpu_count else 3
            self.report.check(trained and devices == expected,
                              f"{step}. a training cycle with gpu: {gpu_count} sees {expected} CUDA device(s)",
                              {"status": cycle.get("status"), "cudaDevices": devices, "error": cycle.get("error")})  # fmt: skip

    async def clean_up(self) -> None:
        await self.delete_sandboxes()
        if self.dataset_id:
            await self.client.call("DELETE", f"/v1/datasets/{self.dataset_id}", self.token)
        await self.client.call("DELETE", f"/v1/petals/models/{self.model}", self.admin)
        await self.client.call("DELETE", f"/v1/agents/{self.agent}", self.admin)


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body))
    return str(body)[:300]


async def main_async(url: str, admin_token: str, timeout_s: float) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s + 60)) as session:
        check = GpuCheck(Client(session, url), admin_token, timeout_s)
        try:
            if await check.start():
                print(f"      GPUs on the service: {check.gpus}", flush=True)
                registered = await check.register_model()
                await check.check_one_gpu()
                await check.check_no_gpu()
                await check.check_refusals()
                if registered:
                    await check.check_training()
        finally:
            await check.clean_up()
    passed = sum(ok for ok, _, _ in check.report.results)
    print(f"gpu check: {passed} of {len(check.report.results)} checks passed", flush=True)
    return 0 if check.report.passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the service's base URL")
    parser.add_argument("--admin-token", default=os.environ.get("WONDERCRAFT_ADMIN_TOKEN"),
                        help="the admin token (default: $WONDERCRAFT_ADMIN_TOKEN)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a training cycle may take")
    args = parser.parse_args(argv)
    if not args.admin_token:
        parser.error("--admin-token (or WONDERCRAFT_ADMIN_TOKEN) is required")
    return asyncio.run(main_async(args.url, args.admin_token, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
