"""`wondercraft-ctl preflight`: checks that a host can run the service before it serves, each
check a pass, warn or fail with the fix. One module per group of checks (host, cgroups, kernel
features, resources, state dir, launcher and uids); `report.run` runs them in order."""

from __future__ import annotations

from .cgroups import check_cgroup_controllers, check_cgroup_mode
from .checks import FAIL, PASS, WARN, Check
from .host import REQUIRED_CAPS, check_capabilities, check_kernel, check_root
from .kernel import check_namespaces, check_overlay, check_seccomp, check_user_namespaces
from .launcher import check_launcher, check_sandbox_uids
from .report import run
from .resources import check_gpus, check_memory
from .state import check_state_dir

__all__ = [
    "FAIL", "PASS", "REQUIRED_CAPS", "WARN", "Check", "check_capabilities", "check_cgroup_controllers",
    "check_cgroup_mode", "check_gpus", "check_kernel", "check_launcher", "check_memory", "check_namespaces",
    "check_overlay", "check_root", "check_sandbox_uids", "check_seccomp", "check_state_dir",
    "check_user_namespaces", "run",
]  # fmt: skip
