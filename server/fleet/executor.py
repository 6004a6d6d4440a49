"""The `ray` executor: each attempt of a learn cycle is a Ray task on a node of the cluster at
RAY_ADDRESS. Its inputs (every bind source of the attempt) travel by content hash through the
object store, put once per content; its outcome, deltas included, comes back the same way.
The cluster must require Ray's token auth: one that answers without a token is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path

from ..config import Settings
from ..errors import StartupRefused
from ..training.runner import AttemptSpec, CycleOutcome, Progress, Verdict
from ..vocabulary import FailureReason
from .cas import Content, digest, pack
from .names import NAMESPACE, SLOT, agent_name

log = logging.getLogger("wondercraft.fleet")

POLL_S = 0.5  # how often the nodes' agents are asked what runs on them
MAX_CACHED_CONTENTS = 256
MAX_CACHED_BYTES = 4 << 30  # contents the service keeps in the object store for later cycles


def requires_token(address: str, timeout_s: float = 10.0) -> bool:
    """Whether the cluster's GCS refuses a call that carries no token (token auth is on)."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address.removeprefix("ray://")) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return True
            raise StartupRefused(f"the Ray cluster at {address} does not answer: {exc.details()}") from None
    return False


def bind_sources(spec: AttemptSpec) -> list[Path]:
    """Every path of the attempt: what its sandbox binds (data, base model, program...)."""
    found = []
    for item in dataclasses.fields(spec):
        value = getattr(spec, item.name)
        is_path = isinstance(value, Path) or (isinstance(value, str) and value.startswith("/"))
        if is_path and Path(value).exists():
            found.append(Path(value))
    return found


