"""The learn cycle as a Ray task: it asks for one sandbox slot, the job's CPUs, GPUs and
memory, lands on a node that has them, and hands the attempt to that node's agent. Ray never
retries it: a node lost mid-cycle comes back to the service as a RETRY, and the service's own
retry policy decides (another node takes it)."""

from __future__ import annotations

import time

import ray

from .names import NAMESPACE, SLOT, agent_name

AGENT_WAIT_S = 60.0  # a node that just joined may still be creating its agent


class AgentMissing(RuntimeError):
    """The node this task landed on has no agent (it is starting, or was not started by
    `wondercraft node start`)."""


_agents: dict[str, object] = {}  # node id -> its agent's handle, per worker process


def _agent(node_id: str):
    if node_id in _agents:
        return _agents[node_id]
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            agent = _agents[node_id] = ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
            return agent
        except ValueError:
            if time.monotonic() > deadline:
                raise AgentMissing(f"node {node_id} has no wondercraft agent") from None
            time.sleep(0.2)


@ray.remote(max_retries=0, retry_exceptions=False)
def learn_cycle(settings, spec, shipped):
    return ray.get(_agent(ray.get_runtime_context().get_node_id()).run.remote(settings, spec, shipped))


def options_for(request: dict) -> dict:
    """The task's resource request from the job's caps: one slot, its cores (Ray counts whole or
    fractional CPUs), its GPUs and its memory in bytes. SPREAD puts concurrent cycles on different
    nodes where they fit, rather than packing the first node until it is half full."""
    caps = request["resourceCaps"]
    return {
        "resources": {SLOT: 1},
        "num_cpus": float(caps["cpu"]),
        "num_gpus": int(caps.get("gpu", 0) or 0),
        "memory": int(caps["memory"]) << 20,
        "scheduling_strategy": "SPREAD",
    }
