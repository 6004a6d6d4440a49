"""The cgroup hierarchy: its mode (v2, v1 or hybrid) and the controllers the sandboxes need."""

from __future__ import annotations

import os
from pathlib import Path

from runtime.cgroups import (
    SUPERVISOR_LEAF,
    cgroup_dir,
    cgroup_mounts,
    detect_mode,
    own_cgroups,
    v1_hierarchies,
)

from .checks import FAIL, PASS, WARN, Check

V2_CONTROLLERS = ("cpu", "memory", "pids")
V1_REQUIRED = ("cpu", "cpuacct", "memory", "pids")
V1_WANTED = ("blkio", "freezer")
UNIT_CGROUP = "system.slice/wondercraft.service"


def _cgroup_mount_lines() -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return [line for line in lines if " - cgroup" in line]


def check_cgroup_mode(mode: str | None = None) -> Check:
    mode = mode or detect_mode()
    if mode == "v2":
        return Check("cgroup mode", PASS, "pure cgroup v2 (the primary design)")
    if mode in ("v1", "hybrid"):
        # On v1 each sandbox start and execution moves a process into its cgroups; without
        # favordynmods the first move after a quiet spell waits out an RCU grace period.
        favoured = any("favordynmods" in line.split(" - ")[-1] for line in _cgroup_mount_lines())
        moves = (
            ""
            if favoured
            else "; each sandbox start and execution waits ~6-8 ms for its first cgroup move after a quiet spell"
        )
        return Check(
            "cgroup mode", WARN, f"{mode}: sandboxes use the v1 controllers; pure v2 is the primary design{moves}",
            "boot with systemd.unified_cgroup_hierarchy=1 (and without cgroup_no_v1=) for pure v2"
            + ("" if favoured else ", or remount a cgroup hierarchy with -o remount,favordynmods (kernel 6.0+)"),
        )  # fmt: skip
    return Check(
        "cgroup mode", FAIL, "no cgroup filesystem is mounted",
        "mount cgroup2 at /sys/fs/cgroup (systemd does this at boot)",
    )  # fmt: skip


def _service_cgroup_v2() -> tuple[str, str]:
    """(cgroup dir, how it was chosen) where `wondercraft serve` would create sandboxes."""
    mount = next((m for m in cgroup_mounts() if m.fstype == "cgroup2"), None)
    if mount is None:
        raise FileNotFoundError("no cgroup2 mount")
    unit = os.path.join(mount.mount_point, UNIT_CGROUP)
    if os.path.isdir(unit):
        return unit, "the wondercraft.service unit's cgroup"
    own = cgroup_dir(mount, own_cgroups().get("", "/"))
    if os.path.basename(own) == SUPERVISOR_LEAF:
        own = os.path.dirname(own)
    return own, "this shell's cgroup (the service is not installed as a unit)"


def check_cgroup_controllers(mode: str | None = None) -> Check:
    mode = mode or detect_mode()
    if mode == "v2":
        try:
            path, chosen = _service_cgroup_v2()
        except OSError as exc:
            return Check("cgroup controllers", FAIL, f"cannot find the service's cgroup: {exc}")
        available = (Path(path) / "cgroup.controllers").read_text().split()
        missing = [c for c in V2_CONTROLLERS if c not in available]
        if missing:
            return Check(
                "cgroup controllers", FAIL,
                f"{' '.join(missing)} not delegated to {path} ({chosen}); it has: {' '.join(available) or 'none'}",
                "run it as the systemd unit (Delegate=yes; make install-service), or enable "
                f"+{' +'.join(missing)} in the parent's cgroup.subtree_control",
            )  # fmt: skip
        io = "" if "io" in available else "; io is not delegated, so io is not accounted"
        return Check(
            "cgroup controllers", WARN if io else PASS,
            f"{' '.join(c for c in available if c in (*V2_CONTROLLERS, 'io'))} delegated to {path} ({chosen}){io}",
            "enable +io in the parent's cgroup.subtree_control" if io else "",
        )  # fmt: skip
    if mode in ("v1", "hybrid"):
        hierarchies = v1_hierarchies(wanted=(*V1_REQUIRED, *V1_WANTED))
        present = {c: h for h in hierarchies for c in h.controllers}
        missing = [c for c in V1_REQUIRED if c not in present]
        if missing:
            return Check(
                "cgroup controllers", FAIL, f"v1 hierarchies missing: {', '.join(missing)}",
                "mount them under /sys/fs/cgroup/<controller> (systemd does on hybrid hosts)",
            )  # fmt: skip
        unwritable = sorted({h.own_dir for h in hierarchies if not os.access(h.own_dir, os.W_OK)})
        if unwritable:
            return Check(
                "cgroup controllers", FAIL, f"cannot create cgroups in {', '.join(unwritable)}",
                "run as root, with /sys/fs/cgroup mounted read-write",
            )  # fmt: skip
        notes = [f"{c} hierarchy missing" for c in V1_WANTED if c not in present]
        memory_dir = present["memory"].own_dir
        if not os.path.exists(os.path.join(memory_dir, "memory.memsw.limit_in_bytes")):
            notes.append("no swap accounting (memory.memsw), so a sandbox could swap past its cap")
        detail = f"v1 {', '.join(sorted(present))} writable at the service's cgroups"
        if notes:
            return Check(
                "cgroup controllers", WARN, f"{detail}; {'; '.join(notes)}",
                "boot with swapaccount=1, and mount the missing hierarchies",
            )  # fmt: skip
        return Check("cgroup controllers", PASS, detail)
    return Check("cgroup controllers", FAIL, "no cgroup hierarchy to create sandboxes in", "mount cgroup2")
