"""What the service runs sandboxes with: the static launcher, and the uid range they run as."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Settings
from .checks import FAIL, PASS, WARN, Check


def check_launcher(binary: Path | None = None) -> Check:
    """The launcher is built, current, and statically linked: a dynamic one is refused (it
    runs as root in the host's namespaces, where a dynamic loader reads its environment)."""
    import native

    binary = binary or native.SOURCE.with_name(native.LAUNCHER_NAME)
    if not binary.exists() or not os.access(binary, os.X_OK):
        return Check(
            "launcher",
            FAIL,
            f"{binary} is not built",
            "reinstall the package (pip install -e .) to build wc-init",
        )
    linkage = native.linkage(binary)
    if linkage != "static":
        return Check(
            "launcher", FAIL, f"{binary} is {linkage}: refused, the service runs only a statically linked launcher",
            "install a static libc (Debian: libc6-dev) and reinstall; the build fails rather than link dynamically",
        )  # fmt: skip
    if native.SOURCE.exists() and binary.stat().st_mtime < native.SOURCE.stat().st_mtime:
        return Check(
            "launcher", WARN, f"{binary} (static) is older than its source", "rebuild: pip install -e ."
        )
    return Check("launcher", PASS, f"{binary} is built and statically linked")


def check_sandbox_uids(
    settings: Settings, passwd: Path = Path("/etc/passwd"), group: Path = Path("/etc/group")
) -> Check:
    """The sandbox uid range: no host account or group in it, no process running as one."""
    from runtime import uids

    uid_range = uids.UidRange.parse(settings.sandbox_uid_range)
    detail = f"range {uid_range} ({uid_range.size} uids, one per live sandbox)"
    accounts = uids.accounts_in_range(uid_range, passwd, group)
    if accounts:
        return Check(
            "sandbox uids", FAIL, f"{detail} holds host accounts: {', '.join(accounts[:5])}",
            "set SANDBOX_UID_RANGE to a range no account or group uses",
        )  # fmt: skip
    running = uids.running_uids(uid_range)
    if running:
        return Check(
            "sandbox uids", WARN, f"{detail}: processes run as {', '.join(map(str, sorted(running)[:5]))}; "
            "those uids stay unused",
            "stop them (a previous run's sandboxes?) or pick another SANDBOX_UID_RANGE",
        )  # fmt: skip
    return Check("sandbox uids", PASS, f"{detail}; no host account uses it, no process runs as it")
