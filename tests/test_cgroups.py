"""The cgroup backends against the real kernel: limits land in the kernel's files, real
processes are capped, counted and killed, and nothing is made outside our own cgroup.
Runs on the host (v1/hybrid) and inside the UML guest (pure v2, marker v2guest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from runtime.cgroups import (
    PARENT_PREFIX,
    SUPERVISOR_LEAF,
    CgroupLimits,
    cgroup_mounts,
    detect_mode,
    open_backend,
    own_cgroups,
    v1_hierarchies,
)
from runtime.cgroups.base import CgroupBackend, SandboxCgroup
from runtime.cgroups.files import read_psi
from tests.leftovers import RUN

pytestmark = pytest.mark.v2guest

IN_GUEST = os.environ.get("WONDERCRAFT_TEST_GUEST") == "v2"
PY = [sys.executable, "-I", "-S", "-c"]  # no site: a quick start, also under UML
# Joins every cgroup.procs given before exec, as the native launcher does, so the
# program is accounted from its first instruction: sh -c JOIN join N files... argv...
JOIN = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done; exec "$@"'
TEST_PREFIX = f"t{os.getpid()}-"


def spawn_in(cgroup: SandboxCgroup, argv: list[str], **kwargs) -> subprocess.Popen:
    files = cgroup.procs_files
    return subprocess.Popen(["sh", "-c", JOIN, "join", str(len(files)), *files, *argv], **kwargs)


def joined(cgroup: SandboxCgroup, proc: subprocess.Popen) -> bool:
    """Whether spawn_in's process is in every hierarchy (its shell writes one cgroup.procs
    after another, so on v1 one listing it is not yet all of them)."""
    return all(str(proc.pid) in open(f).read().split() for f in cgroup.procs_files)


def sandbox_dirs(cgroup: SandboxCgroup) -> list[str]:
    return [os.path.dirname(f) for f in cgroup.procs_files]


def parent_dirs(backend: CgroupBackend) -> list[str]:
    if backend.mode == "v2":
        return [backend.parent_dir]
    return backend.parent_dirs


def own_dirs(backend: CgroupBackend) -> list[str]:
    """The directory of the cgroup this process runs in, per hierarchy the backend uses."""
    if backend.mode == "v2":
        return [backend.root_dir]
    return [h.own_dir for h in backend.hierarchies]


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def make_backend():
    """open_backend for a fresh instance; every sandbox and parent removed afterwards."""
    made: list[CgroupBackend] = []

    def make(instance: str | None = None) -> CgroupBackend:
        backend = open_backend(RUN.register_instance(instance or TEST_PREFIX + uuid.uuid4().hex[:8]))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        for name in backend.list_names():
            backend.open(name).destroy()
        backend.teardown()
    for backend in made:
        assert not any(os.path.exists(d) for d in parent_dirs(backend)), parent_dirs(backend)


@pytest.fixture
def backend(make_backend) -> CgroupBackend:
    return make_backend()


@pytest.fixture
def children():
    """Processes a test starts; killed and reaped afterwards, also when it fails."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    yield
    for hierarchy_dir in set(own_dirs(open_backend("leftover-check"))):
        left = [n for n in os.listdir(hierarchy_dir) if n.startswith(PARENT_PREFIX + TEST_PREFIX)]
        assert not left, f"cgroups left in {hierarchy_dir}: {left}"


def test_open_backend_picks_v2_in_the_pure_v2_guest_and_v1_on_hybrid_hosts(backend):
    if IN_GUEST:
        assert detect_mode() == "v2"
        assert backend.mode == "v2", "the guest must exercise the v2 backend"
    elif detect_mode() in ("hybrid", "v1"):
        assert backend.mode == "v1"
    assert type(backend).__module__ == f"runtime.cgroups.{backend.mode}"


def test_limits_appear_in_the_kernel_files(backend):
    cgroup = backend.create("sb-limits", CgroupLimits(cpu_cores=0.5, memory_mb=64, pids_max=32))
    if backend.mode == "v2":
        (path,) = sandbox_dirs(cgroup)
        read = lambda name: open(os.path.join(path, name)).read().strip()  # noqa: E731
        assert read("cpu.max") == "50000 100000"
        assert read("memory.max") == str(64 << 20)
        assert read("memory.swap.max") == "0"
        assert read("memory.oom.group") == "1"
        assert read("pids.max") == "32"
    else:
        files = {}
        for path in sandbox_dirs(cgroup):
            for name in os.listdir(path):
                files.setdefault(name, os.path.join(path, name))
        read = lambda name: open(files[name]).read().strip()  # noqa: E731
        assert read("cpu.cfs_period_us") == "100000"
        assert read("cpu.cfs_quota_us") == "50000"
        assert read("memory.limit_in_bytes") == str(64 << 20)
        if "memory.memsw.limit_in_bytes" in files:
            assert read("memory.memsw.limit_in_bytes") == str(64 << 20)
        assert read("memory.swappiness") == "0"
        assert read("pids.max") == "32"


