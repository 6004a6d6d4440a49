"""The host audit behind `wondercraft-ctl audit host`: who holds a sandbox's cgroup and netns,
found through its processes' launcher chain, and what it reports once nothing does."""

from __future__ import annotations

import os
import time
import uuid

from runtime import hostaudit
from runtime.hostaudit import _host_of, _Process, _split_netns
from tests.sandboxes import SyncManager


def test_the_host_of_a_sandbox_process_is_above_its_launchers():
    table = {
        1: _Process(1, 0, ["/sbin/init"], None),
        100: _Process(100, 1, ["/venv/bin/python", "/venv/bin/wondercraft", "serve"], None),
        101: _Process(101, 100, ["/repo/native/wc-init", "create"], None),  # the shim
        102: _Process(102, 101, ["/repo/native/wc-init", "create"], None),  # the sandbox's PID 1
        103: _Process(103, 102, ["sh", "-c", "sleep 300"], None),
        104: _Process(104, 103, ["sleep", "300"], None),
        200: _Process(200, 1, ["/repo/native/wc-init", "exec"], None),  # outlived its parent
        300: _Process(300, 1, ["bash"], None),  # no sandbox at all
    }
    assert [_host_of(pid, table) for pid in (104, 103, 102, 101)] == [100, 100, 100, 100]
    assert _host_of(200, table) is None and _host_of(300, table) is None and _host_of(999, table) is None


def test_netns_names_carry_their_instance_and_sandbox():
    assert _split_netns("wc-1a2b3c4d-sb-0123456789ab") == ("1a2b3c4d", "sb-0123456789ab")
    assert _split_netns("wc-my-test-instance-sb-0123456789ab") == ("my-test-instance", "sb-0123456789ab")
    assert _split_netns("wc-something-else") == (None, None)


def test_a_sandbox_is_known_while_its_host_lives_whoever_that_is(tmp_path):
    # Not a `wondercraft serve`: this test process hosts the sandbox through its manager.
    instance = f"hostaudit-{uuid.uuid4().hex[:8]}"  # its own: another run may test the same at once
    sandboxes = SyncManager(tmp_path / "state", instance=instance)
    try:
        box = sandboxes.create()
        # A background execution: an ordinary one's processes end with it.
        sandboxes.call(sandboxes.manager.start_background(box.id, ["sleep", "600"]))
        deadline = time.monotonic() + 20
        while len(box.cgroup.pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        report = hostaudit.scan_host()
        mine = {(f["kind"], f["name"]): f for f in report["findings"] if f["instance"] == instance}
        cgroup, netns = mine[("cgroup", box.id)], mine[("netns", box.netns)]
        assert cgroup["state"] == netns["state"] == "known"
        assert cgroup["owner"].startswith(f"pid {os.getpid()} ") and len(cgroup["detail"]["pids"]) >= 2
        assert netns["detail"]["mounted"] and box.init_pid in netns["detail"]["pids"]
        launchers = [
            f for f in report["findings"] if f["kind"] == "process" and int(f["name"]) == box.init_pid
        ]
        assert launchers and launchers[0]["state"] == "known"
        # The same audit, asked by a service about itself, goes by its live set instead.
        asked = hostaudit.scan_host(self_instance=instance, live_sandboxes=set())
        assert {
            f["state"] for f in asked["findings"] if f["instance"] == instance and f["name"] == box.id
        } == {"orphaned"}
    finally:
        sandboxes.close()
