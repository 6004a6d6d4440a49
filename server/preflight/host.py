"""The host itself: root, the capabilities the service uses, the kernel release."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checks import FAIL, PASS, WARN, Check

# Capabilities the service uses: namespaces and mounts (SYS_ADMIN), network namespaces
# (NET_ADMIN), pivot_root (SYS_CHROOT), the sandbox user (SETUID, SETGID), dropping capabilities
# from the bounding set (SETPCAP), killing sandboxes (KILL) and state owned by others (DAC_OVERRIDE).
REQUIRED_CAPS = {
    "cap_dac_override": 1, "cap_kill": 5, "cap_setgid": 6, "cap_setuid": 7, "cap_setpcap": 8,
    "cap_net_admin": 12, "cap_sys_chroot": 18, "cap_sys_admin": 21,
}  # fmt: skip


def _caps_of(text: str, field: str) -> int:
    match = re.search(rf"^{field}:\s*([0-9a-f]+)$", text, re.M)
    return int(match.group(1), 16) if match else 0


def check_root() -> Check:
    if os.geteuid() == 0:
        return Check("root", PASS, "running as root (uid 0)")
    return Check(
        "root", FAIL, f"effective uid is {os.geteuid()}; the service must run as root",
        "run it as root: sudo wondercraft-ctl preflight, or the systemd unit (User= unset)",
    )  # fmt: skip


def check_capabilities(status_text: str | None = None) -> Check:
    text = Path("/proc/self/status").read_text() if status_text is None else status_text
    effective, bounding = _caps_of(text, "CapEff"), _caps_of(text, "CapBnd")
    missing = [name for name, bit in REQUIRED_CAPS.items() if not effective >> bit & 1]
    if not missing:
        return Check("capabilities", PASS, f"effective set has {', '.join(REQUIRED_CAPS)}")
    unbounded = [name for name in missing if not bounding >> REQUIRED_CAPS[name] & 1]
    where = " (also missing from the bounding set)" if unbounded else ""
    return Check(
        "capabilities", FAIL, f"missing from the effective set: {', '.join(missing)}{where}",
        "run as root without capability drops; a unit's CapabilityBoundingSet= must keep "
        + ", ".join(missing).upper(),
    )  # fmt: skip


def check_kernel(release: str | None = None) -> Check:
    release = release or os.uname().release
    match = re.match(r"(\d+)\.(\d+)", release)
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if version >= (5, 14):
        return Check("kernel", PASS, f"Linux {release} (cgroup.kill, pidfd)")
    return Check(
        "kernel", WARN, f"Linux {release}: before 5.14 sandboxes are killed by freezing their cgroup "
        "(no cgroup.kill), and before 5.3 without pidfds",
        "upgrade to a 5.14 or later kernel (Debian 12's 6.1 is fine)",
    )  # fmt: skip
