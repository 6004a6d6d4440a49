"""`wondercraft node start|stop`: a GPU host joins (or leaves) the Ray cluster of a service.

start: preflight, sweep what an earlier run of this node left (before any cycle can land),
`ray start` advertising SLOT resources (zero when preflight fails: the node takes no cycles),
its GPUs and its preflight result as a label, then the node's agent pinned to it.
stop: drain (Ray schedules nothing new here), wait for running cycles to end, `ray stop`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from runtime.gpu import discover as discover_gpus

from ..errors import StartupRefused
from .names import NAMESPACE, SLOT, agent_name


def _ray_cli() -> str:
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray") or "ray"


def _require_token() -> None:
    if os.environ.get("RAY_AUTH_MODE") != "token":
        raise StartupRefused("a node joins only a cluster with token auth: set RAY_AUTH_MODE=token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").exists()):  # fmt: skip
        raise StartupRefused(
            "no Ray token: set RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) to the cluster's token"
        )


def preflight(state_dir: Path) -> tuple[bool, list[dict]]:
    from ..preflight import FAIL, run

    checks = run(state_dir)
    return all(c.status != FAIL for c in checks), [c.to_json() for c in checks]


def sweep(state_dir: Path) -> dict:
    """The orphans of this node's earlier sandboxes (same state dir, same instance) removed."""
    from .agent import NodeAgent  # the whole service stack: only when a node really starts

    agent = NodeAgent(str(state_dir), "sweep", 0, 0, True)

    async def go() -> dict:
        swept = await agent.start()
        await agent.manager.close()
        return swept

    return asyncio.run(go())


def _connect(args: argparse.Namespace) -> None:
    """A driver on this host's node (found by its address: the one this node advertises)."""
    import ray

    extra = {"_node_ip_address": args.node_ip_address} if args.node_ip_address else {}
    ray.init(address=args.address, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING", **extra)


def start(args: argparse.Namespace) -> int:
    _require_token()
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = args.name or socket.gethostname()
    ok, checks = preflight(state_dir)
    failed = [c["check"] for c in checks if c["status"] == "fail"]
    swept = sweep(state_dir) if ok else {}
    gpus = len(discover_gpus())
    slots = (args.slots if args.slots is not None else max(1, os.cpu_count() or 1)) if ok else 0
    command = [
        _ray_cli(), "start", "--address", args.address, "--node-name", name,
        "--resources", json.dumps({SLOT: slots}), "--num-gpus", str(gpus),
        "--labels", json.dumps({"wondercraft-preflight": "pass" if ok else "fail"}),
        "--disable-usage-stats", *(["--node-ip-address", args.node_ip_address] if args.node_ip_address else []),
        *args.ray_args,
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=sys.stderr if args.quiet else None)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .agent import NodeAgent

    _connect(args)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        agent = (
            ray.remote(NodeAgent)
            .options(
                name=agent_name(node_id),
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=0,
                max_concurrency=1000,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            )  # fmt: skip
            .remote(str(state_dir), name, slots, gpus, ok)
        )
        ray.get(agent.start.remote(), timeout=120)
    finally:
        ray.shutdown()
    print(json.dumps({"node": name, "nodeId": node_id, "slots": slots, "gpus": gpus,
                      "preflightOk": ok, "preflightFailed": failed, "swept": swept}))  # fmt: skip
    return 0


def stop(args: argparse.Namespace) -> int:
    """Drains this node, waits (at most --timeout) for its running cycles, then stops Ray here.
    A cycle still running at the timeout dies with the node and is retried on another."""
    import ray

    _connect(args)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        subprocess.run([_ray_cli(), "drain-node", "--address", args.address, "--node-id", node_id,
                        "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "wondercraft node stop",
                        "--deadline-remaining-seconds", str(int(args.timeout))],
                       check=False, stdout=sys.stderr)  # fmt: skip
        left = 0
        try:
            agent = ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
            left = ray.get(agent.drain.remote(float(args.timeout)), timeout=args.timeout + 30)
        except ValueError:
            pass  # no agent: nothing of ours runs here
    finally:
        ray.shutdown()
    subprocess.run([_ray_cli(), "stop"], check=False, stdout=sys.stderr)
    print(json.dumps({"nodeId": node_id, "stillRunning": left}))
    return 0


def add_parser(commands) -> None:
    node = commands.add_parser("node", help="join this host to (or take it out of) a Ray cluster")
    actions = node.add_subparsers(dest="action", required=True)
    run = actions.add_parser("start", help="preflight, sweep orphans, `ray start` with sandbox slots")
    run.add_argument("--address", required=True, help="the head's HOST:PORT")
    run.add_argument("--state-dir", default="/var/lib/wondercraft-node", help="sandboxes and the input cache")
    run.add_argument("--name", help="the node's name in `wondercraft-ctl nodes` (default: hostname)")
    run.add_argument(
        "--slots", type=int, help="learn cycles at once (default: CPU count; 0 if preflight fails)"
    )
    run.add_argument("--node-ip-address", help="the address this node advertises (default: Ray's guess)")
    run.add_argument("--quiet", action="store_true", help="ray start's output to stderr")
    run.add_argument("ray_args", nargs=argparse.REMAINDER, help="after --: passed to `ray start`")
    run.set_defaults(func=lambda a: start(_strip(a)))
    halt = actions.add_parser("stop", help="drain, wait for running cycles, `ray stop`")
    halt.add_argument("--address", required=True, help="the head's HOST:PORT")
    halt.add_argument("--node-ip-address", help="this node's address, as given to node start")
    halt.add_argument("--timeout", type=float, default=600.0, help="seconds running cycles get to end")
    halt.set_defaults(func=stop)


def _strip(args: argparse.Namespace) -> argparse.Namespace:
    if args.ray_args and args.ray_args[0] == "--":
        args.ray_args = args.ray_args[1:]
    return args