def _io_source(tmp_path) -> tuple[str, str] | None:
    """(whole-disk "MAJ:MIN", a path whose reads reach that disk), or None.

    In the guest that is the raw /dev/ubda the runner attaches; on a host, a file
    written to the disk under tmp_path (reads with O_DIRECT bypass the page cache)."""
    if os.path.exists("/sys/block/ubda/dev"):
        return open("/sys/block/ubda/dev").read().strip(), "/dev/ubda"
    path = tmp_path / "io-source"
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    dev = os.stat(path).st_dev
    device = f"{os.major(dev)}:{os.minor(dev)}"
    # io limits apply to whole disks, not to partitions or virtual filesystems.
    sysfs = f"/sys/dev/block/{device}"
    if not os.path.exists(sysfs) or os.path.exists(f"{sysfs}/partition"):
        return None
    return device, str(path)


def test_io_limits_appear_in_the_kernel_files_and_reads_are_counted(backend, children, tmp_path):
    source = _io_source(tmp_path)
    if source is None:
        pytest.skip("no whole-disk block device under tmp_path to limit")
    device, path = source
    limits = CgroupLimits(io_read_bps={device: 64 << 20}, io_write_bps={device: 2 << 20})
    cgroup = backend.create("sb-io", limits)
    dirs = sandbox_dirs(cgroup)
    if backend.mode == "v2":
        io_max = open(os.path.join(dirs[0], "io.max")).read()
        assert f"{device} rbps={64 << 20} wbps={2 << 20}" in io_max
    else:
        (blkio,) = [d for d in dirs if os.path.exists(os.path.join(d, "blkio.throttle.read_bps_device"))]
        assert f"{device} {64 << 20}" in open(os.path.join(blkio, "blkio.throttle.read_bps_device")).read()
        assert f"{device} {2 << 20}" in open(os.path.join(blkio, "blkio.throttle.write_bps_device")).read()
    proc = spawn_in(cgroup, ["dd", f"if={path}", "of=/dev/null", "bs=64k", "count=8", "iflag=direct"])
    children.append(proc)
    assert proc.wait(timeout=60) == 0
    assert cgroup.usage().io_read_bytes >= 8 * 64 << 10


def test_a_child_moved_in_with_add_pid_is_accounted(backend, children):
    cgroup = backend.create("sb-addpid", CgroupLimits(memory_mb=256))
    script = (
        "import sys, time\n"
        "sys.stdin.readline()\n"
        "block = b'x' * (24 << 20)\n"
        "end = time.process_time() + 0.15\n"
        "while time.process_time() < end: pass\n"
    )
    proc = subprocess.Popen([*PY, script], stdin=subprocess.PIPE)
    children.append(proc)
    cgroup.add_pid(proc.pid)
    assert cgroup.pids() == [proc.pid]
    proc.communicate(b"go\n", timeout=60)
    assert proc.returncode == 0
    usage = cgroup.usage()
    assert usage.cpu_user_s + usage.cpu_system_s >= 0.1
    assert usage.memory_peak_bytes >= 24 << 20
    assert usage.oom_kills == 0
    assert usage.pids_current == 0
    assert cgroup.pids() == []
    has_psi = any(os.path.exists(os.path.join(d, "cpu.pressure")) for d in sandbox_dirs(cgroup))
    if has_psi:
        assert usage.psi["cpu"]["some_total_us"] > 0
    else:
        assert usage.psi is None  # v1, or a kernel built without PSI (the UML guest's)


def test_pressure_files_parse_into_named_fields(tmp_path):
    pressure = tmp_path / "cpu.pressure"
    pressure.write_text(
        "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=42\n"
    )
    parsed = read_psi(str(pressure))
    assert parsed["some_avg10"] == 1.5
    assert parsed["some_total_us"] == 123456
    assert parsed["full_total_us"] == 42
    assert read_psi(str(tmp_path / "missing")) is None


def test_a_process_joined_through_procs_files_is_inside_from_its_first_instruction(backend, children):
    cgroup = backend.create("sb-join", CgroupLimits())
    proc = spawn_in(cgroup, [*PY, "print(open('/proc/self/cgroup').read())"], stdout=subprocess.PIPE)
    children.append(proc)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "joining the cgroup failed"
    seen = own_cgroups(out.decode())
    for path in sandbox_dirs(cgroup):
        # Each sandbox directory ends with the path the kernel reports for the child.
        assert any(path.endswith(p) and p.endswith("/sb-join") for p in seen.values()), (path, seen)
    usage = cgroup.usage()
    if backend.mode == "v2":
        assert usage.pids_peak >= 1
    else:
        assert usage.pids_peak is None  # v1 has no pids.peak, and nothing is made up


