"""Pre-warmed sandboxes (runtime/pool.py), on real sandboxes: the isolation and hardening
probes run against pooled sandboxes, no state crosses from one cycle to the next, inputs
are attached read-only, the record covers the cycle only, a miss goes cold, and real work
evicts idle warm sandboxes."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.admission import Admission, HostBudget
from runtime.mounts import Bind
from runtime.pool import POOL_AGENT, WarmPool, WarmProfile, parse_profiles, run_cycle
from runtime.sandbox import InvalidSpec, SandboxSpec, UnknownSandbox
from tests import test_sandbox_hardening as hardening
from tests import test_sandbox_isolation as isolation
from tests.helpers import wait_until
from tests.warmpool import CAPS, PooledSandboxes

# Host only: a warm pool's dozens of numpy zygotes are too slow for the UML guest's time box,
# and what differs there (cgroup v2 only) is the cgroup code the batteries already cover.

PROBES = [
    isolation.test_pid_namespace_shows_only_its_own_processes,
    isolation.test_first_process_is_pid_1_and_reaps_orphans,
    isolation.test_data_and_model_are_mounted_read_only,
    hardening.test_dev_shm_is_noexec_but_jit_mappings_work,
    isolation.test_own_proc_and_minimal_dev_and_no_writable_sys,
    isolation.test_host_secrets_are_unreachable,
    isolation.test_own_hostname_and_sysv_ipc,
    isolation.test_unprivileged_user_without_capabilities_no_new_privs_and_rlimits,
    isolation.test_seccomp_makes_dangerous_syscalls_fail_with_eperm,
    hardening.test_socket_families_beyond_the_netns_are_refused,
    hardening.test_abstract_unix_sockets_of_the_host_are_out_of_reach,
    hardening.test_kernel_interfaces_a_namespace_leaves_shared_are_refused,
]


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    manager = PooledSandboxes(tmp_path_factory.mktemp("warm-pool-state"), size=2)
    yield manager
    manager.close()


def python(code: str) -> list[str]:
    return ["python", "-c", textwrap.dedent(code)]


def ok(result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.signal, result.stdout, result.stderr)
    return result.stdout.decode()


@pytest.mark.parametrize("probe", PROBES, ids=lambda probe: probe.__name__.removeprefix("test_"))
def test_the_sandbox_batteries_pass_against_pooled_sandboxes(pooled, probe, tmp_path):
    hits = pooled.hits
    arguments = {"sandboxes": pooled, "box": pooled.create(), "tmp_path": tmp_path}
    probe(**{name: arguments[name] for name in inspect.signature(probe).parameters})
    assert pooled.hits > hits  # it really ran in warm sandboxes


def test_the_network_is_isolated_and_host_loopback_unreachable(pooled):
    # The battery's own version also checks the named netns on the host, which a pooled
    # sandbox no longer has once its one cycle is over; the rest of it is here.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        code = f"""
        import os, socket
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(('127.0.0.1', {listener.getsockname()[1]}))
            print('reached', sorted(os.listdir('/proc/sys/net/ipv4/conf')))
        except OSError as exc:
            print('refused', sorted(os.listdir('/proc/sys/net/ipv4/conf')))
        """
        assert ok(pooled.execute(pooled.create(), python(code))) == "refused ['all', 'default', 'lo']\n"


def test_the_zygote_is_the_sandboxs_own_unprivileged_user_with_numpy_already_imported(pooled):
    box = pooled.create()
    code = """
    import os, sys
    first = 'numpy' in sys.modules and 'wondercraft_learn' in sys.modules
    status = dict(line.split(':\\t', 1) for line in open('/proc/self/status').read().splitlines() if ':\\t' in line)
    print(first, os.getuid(), os.getgid(), status['CapEff'].strip(), status['CapBnd'].strip(),
          status['NoNewPrivs'].strip(), status['Seccomp'].strip(), os.getppid(), sys.argv)
    """
    fields = ok(pooled.execute(box, python(code) + ["arg"])).split(" ", 8)
    assert fields[0] == "True"  # imported before the job came: the program did not pay for it
    assert fields[1] == fields[2] == str(box.uid) and box.uid in pooled.manager.uids.range
    assert fields[3:7] == ["0000000000000000", "0000000000000000", "1", "2"]
    assert fields[7] == "0"  # the zygote itself is the program; its parent, the launcher, is outside
    assert fields[8].strip() == "['-c', 'arg']"


def test_no_state_crosses_from_one_cycle_to_the_next(pooled):
    first = pooled.create()
    plant = """
    import os, subprocess, sys, numpy
    for path in ('/tmp/planted', '/dev/shm/planted', '/work/planted', '/out/planted'):
        open(path, 'w').write('x')
    os.environ['WC_PLANTED'] = '1'
    os.putenv('WC_PLANTED_RAW', '1')
    numpy.wc_planted = 1
    sys.modules['wc_planted_module'] = type(sys)('wc_planted_module')
    daemon = subprocess.Popen(['sleep', '300'], start_new_session=True)
    print(daemon.pid)
    """
    ok(pooled.execute(first, python(plant)))
    with pytest.raises(UnknownSandbox):  # destroyed and forgotten once its cycle ended
        pooled.manager.get(first.id)
    second = pooled.create()
    probe = """
    import json, os, sys, numpy
    print(json.dumps({
        'files': [p for p in ('/tmp/planted', '/dev/shm/planted', '/work/planted', '/out/planted') if os.path.exists(p)],
        'env': [k for k in os.environ if k.startswith('WC_PLANTED')],
        'attribute': hasattr(numpy, 'wc_planted'),
        'module': 'wc_planted_module' in sys.modules,
        'processes': sorted(open(f'/proc/{p}/comm').read().strip() for p in os.listdir('/proc') if p.isdigit()),
        'tmp': sorted(os.listdir('/tmp')), 'shm': sorted(os.listdir('/dev/shm')), 'out': sorted(os.listdir('/out')),
    }))
    """
    seen = json.loads(ok(pooled.execute(second, python(probe))))
    assert second.id != first.id and second.uid is not None
    # A checkout below /tmp has its venv bound at its host path: that path's first folder shows.
    mount_points = sorted(
        {Path(p).parts[2] for p in (sys.prefix, sys.base_prefix) if Path(p).parts[1:2] == ("tmp",)}
    )
    assert seen == {
        "files": [], "env": [], "attribute": False, "module": False, "processes": ["python", "wc-init"],
        "tmp": mount_points, "shm": [], "out": [],
    }  # fmt: skip


def test_inputs_are_attached_read_only_and_out_is_writable(pooled, tmp_path):
    program = tmp_path / "program"
    program.mkdir()
    (program / "main.py").write_text(
        textwrap.dedent("""
        import errno, json, sys
        import wondercraft_learn as wl
        refused = []
        for path in ('/program/main.py', '/program/new', '/job.json', '/data/batch.npz'):
            try:
                open(path, 'a').close()
            except OSError as exc:
                refused.append(exc.errno == errno.EROFS)
        open('/out/metrics.json', 'w').write(json.dumps({'job': wl.job(), 'argv': sys.argv[1:]}))
        print(json.dumps(refused, separators=(',', ':')), open('/out/metrics.json').read())
        """)
    )
    (tmp_path / "job.json").write_text(json.dumps({"epochs": 3}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "batch.npz").write_bytes(b"not really")
    # Writable by anyone on the host: only the read-only mount stands in the way.
    os.chmod(tmp_path, 0o755)
    for path in (program, data):
        os.chmod(path, 0o777)
    for path in (program / "main.py", tmp_path / "job.json", data / "batch.npz"):
        os.chmod(path, 0o666)
    binds = [
        Bind(str(program), "/program"),
        Bind(str(tmp_path / "job.json"), "/job.json"),
        Bind(str(data), "/data"),
    ]
    result = pooled.execute(pooled.create(), ["python", "/program/main.py", "--x"], binds=binds)
    refused, written = ok(result).split(" ", 1)
    assert json.loads(refused) == [True, True, True, True]
    assert json.loads(written) == {"job": {"epochs": 3}, "argv": ["--x"]}
    assert sorted(os.listdir(program)) == ["main.py"]  # nothing written through to the host
    assert not os.path.exists("/program") and not os.path.exists("/job.json")  # not mounted on the host
    # The thread that made the moves is back in the service's own mount namespace.
    attachers = [
        t
        for t in os.listdir("/proc/self/task")
        if open(f"/proc/self/task/{t}/comm").read().strip() == "wc-attach"
    ]
    assert attachers and all(
        os.readlink(f"/proc/self/task/{t}/ns/mnt") == os.readlink("/proc/self/ns/mnt") for t in attachers
    )


def test_the_record_covers_the_cycle_and_the_audit_names_the_cycles_agent(pooled):
    announced: list[tuple[str, str]] = []

    async def on_created(sandbox):
        announced.append((sandbox.id, sandbox.spec.agent_id))

    pooled.manager.on_created.append(on_created)
    try:
        pooled.wait_warm(2)
        warm = pooled.acquire("agent-audited")
        assert announced == [(warm.id, "agent-audited")]  # idle warm ones were never announced
        # The program spends a twentieth of a second of CPU (beyond what the zygote spent
        # before the job), which the cycle's record must show.
        burn = (
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.05: pass\nprint('ran')"
        )
        result = pooled.call(warm.run([], ["python", "-c", burn], timeout_s=60)).result
    finally:
        pooled.manager.on_created.remove(on_created)
    assert ok(result) == "ran\n" and not result.stderr
    usage = result.usage
    cycle_cpu = usage["cgroup"]["cpu_user_s"] + usage["cgroup"]["cpu_system_s"]
    sandbox_cpu = usage["sandbox_cgroup"]["cpu_user_s"] + usage["sandbox_cgroup"]["cpu_system_s"]
    assert cycle_cpu < sandbox_cpu  # the zygote's numpy import is not the cycle's
    assert usage["cpu_s"] < sandbox_cpu
    assert usage["cpu_s"] == pytest.approx(cycle_cpu) and usage["cpu_s"] >= 0.04
    assert usage["warm"]["profile"] == "numpy" and usage["warm"]["warmup_ms"] > 0
    assert usage["sandbox_record"]["sandbox_id"] == warm.id
    assert usage["wall_s"] * 1000 < usage["sandbox_record"]["wall_s"] * 1000  # wall time from job start


def test_a_cycle_past_its_timeout_ends_as_timeout_with_everything_it_started(pooled):
    warm = pooled.acquire()
    code = (
        "import subprocess, time; subprocess.Popen(['sleep', '300'], start_new_session=True); time.sleep(300)"
    )
    result = pooled.call(warm.run([], ["python", "-c", code], timeout_s=1.0)).result
    assert result.termination_reason == "timeout"
    assert warm.sandbox.status == "destroyed"
    assert not os.path.exists(f"/proc/{warm.sandbox.init_pid}/root/proc")


def test_a_pool_miss_falls_back_to_a_cold_sandbox(pooled):
    spec = SandboxSpec(agent_id="test-agent", caps=CAPS)
    argv = ["python", "-c", "import os; print(os.environ.get('WONDERCRAFT_SANDBOX_ID'))"]
    pooled.wait_warm()
    result, warm, _ = pooled.call(run_cycle(pooled.manager, pooled.pool, "numpy", spec, argv, timeout_s=60))
    assert warm is True and ok(result).strip() == result.usage["sandbox_record"]["sandbox_id"]
    misses = pooled.pool.stats["numpy"]["misses"]
    # A profile the pool does not hold, and caps no warm sandbox has: both go cold.
    for profile, caps in (("torch", CAPS), ("numpy", SandboxSpec(agent_id="x").caps)):
        cold_spec = SandboxSpec(agent_id="test-agent", caps=caps)
        result, warm, _ = pooled.call(
            run_cycle(pooled.manager, pooled.pool, profile, cold_spec, argv, timeout_s=60)
        )
        assert warm is False and ok(result).strip() == result.usage["sandbox_record"]["sandbox_id"]
        assert "warm" not in result.usage
    # Caps the profile does not keep count as a miss of it; a profile the pool lacks counts nowhere.
    assert pooled.pool.stats["numpy"]["misses"] == misses + 1

    async def drained() -> tuple:
        taken = [w for w in [await pooled.pool.acquire("numpy", "test-agent") for _ in range(4)] if w]
        outcome = await run_cycle(pooled.manager, pooled.pool, "numpy", spec, argv, timeout_s=60)
        for w in taken:
            await w.run([], ["true"], timeout_s=30)
        return outcome

    result, warm, _ = pooled.call(drained())
    assert warm is False and ok(result)  # the pool was empty: a miss, served cold
    assert pooled.pool.stats["numpy"]["misses"] > misses


def test_real_work_evicts_idle_warm_sandboxes_and_refills_wait_for_room(tmp_path):
    budget = Admission(HostBudget(memory_mb=2 * CAPS.memory_mb, cpu_cores=64, gpus=0))
    sandboxes = PooledSandboxes(tmp_path / "state", size=2, admission=budget)
    try:
        sandboxes.wait_warm(2)
        assert budget.totals()["agents"][POOL_AGENT]["sandboxes"] == 2
        cold = sandboxes.call(sandboxes.manager.create(SandboxSpec(agent_id="real-work", caps=CAPS)))
        assert budget.totals()["agents"]["real-work"]["sandboxes"] == 1
        assert sandboxes.pool.idle_count("numpy") == 1
        sandboxes.call(asyncio.sleep(3))  # past a refill's back-off: still no room for a second
        assert sandboxes.pool.idle_count("numpy") <= 1
        assert budget.committed_memory_mb <= 2 * CAPS.memory_mb
        sandboxes.call(sandboxes.manager.destroy(cold.id))
        wait_until(lambda: sandboxes.pool.idle_count("numpy") == 2, 120, "the pool refilled")
    finally:
        sandboxes.close()


def test_profiles_parse_and_size_zero_is_off(pooled):
    profiles = parse_profiles("numpy=2, torch=1", CAPS, idle_s=30)
    assert [(p.name, p.size, p.imports, p.idle_s) for p in profiles] == [
        ("numpy", 2, ("numpy", "wondercraft_learn"), 30),
        ("torch", 1, ("numpy", "torch", "wondercraft_learn"), 30),
    ]
    assert parse_profiles("", CAPS) == []
    for bad in ("numpy", "numpy=x", "tensorflow=1", "numpy=1000"):
        with pytest.raises(InvalidSpec):
            parse_profiles(bad, CAPS)
    off = WarmPool(pooled.manager, [WarmProfile("numpy", CAPS, size=0)])
    assert not off.enabled and pooled.call(off.acquire("numpy", "a")) is None


def test_a_program_ends_in_the_zygote_as_in_a_fresh_interpreter(pooled):
    box = pooled.create()
    ending = "import atexit, threading, time; atexit.register(lambda: print('atexit ran'))\n"
    ending += "threading.Thread(target=lambda: (time.sleep(0.2), print('thread joined'))).start()\n"
    result = pooled.execute(box, python(ending + "raise SystemExit(3)"))
    assert (result.exit_code, result.stdout) == (3, b"thread joined\natexit ran\n")
    result = pooled.execute(box, python("raise ValueError('boom')"))
    assert result.exit_code == 1 and result.stderr.endswith(b"ValueError: boom\n")
    result = pooled.execute(box, python("import sys; sys.exit('a message')"))
    assert result.exit_code == 1 and result.stderr == b"a message\n"


def test_a_profile_serves_jobs_up_to_its_caps_and_retune_only_tightens(pooled):
    fits = pooled.pool.fits
    assert fits("numpy", CAPS)
    assert fits("numpy", dataclasses.replace(CAPS, cpu_cores=0.25, memory_mb=64, pids=16))
    for above in ({"cpu_cores": 2.0}, {"memory_mb": 2048}, {"pids": 256}):
        assert not fits("numpy", dataclasses.replace(CAPS, **above))
    for other in ({"storage_mb": 64}, {"gpu_count": 1}):  # not tightened: must be the profile's own
        assert not fits("numpy", dataclasses.replace(CAPS, **other))
    assert not fits("torch", CAPS)

    warm = pooled.acquire()
    try:
        for loosened in ({"memory_mb": 2048}, {"storage_mb": 64}):
            with pytest.raises(InvalidSpec):
                pooled.manager.retune(warm.sandbox, dataclasses.replace(CAPS, **loosened))
        tight = dataclasses.replace(CAPS, cpu_cores=0.5, memory_mb=96, pids=32)
        pooled.manager.retune(warm.sandbox, tight)
        # The kernel enforcing a tightened cap: tests/test_warm_pool_service.py (a 64 MB memory bomb).
        result = pooled.call(warm.run([], ["python", "-c", "print('ran')"], timeout_s=60)).result
    finally:
        if warm.sandbox.alive:
            pooled.call(pooled.pool._discard(warm, "killed"))
    assert ok(result)
    record = result.usage["sandbox_record"]
    assert (
        record["limits"]["memory_mb"] == 96
        and record["limits"]["cpu_cores"] == 0.5
        and record["limits"]["pids"] == 32
    )