class RayExecutor:
    name = "ray"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._contents: OrderedDict[tuple, tuple[Content, object]] = OrderedDict()
        self._running: dict[str, dict] = {}  # cycle -> its callbacks and node
        self._nodes: dict[str, dict] = {}  # node id -> last status of its agent
        self._poller: asyncio.Task | None = None
        self._ray = None

    async def start(self) -> None:
        if self._ray is not None:
            return
        address = self.settings.ray_address
        if os.environ.get("RAY_AUTH_MODE") != "token":
            raise StartupRefused("WONDERCRAFT_EXECUTOR=ray needs RAY_AUTH_MODE=token and the cluster's token")
        if not await asyncio.to_thread(requires_token, address):
            raise StartupRefused(f"the Ray cluster at {address} does not require token auth; refusing it")
        import ray

        await asyncio.to_thread(
            ray.init, address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING
        )
        self._ray = ray
        self._poller = asyncio.get_running_loop().create_task(self._poll())
        log.info("ray executor connected", extra={"address": address})

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._ray is not None:
            self._contents.clear()
            await asyncio.to_thread(self._ray.shutdown)

    # ---- inputs by content ----

    def _ship(self, source: Path) -> tuple[Content, object]:
        stat = source.stat()
        key = (str(source), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if source.is_file() and key in self._contents:
            self._contents.move_to_end(key)
            return self._contents[key]
        kind, data = pack(source)
        content = Content(str(source), kind, digest(data), len(data))
        for cached, ref in self._contents.values():
            if cached.sha256 == content.sha256 and cached.kind == kind:
                entry = (content, ref)  # the same bytes under another name: put once
                break
        else:
            entry = (content, self._ray.put(data))
        self._contents[key] = entry
        while len(self._contents) > 1 and (
            len(self._contents) > MAX_CACHED_CONTENTS
            or sum(c.size for c, _ in self._contents.values()) > MAX_CACHED_BYTES
        ):
            self._contents.popitem(last=False)  # a running task still holds its own reference
        return entry

    # ---- one attempt ----

    async def run(self, spec, *, on_sandbox, on_progress, on_node) -> CycleOutcome:
        from .task import learn_cycle, options_for

        ray = self._ray
        started = time.perf_counter()
        shipped = [(content, [ref]) for content, ref in
                   [await asyncio.to_thread(self._ship, path) for path in bind_sources(spec)]]  # fmt: skip
        self._running[spec.cycle_id] = {"attempt": spec.attempt, "on_sandbox": on_sandbox,
                                        "on_progress": on_progress, "on_node": on_node, "node": None}  # fmt: skip
        try:
            ref = learn_cycle.options(**options_for(spec.request)).remote(self.settings, spec, shipped)
            outcome: CycleOutcome = await ref
        except ray.exceptions.RayError as exc:
            node = self._running[spec.cycle_id]["node"]
            # A Python error of the task or the agent (not a process or node gone): the node
            # could not run the attempt, which another try (maybe elsewhere) may.
            raised = isinstance(exc, ray.exceptions.RayTaskError) and not isinstance(
                exc.cause, ray.exceptions.RayError
            )
            reason = FailureReason.SANDBOX_START if raised else FailureReason.NODE_LOST
            message = f"the learn cycle's node {node or '(unknown)'}: {type(exc).__name__}: {exc}"
            log.warning(
                "learn cycle attempt lost",
                extra={"cycle_id": spec.cycle_id, "node": node, "reason": str(reason)},
            )
            return CycleOutcome(Verdict.RETRY, reason, message[:2000], result={"node": node} if node else {})
        finally:
            self._running.pop(spec.cycle_id, None)
        # What Ray adds to the attempt: hashing and shipping its inputs, the task, the hop to the
        # node's agent, the outcome's way back (the node's own time in run_attempt left out).
        attempt_s = outcome.result.pop("attemptSeconds", None)
        if attempt_s is not None:
            outcome.result["dispatchOverheadSeconds"] = round(
                max(0.0, time.perf_counter() - started - attempt_s), 6
            )
        if outcome.result.get("node"):
            on_node(outcome.result["node"])
        return outcome

    # ---- the nodes ----

    async def _poll(self) -> None:
        while True:
            try:
                await self._refresh()
            except Exception:  # noqa: BLE001 - a failed poll is retried, never fatal
                log.debug("node poll failed", exc_info=True)
            await asyncio.sleep(POLL_S)

    async def _refresh(self) -> None:
        ray = self._ray
        nodes = await asyncio.to_thread(ray.nodes)
        alive = {n["NodeID"]: n for n in nodes if n.get("Alive")}
        for node_id in list(self._nodes):
            if node_id not in alive:
                self._nodes[node_id]["alive"] = False

        async def ask(node_id: str, info: dict) -> None:
            try:
                agent = ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
                status = await asyncio.wait_for(agent.status.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - no agent (yet), or it is gone
                status = None
            previous = self._nodes.get(node_id, {})
            self._nodes[node_id] = {
                "nodeId": node_id, "address": info.get("NodeManagerAddress"), "alive": True,
                "resources": info.get("Resources", {}), "agent": status or previous.get("agent"),
                "lastHeartbeat": time.time() if status else previous.get("lastHeartbeat"),
            }  # fmt: skip
            for entry in (status or {}).get("running", []):
                mine = self._running.get(entry["cycleId"])
                if mine is None or mine["attempt"] != entry["attempt"]:
                    continue
                if mine["node"] != status["node"]:
                    mine["node"] = status["node"]
                    mine["on_node"](status["node"])
                if entry.get("sandboxId"):
                    mine["on_sandbox"](entry["sandboxId"])
                if entry.get("progress"):
                    p = entry["progress"]
                    mine["on_progress"](Progress(p["epoch"], p["epochs"], p["loss"], p["accuracy"]))

        await asyncio.gather(*(ask(node_id, info) for node_id, info in alive.items()))

    async def nodes(self) -> list[dict]:
        """Each node the cluster knows: its address, slots in use of total, GPUs, running
        cycles and when its agent last answered."""
        listed = []
        for node_id, seen in sorted(self._nodes.items()):
            agent = seen.get("agent") or {}
            resources = seen.get("resources") or {}
            running = [e["cycleId"] for e in agent.get("running", [])] if seen["alive"] else []
            listed.append({
                "nodeId": node_id,
                "name": agent.get("node") or node_id[:12],
                "address": seen.get("address"),
                "alive": seen["alive"],
                "preflightOk": agent.get("preflightOk"),
                "slotsTotal": int(resources.get(SLOT, 0)),
                "slotsInUse": len(running),
                "gpus": int(resources.get("GPU", 0)),
                "runningCycles": running,
                "completedCycles": agent.get("completed", 0),
                "lastHeartbeat": int(seen["lastHeartbeat"] * 1000) if seen.get("lastHeartbeat") else None,
            })  # fmt: skip
        return listed
