"""wondercraft-ctl preflight: the host checks as an operator runs them (table, --json, exit
status), and the checks whose verdict depends on the host fed with hosts that fail them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from server import preflight
from server.config import ResourceLimits, Settings
from tests.helpers import AS_NOBODY, clean_env

CTL = str(Path(sys.executable).parent / "wondercraft-ctl")
CHECKS = [
    "root", "capabilities", "kernel", "cgroup mode", "cgroup controllers", "overlay and tmpfs", "namespaces",
    "user namespaces", "seccomp", "memory", "gpus", "state dir", "launcher", "sandbox uids",
]  # fmt: skip


def run_ctl(*args: str, prefix: tuple[str, ...] = (), **env: str):
    return subprocess.run(
        [*prefix, CTL, *args], capture_output=True, text=True, timeout=60, env=clean_env(**env)
    )


def test_preflight_checks_this_host_as_root(tmp_path):
    result = run_ctl("--state-dir", str(tmp_path / "state"), "preflight", "--json")
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert list(checks) == CHECKS
    assert all(c["status"] in ("pass", "warn", "fail") for c in checks.values())
    for name in (
        "root",
        "capabilities",
        "overlay and tmpfs",
        "namespaces",
        "seccomp",
        "launcher",
        "state dir",
    ):
        assert checks[name]["status"] == "pass", checks[name]
    # Sandboxes that other suites on this host have running make the uid check warn, and only then.
    uids = checks["sandbox uids"]
    assert uids["status"] == "pass" or (uids["status"] == "warn" and "processes run as" in uids["detail"]), (
        uids
    )
    assert "statically linked" in checks["launcher"]["detail"]
    assert "600000-659999" in checks["sandbox uids"]["detail"]
    assert report["ok"] == all(c["status"] != "fail" for c in checks.values())
    assert result.returncode == (0 if report["ok"] else 1)
    # Every check that does not pass says how to fix it.
    assert all(c["fix"] for c in checks.values() if c["status"] != "pass")


def test_preflight_table_names_each_check_with_its_fix(tmp_path):
    result = run_ctl("--state-dir", str(tmp_path / "state"), "preflight")
    lines = result.stdout.splitlines()
    verdicts = [line for line in lines if line.startswith(("PASS", "WARN", "FAIL"))]
    assert [line[6:24].strip() for line in verdicts] == CHECKS
    assert lines[-1].endswith("failed") and " passed, " in lines[-1]
    for line in lines:
        if line.startswith(("WARN", "FAIL")):
            following = lines[lines.index(line) + 1]
            assert following.strip().startswith("fix: "), (line, following)


def test_preflight_without_root_fails_and_exits_one(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    result = run_ctl(
        "--state-dir",
        str(state),
        "preflight",
        prefix=AS_NOBODY,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    root = next(line for line in lines if line.split()[1:2] == ["root"])
    assert root.startswith("FAIL") and "effective uid is 65534" in root
    assert lines[lines.index(root) + 1].strip().startswith("fix: run it as root")
    assert next(line for line in lines if "capabilities" in line).startswith("FAIL")


def test_preflight_refuses_a_bad_configuration_naming_it(tmp_path):
    config = tmp_path / "scaling.json"
    config.write_text(json.dumps({"resourceLimits": {"memory": 99999999}}))
    result = run_ctl("--state-dir", str(tmp_path), "preflight", "--config", str(config), "--json")
    assert result.returncode == 1
    failed = [c for c in json.loads(result.stdout)["checks"] if c["status"] == "fail"]
    assert [c["check"] for c in failed] == ["configuration"] and "resourceLimits.memory" in failed[0][
        "detail"
    ]


# ---- single checks, fed with hosts that fail them ----


def test_memory_check_compares_available_memory_with_the_caps():
    settings = Settings(resource_limits=ResourceLimits(memory_mb=8192), max_concurrent_cycles=4,
                        sandbox_default_memory_mb=4096)  # fmt: skip
    assert preflight.check_memory(settings, available_bytes=4 << 30).status == "fail"
    busy = preflight.check_memory(settings, available_bytes=12 << 30)
    assert busy.status == "warn" and "PETALS_MAX_CONCURRENT_CYCLES" in busy.fix
    assert preflight.check_memory(settings, available_bytes=64 << 30).status in ("pass", "warn")


def test_capabilities_check_names_what_is_missing():
    without_admin = f"CapEff:\t{((1 << 41) - 1) & ~(1 << 21):016x}\nCapBnd:\t{(1 << 41) - 1:016x}\n"
    check = preflight.check_capabilities(without_admin)
    assert check.status == "fail" and check.detail == "missing from the effective set: cap_sys_admin"
    assert preflight.check_capabilities(f"CapEff:\t{(1 << 41) - 1:016x}\n").status == "pass"


def test_kernel_seccomp_and_cgroup_mode_checks():
    assert preflight.check_kernel("6.1.0-18-amd64").status == "pass"
    assert preflight.check_kernel("5.10.0").status == "warn"
    assert preflight.check_seccomp("Seccomp:\t0\n", "kill_process errno trap allow").status == "pass"
    assert preflight.check_seccomp("Name:\tx\n", "").status == "fail"
    assert preflight.check_seccomp("Seccomp:\t0\n", "kill_process").status == "fail"
    assert preflight.check_cgroup_mode("v2").status == "pass"
    assert preflight.check_cgroup_mode("hybrid").status == "warn"
    assert preflight.check_cgroup_mode("none").status == "fail"


def _char_device(path: Path, minor: int) -> None:
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(195, minor))


def test_gpu_check_lists_the_inventory_and_its_device_nodes(tmp_path):
    dev, proc = tmp_path / "dev", tmp_path / "proc"
    dev.mkdir()
    proc.mkdir()
    one_gpu = Settings(resource_limits=ResourceLimits(gpu_count=1))
    none_wanted = Settings(resource_limits=ResourceLimits(gpu_count=0))
    assert preflight.check_gpus(one_gpu, dev, proc).status == "warn"
    assert preflight.check_gpus(none_wanted, dev, proc).status == "pass"

    (dev / "nvidia0").write_text("")  # a file where the driver's node should be
    check = preflight.check_gpus(one_gpu, dev, proc)
    assert check.status == "fail" and "nvidia0 is not a character device" in check.detail
    assert "nvidiactl is missing" in check.detail and "nvidia-modprobe" in check.fix

    (dev / "nvidia0").unlink()
    try:
        for minor, name in ((0, "nvidia0"), (1, "nvidia1"), (255, "nvidiactl"), (254, "nvidia-uvm")):
            _char_device(dev / name, minor)
    except PermissionError:
        pytest.skip("this filesystem does not allow device nodes")
    for minor in (0, 1):
        info = proc / f"0000:0{minor}:00.0"
        info.mkdir()
        (info / "information").write_text(f"Model: H100\nGPU UUID: GPU-{minor}abc\nDevice Minor: {minor}\n")
    check = preflight.check_gpus(one_gpu, dev, proc)
    assert check.status == "pass" and "2 GPU(s)" in check.detail and "GPU-1abc" in check.detail
    too_many = preflight.check_gpus(Settings(resource_limits=ResourceLimits(gpu_count=4)), dev, proc)
    assert too_many.status == "warn" and "at most 2" in too_many.fix


def test_state_dir_check_refuses_a_file_and_warns_on_tmpfs_and_loose_modes(tmp_path):
    assert preflight.check_state_dir(tmp_path / "new" / "state").status == "pass"
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert preflight.check_state_dir(a_file).status == "fail"
    on_tmpfs = preflight.check_state_dir(Path("/dev/shm/wondercraft-preflight-test"))
    assert on_tmpfs.status == "warn" and "lost at reboot" in on_tmpfs.detail
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert preflight.check_state_dir(loose).status == "warn"


def test_launcher_check_refuses_a_dynamic_build(tmp_path):
    import native

    dynamic = tmp_path / "wc-init"
    subprocess.run(["gcc", "-O2", "-o", str(dynamic), str(native.SOURCE)], check=True, capture_output=True)
    check = preflight.check_launcher(dynamic)
    assert check.status == "fail" and "dynamic" in check.detail and "refused" in check.detail and check.fix


def test_uid_check_fails_a_range_with_host_accounts(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\nintruder:x:600123:600123::/:/bin/sh\n")
    check = preflight.check_sandbox_uids(Settings(), passwd=passwd, group=tmp_path / "none")
    assert check.status == "fail" and "intruder (600123)" in check.detail and "SANDBOX_UID_RANGE" in check.fix
    # A range no sandbox of any run on this host uses: nothing runs as it either.
    unused = Settings(sandbox_uid_range="900000-900099")
    assert (
        preflight.check_sandbox_uids(unused, passwd=tmp_path / "none", group=tmp_path / "none").status
        == "pass"
    )
