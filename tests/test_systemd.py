"""The systemd side: the unit verifies and keeps what the runtime needs, the installer, and the
service binary speaking sd_notify (READY=1 only after start-up recovery and once the port
answers, STOPPING=1 on SIGTERM, watchdog keep-alives) over a socket the test listens on."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.cgroups import CgroupLimits, open_backend
from runtime.sandbox import instance_name
from server.notify import Notifier
from tests.helpers import REPO, ServerProcess, clean_env, http

UNIT = REPO / "systemd" / "wondercraft.service"
INSTALLER = REPO / "scripts" / "install-service.sh"
BIN_DIR = Path(sys.executable).parent


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    if shutil.which("systemd-analyze") is None:
        subprocess.run([str(REPO / "scripts" / "host-packages.sh"), "systemd"], check=True, timeout=600)
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing; expected the systemd package (make install installs it)"
    return path


def install(destdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(INSTALLER), "--destdir", str(destdir), "--bin-dir", str(BIN_DIR), *extra],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


def test_installed_unit_verifies_with_systemd_analyze(tmp_path, systemd_analyze):
    install(tmp_path, "--systemd-version", "252")
    unit = tmp_path / "etc/systemd/system/wondercraft.service"
    result = subprocess.run(
        [systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for unknown keys; it must not have a word to say.
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr
    assert directives(unit.read_text())["ExecStart"][0].startswith(f"{BIN_DIR}/wondercraft serve ")


def test_unit_keeps_what_the_runtime_needs():
    unit = directives(UNIT.read_text())
    assert unit["Type"] == ["notify"] and unit["Delegate"] == ["yes"]
    assert unit["KillMode"] == ["mixed"] and unit["Restart"] == ["on-failure"]
    assert unit["OOMPolicy"] == ["continue"] and unit["TasksMax"] == ["infinity"]
    environment = dict(pair.split("=", 1) for pair in unit["Environment"][0].split())
    grace = float(environment["WONDERCRAFT_SHUTDOWN_GRACE"])
    stop_timeout = float(unit["TimeoutStopSec"][0])
    assert stop_timeout >= grace + 30, (
        "the stop timeout must cover the grace period and the teardown after it"
    )
    # Anything that gives the service its own mount namespace, hides cgroupfs or devices, restricts
    # namespaces, blocks sethostname or forbids JIT pages would break the sandboxes.
    forbidden = {
        "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectControlGroups",
        "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectProc", "ProtectClock",
        "ProtectHostname", "RestrictNamespaces", "MemoryDenyWriteExecute", "ReadOnlyPaths", "ReadWritePaths",
        "InaccessiblePaths", "TemporaryFileSystem", "PrivateMounts", "DevicePolicy", "DeviceAllow", "User",
        "DynamicUser", "SystemCallFilter", "UMask",
    }  # fmt: skip
    assert not forbidden & set(unit)
    dropped = unit["CapabilityBoundingSet"][0].lstrip("~").split()
    assert not {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_CHROOT", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP",
                "CAP_KILL", "CAP_DAC_OVERRIDE"} & set(dropped)  # fmt: skip


def test_installer_adds_delegate_subgroup_only_where_systemd_knows_it(tmp_path):
    dropin = tmp_path / "etc/systemd/system/wondercraft.service.d/10-delegate-subgroup.conf"
    install(tmp_path, "--systemd-version", "255")
    assert directives(dropin.read_text()) == {"DelegateSubgroup": ["supervisor"]}
    install(tmp_path, "--systemd-version", "252")
    assert not dropin.exists()
    env_file = tmp_path / "etc/wondercraft/wondercraft.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    env_file.write_text("PETALS_MAX_CONCURRENT_CYCLES=3\n")
    install(tmp_path)
    assert env_file.read_text() == "PETALS_MAX_CONCURRENT_CYCLES=3\n"  # the operator's settings stay
    assert os.readlink(tmp_path / "usr/local/bin/wondercraft-ctl") == str(BIN_DIR / "wondercraft-ctl")


class NotifyListener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, timeout: float = 60.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, fields in self.messages:
                if key in fields:
                    return fields
            time.sleep(0.01)
        raise AssertionError(f"no {key} within {timeout}s; got {[m for _, m in self.messages]}")

    def close(self) -> None:
        self.sock.close()


def test_ready_comes_after_recovery_and_once_the_port_answers_then_stopping_on_sigterm(tmp_path):
    state = tmp_path / "state"
    instance = instance_name(state)
    # What a crashed run would have left: a sandbox cgroup and a registered netns of this instance.
    cgroups = open_backend(instance)
    leftover = "sb-00000000000f"
    cgroups.create(leftover, CgroupLimits(pids_max=16))
    netns = f"wc-{instance}-{leftover}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    listener = NotifyListener(f"@wondercraft-test-{secrets.token_hex(6)}")
    env = clean_env(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="200000")
    server = ServerProcess(state, env=env)
    try:
        server.start(wait=False)
        ready = listener.wait_for("READY")
        # READY=1 was sent only once the service could answer, and after the orphan sweep.
        status, health, _ = http("GET", server.url + "/healthz", timeout=2)
        assert status == 200 and health["status"] == "ok"
        assert leftover not in cgroups.list_names()
        assert not os.path.exists(f"/run/netns/{netns}")
        assert ready["MAINPID"] == str(server.proc.pid) and ready["STATUS"].startswith(
            "serving on 127.0.0.1:"
        )
        statuses = [m["STATUS"] for _, m in listener.messages if "STATUS" in m]
        assert statuses[0].startswith("start-up recovery") and statuses.index(ready["STATUS"]) > 0
        # The watchdog asked for keep-alives every 0.1 s; they come from the event loop.
        time.sleep(0.5)
        assert sum(1 for _, m in listener.messages if m.get("WATCHDOG") == "1") >= 3

        server.proc.send_signal(signal.SIGTERM)
        stopping = listener.wait_for("STOPPING", timeout=30)
        assert stopping["STOPPING"] == "1" and "stopping" in stopping["STATUS"]
        assert server.proc.wait(30) == 0
        order = [next(iter(m)) for _, m in listener.messages if "READY" in m or "STOPPING" in m]
        assert order == ["READY", "STOPPING"]
    finally:
        server.stop()
        listener.close()
        left = cgroups.open(leftover)
        if left is not None:
            left.destroy()
        if os.path.lexists(f"/run/netns/{netns}"):
            subprocess.run(["ip", "netns", "delete", netns], check=False)
        with contextlib.suppress(Exception):
            cgroups.teardown()  # the service removes the instance's parent on a clean stop


def test_notifier_speaks_to_path_and_abstract_sockets_and_is_silent_without_one(tmp_path):
    for address in (str(tmp_path / "notify.sock"), f"@wondercraft-unit-{secrets.token_hex(4)}"):
        listener = NotifyListener(address)
        try:
            notifier = Notifier(address)
            assert notifier.ready("serving") and notifier.status("busy") and notifier.stopping("bye")
            listener.wait_for("STOPPING", timeout=5)
            assert [next(iter(m)) for _, m in listener.messages] == ["READY", "STATUS", "STOPPING"]
        finally:
            listener.close()
    silent = Notifier(None)
    assert not silent.enabled and silent.ready("serving") is False
    assert Notifier(str(tmp_path / "nobody-listens")).send("READY=1") is False


def test_notifier_takes_its_variables_out_of_the_environment(monkeypatch):
    # The launchers and sandboxes the service starts must not be able to speak for it.
    monkeypatch.setenv("NOTIFY_SOCKET", "@somewhere")
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environment()
    assert notifier.address == b"\0somewhere" and notifier.watchdog_interval_s == 2.0
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)
    # A watchdog meant for another process (the pid systemd started was a wrapper) is not ours.
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier.from_environment().watchdog_interval_s is None
