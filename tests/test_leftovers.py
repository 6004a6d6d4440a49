"""The leftovers check is hermetic: it flags what this run's own instances left (a cgroup, a
netns, a launcher, a marked sleep) and never another service's or another run's, even when
they carry the project's names on the same host."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from runtime.cgroups import PARENT_PREFIX
from tests.helpers import wait_until
from tests.leftovers import Footprint, own_cgroup_dirs


def detached(argv: list[str]) -> int:
    """Starts argv with no parent but init (as a foreign service's process would be) and returns
    its pid; the shell that starts it exits at once."""
    shell = subprocess.run(
        ["sh", "-c", 'setsid "$@" >/dev/null 2>&1 </dev/null & echo $!', "sh", *argv],
        capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    pid = int(shell.stdout)
    assert wait_until(lambda: _argv(pid) == argv), (pid, _argv(pid), argv)  # exec'd, not still the shell
    return pid


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [a.decode() for a in handle.read().split(b"\0") if a]
    except OSError:
        return []


@pytest.fixture
def host_names(tmp_path):
    """Makes cgroups, netns and processes with the project's names; removes them afterwards."""
    made = {"cgroups": [], "netns": [], "pids": []}

    def cgroup(name: str, pid: int | None = None) -> str:
        hierarchy = next(d for d in own_cgroup_dirs() if os.path.exists(os.path.join(d, "cgroup.procs")))
        path = os.path.join(hierarchy, name)
        os.mkdir(path)
        made["cgroups"].append(path)
        if pid is not None:
            with open(os.path.join(path, "cgroup.procs"), "w") as procs:
                procs.write(str(pid))
        return path

    def netns(name: str) -> None:
        subprocess.run(["ip", "netns", "add", name], check=True)
        made["netns"].append(name)

    def process(argv: list[str]) -> int:
        pid = detached(argv)
        made["pids"].append(pid)
        return pid

    launcher = tmp_path / "wc-init"  # a stand-in: a sleep that goes by the launcher's name
    shutil.copy(shutil.which("sleep"), launcher)
    yield cgroup, netns, process, str(launcher)
    for pid in made["pids"]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in made["pids"]:
        wait_until(lambda p=pid: not os.path.exists(f"/proc/{p}") or _zombie(p))
    for path in reversed(made["cgroups"]):
        wait_until(lambda p=path: not open(os.path.join(p, "cgroup.procs")).read().strip())
        os.rmdir(path)
    for name in made["netns"]:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_foreign_names_are_not_leftovers_and_this_runs_own_are(host_names):
    cgroup, netns, process, launcher = host_names
    mine = Footprint()
    ours = mine.register_instance(f"lt{uuid.uuid4().hex[:8]}")
    # Another service's (or another test run's) resources, with the project's names.
    cgroup(f"{PARENT_PREFIX}x")
    netns("wc-foreign-sb-1")
    process(["sleep", "1000"])
    process([launcher, "1000"])  # a launcher of a service this run knows nothing of
    assert mine.leftovers() == [] and mine.sandbox_leftovers() == []

    # The same kinds of things under this run's own instance are found, each of them.
    parent = cgroup(f"{PARENT_PREFIX}{ours}")
    held = process([launcher, "1001"])
    sandbox = cgroup(f"{PARENT_PREFIX}{ours}/sb-000000000001", held)
    netns(f"wc-{ours}-sb-000000000001")
    marked = process(list(mine.marker_argv))
    left = mine.leftovers()
    assert f"cgroup {parent}" in left
    assert f"netns wc-{ours}-sb-000000000001" in left
    assert f"process {held} {launcher} 1001" in left
    assert f"process {marked} {mine.marked_sleep}" in left
    assert len(left) == 4, left  # and nothing foreign besides
    assert mine.sandbox_leftovers(["sb-000000000001"]) == [
        f"cgroup {sandbox}", f"netns wc-{ours}-sb-000000000001", f"process {held} {launcher} 1001",
    ]  # fmt: skip
    assert mine.sandbox_leftovers(["sb-000000000002"]) == []


def test_a_state_dir_names_its_instance_as_the_service_derives_it(tmp_path):
    from runtime.sandbox import instance_name

    mine = Footprint()
    assert mine.register_state_dir(tmp_path / "state") == instance_name(tmp_path / "state")
    assert mine.state_dirs == {(tmp_path / "state").resolve()}


LEAKING_TEST = """
import subprocess
import sys
from tests.leftovers import RUN


def test_leaves_a_netns_behind():
    instance = RUN.register_instance({instance!r})
    subprocess.run(["ip", "netns", "add", {name!r}], check=True)
"""


def test_the_session_finish_check_fails_a_run_that_leaves_its_own_netns_only(tmp_path):
    """The real check (conftest.py, loaded as a plugin) in a pytest run of its own: a run whose
    instance left a netns fails naming it; a foreign netns of the same shape fails nothing."""
    from tests.helpers import REPO

    ours, other_run, foreign = (f"lt{uuid.uuid4().hex[:8]}" for _ in range(3))
    runs = ((ours, f"wc-{ours}-sb-1", 1), (other_run, f"wc-{foreign}-sb-1", 0))
    try:
        for instance, netns_name, expected in runs:
            test_file = tmp_path / f"test_leak_{expected}.py"
            test_file.write_text(LEAKING_TEST.format(instance=instance, name=netns_name))
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                 "--rootdir", str(tmp_path), str(test_file)],
                cwd=REPO, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert result.returncode == expected, result.stdout + result.stderr
            if expected:
                assert "this test run left behind" in result.stdout and f"netns {netns_name}" in result.stdout
    finally:
        for _instance, name, _expected in runs:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