def test_a_memory_hog_is_oom_killed_and_counted(backend, children):
    cgroup = backend.create("sb-oom", CgroupLimits(memory_mb=48))
    proc = spawn_in(cgroup, [*PY, "block = b'x' * (256 << 20)"])
    children.append(proc)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    usage = cgroup.usage()
    assert usage.oom_kills >= 1
    assert usage.memory_peak_bytes <= 48 << 20
    if backend.mode == "v2":
        assert usage.memory_max_events > 0  # memory.events "max"
    else:
        assert usage.memory_max_events is not None  # failcnt, which recent kernels may leave at 0


def test_a_fork_loop_stops_at_pids_max_and_is_counted(backend, children):
    cgroup = backend.create("sb-pids", CgroupLimits(pids_max=8))
    script = (
        "import os, time\n"
        "forked = 0\n"
        "for _ in range(40):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        os.close(1)\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    forked += 1\n"
        "print(forked)\n"
    )
    proc = spawn_in(cgroup, [*PY, script], stdout=subprocess.PIPE)
    children.append(proc)
    out, _ = proc.communicate(timeout=60)
    assert int(out) == 7  # the forking process itself is the eighth
    usage = cgroup.usage()
    assert usage.pids_max_events > 0
    assert usage.pids_current == 7
    cgroup.kill()
    assert cgroup.pids() == []


def test_a_busy_loop_under_a_tenth_of_a_core_is_throttled(backend, children):
    cgroup = backend.create("sb-cpu", CgroupLimits(cpu_cores=0.1))
    script = "import time\nend = time.monotonic() + 0.5\nwhile time.monotonic() < end: pass\n"
    started = time.monotonic()
    proc = spawn_in(cgroup, [*PY, script])
    children.append(proc)
    assert proc.wait(timeout=60) == 0
    wall_s = time.monotonic() - started
    usage = cgroup.usage()
    assert usage.cpu_nr_throttled > 0
    assert usage.cpu_throttled_s > 0
    # A tenth of a core for as long as it ran, plus a period's worth of slack.
    cpu_s = usage.cpu_user_s + usage.cpu_system_s
    assert cpu_s <= 0.1 * wall_s + 0.05, (cpu_s, wall_s)


def test_kill_empties_the_cgroup_with_every_process_in_it(backend, children):
    cgroup = backend.create("sb-kill", CgroupLimits())
    proc = spawn_in(cgroup, ["sh", "-c", "sleep 60 & sleep 60 & sleep 60 & wait"])
    children.append(proc)
    assert wait_for(lambda: len(cgroup.pids()) == 4), cgroup.pids()
    cgroup.kill()
    assert cgroup.pids() == []
    assert proc.wait(timeout=10) == -signal.SIGKILL
    cgroup.kill()  # nothing left: a no-op


def test_destroy_is_idempotent_and_works_from_any_state(backend, children):
    busy = backend.create("sb-busy", CgroupLimits(memory_mb=64))
    proc = spawn_in(busy, ["sleep", "60"])
    children.append(proc)
    assert wait_for(lambda: joined(busy, proc))
    busy.destroy()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert not any(os.path.exists(d) for d in sandbox_dirs(busy))
    busy.destroy()
    assert backend.open("sb-busy") is None

    # Half made: one directory already gone (or the only one, in v2).
    half = backend.create("sb-half", CgroupLimits())
    os.rmdir(sandbox_dirs(half)[0])
    reopened = backend.open("sb-half")
    if reopened is not None:
        reopened.destroy()
    half.destroy()
    assert not any(os.path.exists(d) for d in sandbox_dirs(half))
    assert backend.list_names() == []


def test_cgroups_are_made_only_beneath_our_own_cgroup(backend):
    cgroup = backend.create("sb-where", CgroupLimits(cpu_cores=1, memory_mb=64, pids_max=16))
    own = own_dirs(backend)
    parents = parent_dirs(backend)
    assert len(parents) == len(own)
    for own_dir, parent in zip(own, parents, strict=True):
        assert parent == os.path.join(own_dir, PARENT_PREFIX + backend.instance)
    for path in sandbox_dirs(cgroup):
        assert any(path == os.path.join(parent, "sb-where") for parent in parents), path
    # Nowhere else in any hierarchy is there a directory of this instance.
    for own_dir in set(own):
        hierarchy_root = own_dir
        while os.path.exists(os.path.join(os.path.dirname(hierarchy_root), "cgroup.procs")):
            hierarchy_root = os.path.dirname(hierarchy_root)
        for dirpath, dirnames, _files in os.walk(hierarchy_root):
            for name in dirnames:
                if name == PARENT_PREFIX + backend.instance:
                    assert os.path.join(dirpath, name) in parents


