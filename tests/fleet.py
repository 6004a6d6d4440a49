"""A real Ray cluster on this machine for the fleet tests: a head and worker nodes, each in
its own network namespace with its own address on a bridge that lives in a namespace of its
own (veth pairs), token auth on. Every name carries this run's id; `close` removes all of it,
on failure too: the processes of each namespace (killed by namespace, never by name), the
namespaces, and the nodes' sandboxes (their instances are registered with tests/leftovers)."""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.helpers import clean_env, wait_until
from tests.leftovers import RUN

BIN = Path(sys.executable).parent
CLONE_NEWNET = 0x40000000
SUBNET = "10.213.7"
GCS_PORT = 6379


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def netns_pids(ns: str) -> list[int]:
    out = ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


class Cluster:
    def __init__(self, root: Path, workers: tuple[str, ...] = ("a", "b"), slots: int = 2) -> None:
        self.id = secrets.token_hex(3)
        self.root = Path(root)
        self.hub = f"wcf{self.id}x"
        self.names = ("h", *workers)
        self.ns = {n: f"wcf{self.id}{n}" for n in self.names}
        self.addr = {n: f"{SUBNET}.{i + 2}" for i, n in enumerate(self.names)}
        self.address = f"{self.addr['h']}:{GCS_PORT}"
        self.slots = slots
        self.token_path = self.root / "ray-token"
        self.state = {n: self.root / f"node-{n}" for n in workers}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self.node_outputs: dict[str, list[dict]] = {n: [] for n in workers}

    # ---- the network ----

    def _network(self) -> None:
        ip("netns", "add", self.hub)
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for name in self.names:
            ns, peer = self.ns[name], f"wcf{self.id}{name}p"
            ip("netns", "add", ns)
            ip("link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", peer, "netns", self.hub)
            ip("-n", self.hub, "link", "set", peer, "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path),
                         RAY_USAGE_STATS_ENABLED="0", **extra)  # fmt: skip

    def prefix(self, name: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns[name]}", "--"]

    def exec_retried(self, name: str, argv: list[str], **env: str) -> subprocess.CompletedProcess:
        """A node's start, tried again once from scratch: on a loaded 2-core machine a raylet
        sometimes misses Ray's fixed 30 s registration window."""
        done = self.exec_in(name, argv, **env)
        if done.returncode != 0 and "timed out during startup" in done.stdout + done.stderr:
            self.kill(name)
            wait_until(lambda: not netns_pids(self.ns[name]), 20)
            done = self.exec_in(name, argv, **env)
        return done

    def exec_in(self, name: str, argv: list[str], **env: str) -> subprocess.CompletedProcess:
        # nsenter, not `ip netns exec`: that one remounts /sys, and cgroupfs with it.
        return subprocess.run(self.prefix(name) + argv, env=self.env(**env),
                              capture_output=True, text=True, timeout=240)  # fmt: skip

    # ---- the nodes ----

    def start(self, nodes: tuple[str, ...] | None = None) -> Cluster:
        """The head, then the worker `nodes` (default: all)."""
        self.root.mkdir(parents=True, exist_ok=True)
        from ray._private.authentication.authentication_token_generator import (
            generate_new_authentication_token,
        )

        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_new_authentication_token())
        self._network()
        # A node lost is noticed in seconds, not the default half minute.
        health = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                  "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}  # fmt: skip
        head = self.exec_retried("h", [str(BIN / "ray"), "start", "--head", "--port", str(GCS_PORT),
                                  "--node-ip-address", self.addr["h"], "--num-cpus", "1",
                                  "--resources", json.dumps({"wondercraft_slot": 0}),
                                  "--include-dashboard", "false", "--temp-dir", str(self.root / "ray-h"),
                                  "--object-store-memory", str(200 << 20), "--disable-usage-stats"], **health)  # fmt: skip
        assert head.returncode == 0, head.stdout + head.stderr
        for name in self.state if nodes is None else nodes:
            self.start_node(name)
        return self

    def start_node(self, name: str) -> dict:
        RUN.register_state_dir(self.state[name])
        done = self.exec_retried(name, [str(BIN / "wondercraft"), "node", "start", "--address", self.address,
                                   "--state-dir", str(self.state[name]), "--name", f"node-{name}",
                                   "--slots", str(self.slots), "--quiet",
                                   "--node-ip-address", self.addr[name], "--", "--num-cpus", "2",
                                   "--temp-dir", str(self.root / f"ray-{name}"),
                                   "--object-store-memory", str(200 << 20)])  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr[-4000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        self.node_outputs[name].append(report)
        return report

    def kill(self, name: str, only: str | None = None) -> list[int]:
        """SIGKILLs the processes of a node's namespace (`only`: those whose comm is that)."""
        killed = []
        for pid in netns_pids(self.ns[name]):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if only is None or comm == only:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
        return killed

    def call_in(self, name: str, function, *args, **kwargs):
        """Runs `function` in a thread that lives in the namespace of `name` (loopback there)."""
        pool = self._pools.get(name)
        if pool is None:
            fd = os.open(f"/run/netns/{self.ns[name]}", os.O_RDONLY)
            libc = ctypes.CDLL(None, use_errno=True)

            def enter() -> None:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")

            pool = self._pools[name] = ThreadPoolExecutor(1, initializer=enter)
        return pool.submit(function, *args, **kwargs).result()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False)
        for _ in range(3):
            for name in self.names:
                if self.ns[name] in ip("netns", "list").stdout:
                    self.kill(name)
            time.sleep(0.3)
        for name in self.names:
            wait_until(lambda n=name: not netns_pids(self.ns[n]), 20)
        # The nodes' sandboxes outlive their agents: sweep each node's instance.
        for state in self.state.values():
            if state.exists():
                subprocess.run([sys.executable, "-c", SWEEP, str(state)], env=clean_env(), timeout=120,
                               capture_output=True)  # fmt: skip
        for ns in [*self.ns.values(), self.hub]:
            ip("netns", "del", ns, check=False)


SWEEP = """
import asyncio, sys
from runtime.sandbox import SandboxManager
async def go():
    manager = SandboxManager(sys.argv[1])
    await manager.start()
    await manager.close()
asyncio.run(go())
"""
