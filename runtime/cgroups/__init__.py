"""cgroup mode detection, the service's own place in each hierarchy, and the factory
that picks the backend (v2 on pure-v2 hosts, v1 on v1 and hybrid hosts)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .base import CgroupBackend, CgroupError, CgroupLimits, CgroupUsage, SandboxCgroup

__all__ = [
    "CgroupBackend",
    "CgroupError",
    "CgroupLimits",
    "CgroupUsage",
    "SandboxCgroup",
    "V1_CONTROLLERS",
    "V1_SANDBOX_CONTROLLERS",
    "CgroupMount",
    "V1Hierarchy",
    "cgroup_mounts",
    "detect_mode",
    "own_cgroups",
    "own_cgroup_v2",
    "v1_hierarchies",
    "v2_mount",
    "cgroup_dir",
    "open_backend",
    "check_name",
    "PARENT_PREFIX",
    "SUPERVISOR_LEAF",
]

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer")
# cpuset is left out because joining it needs cpus/mems copied from the parent first,
# devices because device access is decided by what the sandbox's /dev holds.
V1_SANDBOX_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "freezer")
PARENT_PREFIX = "wondercraft-"  # an instance's parent cgroup: <own>/wondercraft-<instance>
SUPERVISOR_LEAF = "supervisor"  # v2: where the service itself lives beside its sandboxes

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class CgroupMount:
    fstype: str  # "cgroup" (v1) or "cgroup2"
    mount_point: str
    controllers: tuple[str, ...]  # v1: from super options; v2: empty here
    root: str = "/"  # the hierarchy path shown at mount_point (not "/" inside a cgroup namespace)


@dataclass(frozen=True)
class V1Hierarchy:
    """One mounted v1 hierarchy (possibly several co-mounted controllers) and the
    directory of the cgroup this process runs in there."""

    controllers: tuple[str, ...]  # the wanted controllers it carries, e.g. ("cpu", "cpuacct")
    mount_point: str
    own_dir: str


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
        mounts.append(CgroupMount(fstype, _unescape(fields[4]), controllers, _unescape(fields[3])))
    return mounts


def detect_mode(mountinfo: str | None = None) -> str:
    """ "v2" (only cgroup2), "v1" (only v1 hierarchies) or "hybrid" (both mounted)."""
    return _mode_of(cgroup_mounts(mountinfo))


def _mode_of(mounts: list[CgroupMount]) -> str:
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


def own_cgroups(proc_cgroup: str | None = None) -> dict[str, str]:
    """This process's cgroup path per hierarchy, from /proc/self/cgroup.

    v1 lines are keyed by each controller they name ("cpu" and "cpuacct" for a
    co-mounted "cpu,cpuacct", "name=systemd" for named hierarchies); the v2 line
    ("0::/path") is keyed by ""."""
    text = Path("/proc/self/cgroup").read_text() if proc_cgroup is None else proc_cgroup
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hierarchy_id, controllers, path = parts
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def own_cgroup_v2(proc_cgroup: str | None = None) -> str:
    """This process's cgroup2 path (e.g. "/system.slice/wondercraft.service")."""
    path = own_cgroups(proc_cgroup).get("")
    if path is None:
        raise CgroupError("/proc/self/cgroup has no cgroup2 line ('0::/path'); expected a cgroup2 host")
    return path


def cgroup_dir(mount: CgroupMount, cgroup_path: str) -> str:
    """The directory under mount.mount_point that shows cgroup_path."""
    root = mount.root.rstrip("/")
    if cgroup_path != root and not cgroup_path.startswith(root + "/"):
        raise CgroupError(
            f"this process's cgroup {cgroup_path} lies outside the part of the hierarchy mounted at "
            f"{mount.mount_point} ({mount.root}); expected it at or below {mount.root}"
        )
    return os.path.normpath(mount.mount_point + "/" + cgroup_path[len(root) :])


def v2_mount(mounts: list[CgroupMount] | None = None) -> CgroupMount | None:
    """The cgroup2 mount to use: /sys/fs/cgroup when it is cgroup2, else the first one."""
    v2 = [m for m in (cgroup_mounts() if mounts is None else mounts) if m.fstype == "cgroup2"]
    for mount in v2:
        if mount.mount_point == "/sys/fs/cgroup":
            return mount
    return v2[0] if v2 else None


def v1_hierarchies(
    mounts: list[CgroupMount] | None = None,
    own: dict[str, str] | None = None,
    wanted: tuple[str, ...] = V1_SANDBOX_CONTROLLERS,
) -> list[V1Hierarchy]:
    """The mounted v1 hierarchies that carry the wanted controllers, each once
    (co-mounted controllers share one), with this process's directory in each."""
    mounts = cgroup_mounts() if mounts is None else mounts
    own = own_cgroups() if own is None else own
    hierarchies: list[V1Hierarchy] = []
    seen: set[str] = set()
    for controller in wanted:
        if controller in seen:
            continue
        candidates = [m for m in mounts if m.fstype == "cgroup" and controller in m.controllers]
        if not candidates or controller not in own:
            continue
        # A hierarchy may be mounted more than once; prefer the usual place.
        candidates.sort(key=lambda m: not m.mount_point.startswith("/sys/fs/cgroup/"))
        mount = candidates[0]
        carried = tuple(c for c in wanted if c in mount.controllers)
        seen.update(carried)
        hierarchies.append(V1Hierarchy(carried, mount.mount_point, cgroup_dir(mount, own[controller])))
    return hierarchies


def check_name(name: str, what: str = "sandbox cgroup name") -> str:
    """A cgroup directory name we create: one path component of safe characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{what} must be 1-100 characters of letters, digits, '_', '.' or '-' starting with a "
            f"letter or digit, got {name!r}"
        )
    return name


def open_backend(instance: str, mode: str | None = None) -> CgroupBackend:
    """The cgroup backend for this host: v2 when cgroup2 is the only cgroup mount
    (pure v2), v1 on v1 and hybrid hosts (whose cgroup2 mount has no controllers).

    `instance` keeps one service's (or test's) cgroups apart from another's: each
    instance owns only `<own cgroup>/wondercraft-<instance>/` in every hierarchy.
    `mode` ("v1" or "v2") overrides the detection."""
    check_name(instance, "cgroup instance name")
    mounts = cgroup_mounts()
    detected = _mode_of(mounts)
    chosen = mode or ("v2" if detected == "v2" else "v1" if detected in ("v1", "hybrid") else None)
    if chosen == "v2":
        from .v2 import V2CgroupBackend

        return V2CgroupBackend(instance, v2_mount(mounts))
    if chosen == "v1":
        hierarchies = v1_hierarchies(mounts)
        if not hierarchies:
            raise CgroupError(
                "no v1 cgroup hierarchy with any of " + ", ".join(V1_SANDBOX_CONTROLLERS) + " is mounted; "
                "expected them under /sys/fs/cgroup/<controller>"
            )
        from .v1 import V1CgroupBackend

        return V1CgroupBackend(instance, hierarchies)
    raise CgroupError(
        f"cannot pick a cgroup backend: mode {mode or detected!r}; expected cgroup2 at /sys/fs/cgroup "
        "(pure v2) or v1 controller hierarchies"
    )
