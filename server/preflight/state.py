"""The state dir: writable, on a local read-write disk with room, not readable by others."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .checks import FAIL, PASS, WARN, Check

MIN_STATE_FREE_BYTES = 1 << 30
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "9p", "fuse", "fuse.sshfs", "ceph", "glusterfs")


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(mount point, filesystem type, mount options) of the mount holding `path`."""
    best = ("/", "unknown", "")
    target = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        fields = head.split()
        point = fields[4].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, tail.split()[0], fields[5])
    return best


def check_state_dir(state_dir: Path) -> Check:
    path = state_dir.resolve()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return Check(
            "state dir",
            FAIL,
            f"{probe} is not a directory",
            f"choose a directory for --state-dir, not {probe}",
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        return Check(
            "state dir", FAIL, f"{probe} is not writable", f"chown root {probe}, or pick another --state-dir"
        )
    point, fstype, options = _mount_of(probe)
    detail = f"{path} on {fstype} ({point})"
    if "ro" in options.split(","):
        return Check("state dir", FAIL, f"{detail} is mounted read-only", "choose a read-write filesystem")
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse"):
        return Check(
            "state dir", WARN, f"{detail}: SQLite's WAL needs a local filesystem",
            "put the state dir on a local disk (the unit's default is /var/lib/wondercraft)",
        )  # fmt: skip
    if fstype == "tmpfs":
        return Check(
            "state dir", WARN, f"{detail}: models and state are lost at reboot",
            "put the state dir on a disk (the unit's default is /var/lib/wondercraft)",
        )  # fmt: skip
    free = shutil.disk_usage(probe).free
    if free < MIN_STATE_FREE_BYTES:
        return Check(
            "state dir",
            WARN,
            f"{detail}: only {free >> 20} MiB free",
            "free space: models are kept per version",
        )
    if path.exists() and path.stat().st_mode & 0o077:
        return Check(
            "state dir", WARN, f"{detail} is readable by others (mode {path.stat().st_mode & 0o777:04o})",
            f"chmod 700 {path}",
        )  # fmt: skip
    return Check("state dir", PASS, f"{detail}, {free >> 30} GiB free")
