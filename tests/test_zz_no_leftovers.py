"""Runs last (file order): after the whole suite, nothing it created remains on the host,
no cgroup, mount, network namespace, link or process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from runtime.cgroups import cgroup_mounts, own_cgroups

GUEST = os.environ.get("WONDERCRAFT_TEST_GUEST")


def test_no_cgroup_netns_mount_link_or_process_is_left_behind():
    leftovers = []
    for hierarchy_dir in _own_cgroup_dirs():
        leftovers += [str(p) for p in Path(hierarchy_dir).glob("wondercraft-*")]
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        leftovers += [f"netns {n.name}" for n in netns_dir.iterdir() if n.name.startswith("wc-")]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")[-1].split()
        if fields[1] in ("wc-root", "wc-storage", "wc-dev", "wc-shm"):
            leftovers.append(f"mount {line}")
    links = subprocess.run(
        ["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True
    ).stdout
    leftovers += [f"link {line}" for line in links.splitlines() if "wc-" in line]
    processes = subprocess.run(["pgrep", "-a", "-f", "wc-init (create|exec)"], capture_output=True, text=True)
    leftovers += [f"process {line}" for line in processes.stdout.splitlines()]
    if not GUEST:
        guests = subprocess.run(["pgrep", "-a", "-f", "linux.uml"], capture_output=True, text=True).stdout
        leftovers += [f"process {line}" for line in guests.splitlines() if "wondercraft-guest" in line]
    assert leftovers == []


def _own_cgroup_dirs() -> list[str]:
    """This process's cgroup directory in every mounted hierarchy."""
    own = own_cgroups()
    dirs = []
    for mount in cgroup_mounts():
        key = "" if mount.fstype == "cgroup2" else ",".join(mount.controllers)
        if key in own:
            dirs.append(os.path.join(mount.mount_point, own[key].lstrip("/")))
    return dirs