def test_two_instances_do_not_see_or_touch_each_other(make_backend):
    first, second = make_backend(), make_backend()
    first.create("sb-one", CgroupLimits())
    second.create("sb-two", CgroupLimits())
    assert first.list_names() == ["sb-one"]
    assert second.list_names() == ["sb-two"]
    assert first.open("sb-two") is None
    assert second.open("sb-one") is None
    with pytest.raises(RuntimeError, match="still exist"):
        first.teardown()
    first.open("sb-one").destroy()
    first.teardown()
    assert second.list_names() == ["sb-two"]


def test_a_fresh_backend_finds_and_destroys_what_an_earlier_one_left(make_backend, children):
    instance = TEST_PREFIX + "recover-" + uuid.uuid4().hex[:6]
    crashed = make_backend(instance)
    left = crashed.create("sb-left", CgroupLimits(pids_max=16))
    proc = spawn_in(left, ["sleep", "60"])
    children.append(proc)
    assert wait_for(lambda: joined(left, proc))
    crashed = left = None  # the crashed service's objects are gone; only the kernel remembers

    fresh = open_backend(instance)
    assert fresh.list_names() == ["sb-left"]
    assert fresh.open("sb-missing") is None
    found = fresh.open("sb-left")
    assert found.pids() == [proc.pid]
    assert found.usage().pids_current == 1
    found.destroy()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert fresh.list_names() == []
    fresh.teardown()


def test_bad_names_and_limits_are_refused_without_leftovers(backend):
    for bad in ("../escape", "a/b", "", ".hidden", "x" * 101):
        with pytest.raises(ValueError, match="name"):
            backend.create(bad, CgroupLimits())
    with pytest.raises(ValueError, match="memory_mb must be a positive integer, got -5"):
        backend.create("sb-bad", CgroupLimits(memory_mb=-5))
    with pytest.raises(ValueError, match="cpu_cores"):
        backend.create("sb-bad", CgroupLimits(cpu_cores=0))
    assert backend.list_names() == []
    backend.create("sb-bad", CgroupLimits())
    with pytest.raises(RuntimeError, match="already exists"):
        backend.create("sb-bad", CgroupLimits())


def test_v2_service_lives_in_a_supervisor_leaf_with_controllers_enabled_below(backend):
    if backend.mode != "v2":
        pytest.skip("v2 only (the UML guest)")
    backend.prepare()
    assert own_cgroups()[""].endswith("/" + SUPERVISOR_LEAF)
    assert os.path.dirname(backend.supervisor_dir) == backend.root_dir
    for path in (backend.root_dir, backend.parent_dir):
        enabled = open(os.path.join(path, "cgroup.subtree_control")).read().split()
        assert {"cpu", "memory", "pids"} <= set(enabled), (path, enabled)
    # A second backend finds the service already in the supervisor leaf and
    # treats its parent as the root, instead of nesting another one.
    other = open_backend(RUN.register_instance(TEST_PREFIX + "again"))
    assert other.root_dir == backend.root_dir
    other.teardown()
    backend.teardown()
    assert os.path.isdir(backend.supervisor_dir)


def test_v2_kill_by_freezing_when_cgroup_kill_is_missing(backend, children):
    if backend.mode != "v2":
        pytest.skip("v2 only (the UML guest)")
    cgroup = backend.create("sb-freeze", CgroupLimits())
    proc = spawn_in(cgroup, ["sh", "-c", "sleep 60 & sleep 60 & wait"])
    children.append(proc)
    assert wait_for(lambda: len(cgroup.pids()) == 3)
    cgroup._freeze_and_kill()
    assert cgroup.pids() == []
    assert proc.wait(timeout=10) == -signal.SIGKILL


def test_co_mounted_v1_controllers_share_one_hierarchy_and_mount_roots_are_honoured():
    # What a classic systemd v1 host shows: cpu and cpuacct mounted together, and
    # (as inside a container) a hierarchy whose mount shows only a subtree.
    mountinfo = (
        "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "32 25 0:28 /machine/box /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        "33 25 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
    )
    proc_cgroup = (
        "5:pids:/machine/box/svc\n4:memory:/system.slice/w.service\n"
        "3:cpu,cpuacct:/system.slice/w.service\n1:name=systemd:/system.slice/w.service\n0::/\n"
    )
    mounts = cgroup_mounts(mountinfo)
    assert detect_mode(mountinfo) == "v1"
    hierarchies = v1_hierarchies(mounts, own_cgroups(proc_cgroup))
    by_controllers = {h.controllers: h.own_dir for h in hierarchies}
    assert by_controllers == {
        ("cpu", "cpuacct"): "/sys/fs/cgroup/cpu,cpuacct/system.slice/w.service",
        ("memory",): "/sys/fs/cgroup/memory/system.slice/w.service",
        ("pids",): "/sys/fs/cgroup/pids/svc",
    }
