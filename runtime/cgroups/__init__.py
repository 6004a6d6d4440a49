"""cgroup mode detection and the backend interface (v2 primary, v1 for hybrid hosts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer")


@dataclass(frozen=True)
class CgroupMount:
    fstype: str  # "cgroup" (v1) or "cgroup2"
    mount_point: str
    controllers: tuple[str, ...]  # v1: from super options; v2: empty here


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def cgroup_mounts(mountinfo: str | None = None) -> list[CgroupMount]:
    """Every cgroup and cgroup2 mount listed in /proc/self/mountinfo."""
    text = Path("/proc/self/mountinfo").read_text() if mountinfo is None else mountinfo
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields = head.split()
        fstype, _source, super_options = (tail.split() + ["", ""])[:3]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        controllers: tuple[str, ...] = ()
        if fstype == "cgroup":
            controllers = tuple(
                opt for opt in super_options.split(",") if opt in V1_CONTROLLERS or opt.startswith("name=")
            )
        mounts.append(CgroupMount(fstype, _unescape(fields[4]), controllers))
    return mounts


def detect_mode(mountinfo: str | None = None) -> str:
    """ "v2" (only cgroup2), "v1" (only v1 hierarchies) or "hybrid" (both mounted)."""
    mounts = cgroup_mounts(mountinfo)
    has_v2 = any(m.fstype == "cgroup2" for m in mounts)
    has_v1 = any(
        m.fstype == "cgroup" and any(not c.startswith("name=") for c in m.controllers) for m in mounts
    )
    if has_v2 and has_v1:
        return "hybrid"
    if has_v2:
        return "v2"
    if has_v1:
        return "v1"
    return "none"
