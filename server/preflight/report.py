"""Every check, run in the order an operator fixes them; one that cannot be carried out is a
failed line of the report, never a crash of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runtime.cgroups import detect_mode

from ..config import Settings, load_settings
from ..errors import ConfigError
from .cgroups import check_cgroup_controllers, check_cgroup_mode
from .checks import FAIL, Check
from .host import check_capabilities, check_kernel, check_root
from .kernel import check_namespaces, check_overlay, check_seccomp, check_user_namespaces
from .launcher import check_launcher, check_sandbox_uids
from .resources import check_gpus, check_memory
from .state import check_state_dir


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """A check that cannot be carried out is a failure to report, never a crash of the report."""
    try:
        return check()
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return Check(
            name, FAIL, f"could not be checked: {exc.strerror or exc}{where}", "run preflight as root"
        )
    except Exception as exc:  # noqa: BLE001 - the operator gets a line, not a traceback
        return Check(name, FAIL, f"could not be checked: {exc}", "report this with the detail above")


def run(state_dir: Path, config_path: Path | None = None) -> list[Check]:
    """Every check, in the order an operator fixes them."""
    mode = detect_mode()
    checks = [
        _guarded("root", check_root),
        _guarded("capabilities", check_capabilities),
        _guarded("kernel", check_kernel),
        _guarded("cgroup mode", lambda: check_cgroup_mode(mode)),
        _guarded("cgroup controllers", lambda: check_cgroup_controllers(mode)),
        _guarded("overlay and tmpfs", check_overlay),
        _guarded("namespaces", check_namespaces),
        _guarded("user namespaces", check_user_namespaces),
        _guarded("seccomp", check_seccomp),
    ]
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        checks.append(
            Check("configuration", FAIL, exc.message, "fix the variable or the scaling JSON it names")
        )
        settings = Settings()
    checks += [
        _guarded("memory", lambda: check_memory(settings)),
        _guarded("gpus", lambda: check_gpus(settings)),
        _guarded("state dir", lambda: check_state_dir(state_dir)),
        _guarded("launcher", check_launcher),
        _guarded("sandbox uids", lambda: check_sandbox_uids(settings)),
    ]
    return checks
