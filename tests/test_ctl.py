"""wondercraft-ctl against a live server: every command's table and its --json, the token
sources, the exit statuses, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.hostaudit import instance_of
from runtime.sandbox import instance_name
from server.training.caps import LEARN_CYCLE_MEMORY_MB_MIN
from tests.helpers import ADMIN_TOKEN, api_server, clean_env, free_port, http, register_agent, wait_until

CTL = str(Path(sys.executable).parent / "wondercraft-ctl")
JOB = {
    "modelType": "linear:ctl",
    "dataBatch": [{"x": [1.0, 2.0], "y": 5.0}, {"x": [2.0, 1.0], "y": 4.0}, {"x": [0.0, 1.0], "y": 2.0}],
    "trainingParams": {"epochs": 4, "learningRate": 0.05, "batchSize": 4},
    "resourceCaps": {"cpu": 1, "memory": 256},
}


def ctl(server, *args: str, token: str | None = ADMIN_TOKEN, timeout: float = 60, **env: str):
    """Runs the real console script; the service's URL and token come from the environment."""
    environment = clean_env(WONDERCRAFT_URL=server.url if server else "http://127.0.0.1:9", **env)
    environment.pop("WONDERCRAFT_SHUTDOWN_GRACE", None)
    if token:
        environment["WONDERCRAFT_ADMIN_TOKEN"] = token
    return subprocess.run([CTL, *args], capture_output=True, text=True, timeout=timeout, env=environment)


def ok(result) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def as_json(result):
    return json.loads(ok(result))


def one_line_error(result, code: int, fragment: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wondercraft-ctl: error: "), result.stderr
    assert fragment in lines[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(
        tmp_path_factory.mktemp("ctl") / "state",
        TELEMETRY_FLUSH_INTERVAL="0.2",
        PETALS_AUTO_CREATE_MODELS="1",
    ) as server:
        server.token = register_agent(server, "agent-a")
        yield server


def new_sandbox(server, cpu: float = 0.5, memory: int = 128) -> str:
    body = {"resourceCaps": {"cpu": cpu, "memory": memory}}
    status, view, _ = http("POST", f"{server.url}/v1/sandbox/create", body, token=server.token)
    assert status == 201, view
    return view["sandboxId"]


def submit(server, job: dict) -> str:
    status, body, _ = http("POST", f"{server.url}/v1/petals/train", job, token=server.token)
    assert status == 202, body
    return body["cycleId"]


@pytest.fixture(scope="module")
def trained(server):
    """A cycle that ran and was committed as version 1 of linear:ctl."""
    cycle_id = submit(server, JOB)
    result = ctl(server, "cycles", "watch", cycle_id, "--interval", "0.1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the round closes just after the cycle completes
        if (
            http("GET", f"{server.url}/v1/petals/status/{cycle_id}", token=server.token)[1]["status"]
            == "aggregated"
        ):
            break
        time.sleep(0.05)
    return cycle_id, result


def test_ctl_prints_help_and_exits_zero():
    result = subprocess.run([CTL, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "Administer a WonderCraft service" in result.stdout
    assert "Exit status" in result.stdout


def test_status_shows_health_mode_counts_and_queue_depth(server):
    table = ok(ctl(server, "status"))
    for label in ("service", "cgroup mode", "instance", "sandboxes", "queue depth", "agents", "gpus"):
        assert f"\n{label} " in f"\n{table}", table
    data = as_json(ctl(server, "status", "--json"))
    assert data["status"] == "ok" and data["cgroupMode"] in ("v1", "v2", "hybrid")
    assert data["instance"] == instance_name(server.state_dir) == instance_of(server.state_dir)
    assert data["cycles"]["maxConcurrent"] == 10 and data["agents"]["active"] >= 1
    assert as_json(ctl(server, "--json", "status"))["instance"] == data["instance"]  # before or after
    # Committed against the host's admission budget, as the service counts it.
    admission = next(line for line in table.splitlines() if line.startswith("admission"))
    memory = data["admission"]["memoryMB"]
    assert f"memoryMB {memory['committed']} of {memory['budget']}" in admission, admission


def test_token_comes_from_the_flag_the_environment_or_the_state_dirs_file(server, tmp_path):
    assert as_json(ctl(server, "--token", ADMIN_TOKEN, "status", "--json", token=None))["status"] == "ok"
    state = tmp_path / "state"
    state.mkdir()
    (state / "admin.token").write_text(ADMIN_TOKEN + "\n")
    assert as_json(ctl(server, "--state-dir", str(state), "status", "--json", token=None))["status"] == "ok"
    environment = {"WONDERCRAFT_STATE_DIR": str(state)}
    assert as_json(ctl(server, "status", "--json", token=None, **environment))["status"] == "ok"
    one_line_error(ctl(server, "--state-dir", str(tmp_path), "status", token=None), 4, "no admin token")
    one_line_error(ctl(server, "status", token="not-the-admin-token-0123"), 4, "refused the token (401)")
    one_line_error(ctl(server, "agents", "ls", token=server.token), 4, "refused the token (403)")
    dead = f"http://127.0.0.1:{free_port()}"
    one_line_error(ctl(server, "--url", dead, "status"), 3, f"cannot reach the service at {dead}")


def test_agents_add_ls_revoke(server):
    added = ok(ctl(server, "agents", "add", "ctl-agent"))
    token = next(line.split()[1] for line in added.splitlines() if line.startswith("token"))
    assert http("GET", f"{server.url}/v1/telemetry/training", token=token)[0] == 200
    created = as_json(ctl(server, "agents", "add", "ctl-agent-2", "--json"))
    assert created["agentId"] == "ctl-agent-2" and created["token"]
    listing = ok(ctl(server, "agents", "ls"))
    assert listing.splitlines()[0].split() == [
        "AGENT", "STATE", "CREATED", "REVOKED", "EXCLUDED", "IN-A-ROW", "LAST-NORM", "SUSPENDED"
    ]  # fmt: skip
    row = next(line.split() for line in listing.splitlines() if line.split()[:1] == ["ctl-agent"])
    assert row[1] == "active" and row[-4:] == ["0/0", "0", "-", "-"]  # no update screened yet
    assert "revoked at" in ok(ctl(server, "agents", "revoke", "ctl-agent"))
    assert as_json(ctl(server, "agents", "revoke", "ctl-agent-2", "--json"))["active"] is False
    agents = {a["agentId"]: a for a in as_json(ctl(server, "agents", "ls", "--json"))["agents"]}
    assert agents["ctl-agent"]["active"] is False and agents["ctl-agent-2"]["revokedAt"] is not None
    assert http("GET", f"{server.url}/v1/telemetry/training", token=token)[0] == 401
    one_line_error(ctl(server, "agents", "revoke", "nobody-at-all"), 5, "nobody-at-all")
    one_line_error(ctl(server, "agents", "add", "agent-a"), 6, "409")


def test_sandbox_ls_inspect_exec_kill(server):
    sandbox_id = new_sandbox(server)
    rows = ok(ctl(server, "sandbox", "ls", "--status", "running")).splitlines()
    assert rows[0].split()[:3] == ["SANDBOX", "AGENT", "STATUS"]
    assert any(row.split()[:3] == [sandbox_id, "agent-a", "running"] for row in rows)
    listed = as_json(ctl(server, "sandbox", "ls", "--agent", "agent-a", "--json"))
    assert sandbox_id in [s["sandboxId"] for s in listed["sandboxes"]]
    inspected = ok(ctl(server, "sandbox", "inspect", sandbox_id))
    assert "cpu 0.5, memory 128 MB, pids 256" in inspected and "\nstatus       running" in inspected

    run = ctl(
        server,
        "sandbox",
        "exec",
        sandbox_id,
        "--env",
        "WHO=ctl",
        "--",
        "sh",
        "-c",
        'echo "hi $WHO"; echo oops >&2; exit 7',
    )
    assert run.returncode == 7 and run.stdout == "hi ctl\n" and run.stderr == "oops\n"
    piped = subprocess.run(
        [CTL, "sandbox", "exec", sandbox_id, "--stdin", "-", "--", "cat"], input="from stdin", capture_output=True,
        text=True, timeout=30, env=clean_env(WONDERCRAFT_URL=server.url, WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN),
    )  # fmt: skip
    assert piped.returncode == 0 and piped.stdout == "from stdin"
    result = as_json(ctl(server, "sandbox", "exec", sandbox_id, "--json", "--", "id", "-u"))
    assert (
        result["exitCode"] == 0 and 600000 <= int(result["stdout"]) <= 659999
    )  # the sandbox's own uid (SANDBOX_UID_RANGE)
    killed = ctl(server, "sandbox", "exec", sandbox_id, "--", "sh", "-c", "kill -9 $$")
    assert killed.returncode == 128 + signal.SIGKILL

    assert f"{sandbox_id} destroyed (destroyed)" in ok(ctl(server, "sandbox", "kill", sandbox_id))
    again = as_json(ctl(server, "sandbox", "kill", sandbox_id, "--json"))  # destroying twice answers the same
    assert again["status"] == "destroyed" and again["finalResourceRecord"]["terminationReason"] == "destroyed"
    final = as_json(ctl(server, "sandbox", "inspect", sandbox_id, "--json"))
    assert final["status"] == "destroyed" and final["finalResourceRecord"]["terminationReason"] == "destroyed"
    one_line_error(ctl(server, "sandbox", "inspect", "sb-000000000000"), 5, "sb-000000000000")
    one_line_error(ctl(server, "sandbox", "exec", sandbox_id, "--", "true"), 6, "409")
    bad = ctl(server, "sandbox", "exec", sandbox_id, "--env", "NOEQUALS", "--", "true")
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr and "Traceback" not in bad.stderr


def test_stats_show_cpu_memory_and_pids_of_a_busy_sandbox(server):
    sandbox_id = new_sandbox(server, cpu=0.5, memory=128)
    busy = {"sandboxId": sandbox_id, "command": ["sh", "-c", "while :; do :; done"], "timeoutSeconds": 4}
    spinner = threading.Thread(
        target=http, args=("POST", f"{server.url}/v1/sandbox/execute", busy), kwargs={"token": server.token}
    )
    spinner.start()
    try:
        time.sleep(0.5)
        sample = as_json(ctl(server, "stats", "--no-stream", "--interval", "1", "--json"))
        row = next(r for r in sample["sandboxes"] if r["sandboxId"] == sandbox_id)
        # Held to half a core by its cpu cap: well above idle, never above the cap for long.
        assert 20 <= row["cpuPercent"] <= 75, row
        assert row["memoryLimitBytes"] == 128 << 20 and 0 < row["memoryCurrentBytes"] < 128 << 20
        assert row["pidsLimit"] == 256 and row["pidsCurrent"] >= 2 and row["agentId"] == "agent-a"
        table = ok(ctl(server, "stats", "--no-stream", "--interval", "0.3")).splitlines()
        assert table[0].split()[:4] == ["SANDBOX", "AGENT", "CYCLE", "CPU"]
        line = next(t for t in table if t.startswith(sandbox_id))
        assert "/ 128.0MiB" in line and "/256" in line
        stream = ok(ctl(server, "stats", "--iterations", "2", "--interval", "0.2", "--json")).splitlines()
        assert len(stream) == 2 and all(
            sandbox_id in {r["sandboxId"] for r in json.loads(s)["sandboxes"]} for s in stream
        )
    finally:
        spinner.join(30)
        ctl(server, "sandbox", "kill", sandbox_id)


def test_cycles_watch_shows_epochs_with_loss_and_ends_with_the_result(server, trained):
    cycle_id, watched = trained
    lines = ok(watched).splitlines()
    assert lines[0].startswith("[") and "epoch" in lines[0] and "loss" in lines[0]
    assert any(line.startswith("[" + "#" * 30 + "] epoch 4/4 loss ") for line in lines), lines
    assert lines[-1].startswith(("completed: loss", "aggregated: loss")), lines
    final = ok(ctl(server, "cycles", "watch", cycle_id, "--json")).splitlines()
    assert json.loads(final[-1])["status"] == "aggregated" and json.loads(final[-1])["resultVersion"] == 1


def test_cycles_ls_and_show(server, trained):
    cycle_id, _ = trained
    rows = ok(ctl(server, "cycles", "ls")).splitlines()
    assert rows[0].split()[:4] == ["CYCLE", "AGENT", "MODEL", "STATUS"]
    row = next(r.split() for r in rows if r.startswith(cycle_id))
    assert row[1:5] == ["agent-a", "linear:ctl", "aggregated", "1"] and row[5] == "4/4"
    listed = as_json(ctl(server, "cycles", "ls", "--status", "aggregated", "--model", "linear:ctl", "--json"))
    assert [c["cycleId"] for c in listed["cycles"]] == [cycle_id] and listed["count"] == 1
    assert as_json(ctl(server, "cycles", "ls", "--agent", "nobody", "--json"))["cycles"] == []
    shown = ok(ctl(server, "cycles", "show", cycle_id))
    assert "result version  1" in shown and '"outcome": "committed"' in shown
    assert as_json(ctl(server, "cycles", "show", cycle_id, "--json"))["result"]["numSamples"] == 3
    one_line_error(ctl(server, "cycles", "show", "cy-nothing"), 5, "cy-nothing")


def test_watching_a_cycle_that_fails_exits_one_with_the_reason(server):
    # The smallest cap a learn cycle may ask for cannot hold a ~2 M-parameter model: the kernel's
    # OOM killer ends it.
    starved = {"modelType": "mlp:starved", "modelConfig": {"inputDim": 2, "numClasses": 6, "hidden": [2048, 1024]},
               "dataBatch": [{"x": [1.0, 2.0], "y": 1}], "trainingParams": {"epochs": 1},
               "resourceCaps": {"cpu": 1, "memory": LEARN_CYCLE_MEMORY_MB_MIN}}  # fmt: skip
    cycle_id = submit(server, starved)
    result = ctl(server, "cycles", "watch", cycle_id, "--interval", "0.1")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout.splitlines()[-1].startswith("failed: memory_limit")


def test_model_ls_show_export_and_rollback(server, trained, tmp_path):
    assert ["linear:ctl", "1", "2"] in [r.split() for r in ok(ctl(server, "model", "ls")).splitlines()]
    versions = ok(ctl(server, "model", "ls", "linear:ctl")).splitlines()
    assert versions[0].split()[:3] == ["VERSION", "PARENT", "SHA256"]
    assert versions[1].split()[0] == "0" and versions[2].split()[:2] == ["*1", "0"]
    assert [
        v["version"] for v in as_json(ctl(server, "model", "ls", "linear:ctl", "--json"))["versions"]
    ] == [0, 1]
    shown = ok(ctl(server, "model", "show", "linear:ctl"))
    assert "version          1 (current 1)" in shown and "layer0.weight  2x1" in shown
    v0 = as_json(ctl(server, "model", "show", "linear:ctl", "--version", "0", "--json"))
    assert v0["version"] == 0 and v0["parameters"]["layer0.weight"]["shape"] == [2, 1]

    target = tmp_path / "model.onnx"
    exported = as_json(ctl(server, "model", "export", "linear:ctl", "--onnx", str(target), "--json"))
    assert exported["bytes"] == target.stat().st_size > 0
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    inputs = np.array([[1.0, 2.0], [3.0, -1.0]], dtype=np.float32)
    ours = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    body = {"modelType": "linear:ctl", "inputs": inputs.tolist()}
    status, served, _ = http("POST", f"{server.url}/v1/petals/model/shared/predict", body, token=server.token)
    assert status == 200 and np.allclose(ours, served["outputs"], atol=1e-5)

    assert "linear:ctl is at version 0" in ok(ctl(server, "model", "rollback", "linear:ctl", "0"))
    assert as_json(ctl(server, "model", "show", "linear:ctl", "--json"))["currentVersion"] == 0
    assert as_json(ctl(server, "model", "rollback", "linear:ctl", "1", "--json"))["currentVersion"] == 1
    one_line_error(ctl(server, "model", "show", "linear:missing"), 5, "linear:missing")
    one_line_error(ctl(server, "model", "rollback", "linear:ctl", "9"), 5, "no version 9")


def test_telemetry_tail_and_follow(server, trained):
    cycle_id, _ = trained
    recent = ok(ctl(server, "telemetry", "tail", "-n", "5"))
    assert any(
        "training_cycle_completed" in line and cycle_id in line and "loss=" in line
        for line in recent.splitlines()
    )
    events = [json.loads(line) for line in ok(ctl(server, "telemetry", "tail", "--json")).splitlines()]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)  # oldest first

    environment = clean_env(WONDERCRAFT_URL=server.url, WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN)
    streams_before = _open_streams(server)
    follower = subprocess.Popen(
        [CTL, "telemetry", "tail", "-f", "-n", "0", "--agent", "follow-me", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        # Ctrl-C as a terminal gives it, even where this run was started in the background
        # (a non-interactive shell starts background jobs with SIGINT ignored, and exec keeps that).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        # Events posted before the follower subscribed would not reach it (-n 0): wait for the
        # service to count one more open stream than before.
        wait_until(lambda: _open_streams(server) > streams_before, 60, "the follower's subscription")
        batch = {
            "events": [
                {"event": "training_cycle_failed", "agentId": "follow-me", "error": f"e{i}"} for i in range(2)
            ]
        }
        assert http("POST", f"{server.url}/v1/telemetry/training", batch, token=ADMIN_TOKEN)[0] == 202
        lines = [follower.stdout.readline() for _ in range(2)]
        assert [json.loads(line)["error"] for line in lines] == ["e0", "e1"]
    finally:
        follower.send_signal(signal.SIGINT)
        _, stderr = follower.communicate(timeout=60)
    assert follower.returncode == 130 and "Traceback" not in stderr


def _open_streams(server) -> int:
    status, text, _ = http("GET", f"{server.url}/metrics", token=ADMIN_TOKEN)
    assert status == 200, text
    line = next(
        line for line in text.splitlines() if line.startswith("wondercraft_telemetry_stream_subscribers ")
    )
    return int(float(line.split()[1]))


def test_consensus_history_and_audit_verify(server, trained):
    rows = ok(ctl(server, "consensus", "history", "--model", "linear:ctl")).splitlines()
    assert rows[0].split()[:3] == ["SEQ", "TIME", "KIND"]
    assert any("model_committed" in row and "version=1" in row for row in rows)
    entries = as_json(ctl(server, "consensus", "history", "--kind", "vote", "--json"))["entries"]
    assert entries and all(e["kind"] == "vote" for e in entries)
    assert ok(ctl(server, "audit", "verify")).startswith("chain ok: ")
    assert as_json(ctl(server, "audit", "verify", "--json"))["ok"] is True

    # Edit one entry behind the service's back: the chain check names it and exits 1.
    database = server.state_dir / "wondercraft.db"
    with sqlite3.connect(database) as conn:
        seq, body = conn.execute("SELECT seq, body FROM consensus_log ORDER BY seq LIMIT 1").fetchone()
        conn.execute(
            "UPDATE consensus_log SET body = ? WHERE seq = ?", (body.replace("}", ',"x":1}', 1), seq)
        )
    try:
        broken = ctl(server, "audit", "verify")
        assert broken.returncode == 1 and f"chain BROKEN at entry {seq}" in broken.stdout
        assert as_json_any(ctl(server, "audit", "verify", "--json"))["firstBadSeq"] == seq
    finally:
        with sqlite3.connect(database) as conn:
            conn.execute("UPDATE consensus_log SET body = ? WHERE seq = ?", (body, seq))
    assert ok(ctl(server, "audit", "verify")).startswith("chain ok: ")


def as_json_any(result):
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def test_audit_sandbox_sets_the_kernels_record_beside_the_caps(server):
    sandbox_id = new_sandbox(server, cpu=0.5, memory=128)
    try:
        live = as_json(ctl(server, "audit", "sandbox", sandbox_id, "--json"))
        assert live["source"] == "live" and live["ok"] is True
        checks = {c["resource"]: c for c in live["checks"]}
        assert checks["memory"]["cap"] == checks["memory"]["enforced"] == 128 << 20
        assert checks["cpu"]["enforced"] == 0.5 and checks["pids"]["enforced"] == 256
        assert checks["storage"]["enforced"] == pytest.approx(512 << 20, abs=4096)
        assert all(c["verdict"] == "within" for c in live["checks"]), live["checks"]
        table = ok(ctl(server, "audit", "sandbox", sandbox_id)).splitlines()
        assert "read from the kernel now" in table[0] and table[1].split()[:5] == [
            "RESOURCE",
            "CAP",
            "KERNEL",
            "USED",
            "VERDICT",
        ]

        # Someone changes the memory limit behind the service's back: the audit catches it.
        paths = live["enforced"]["paths"]
        memory_dir = Path(next((p for p in paths if "/memory/" in p), paths[0]))
        v2 = (memory_dir / "memory.max").exists()
        (memory_dir / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(64 << 20))
        tampered = ctl(server, "audit", "sandbox", sandbox_id)
        assert tampered.returncode == 1, tampered.stdout
        assert (
            next(line for line in tampered.stdout.splitlines() if line.startswith("memory")).split()[4]
            == "mismatch"
        )
    finally:
        ok(ctl(server, "sandbox", "kill", sandbox_id))
    final = as_json(ctl(server, "audit", "sandbox", sandbox_id, "--json"))
    assert (
        final["source"] == "final" and final["terminationReason"] == "destroyed" and final["enforced"] is None
    )
    one_line_error(ctl(server, "audit", "sandbox", "sb-000000000000"), 5, "sb-000000000000")


def test_audit_host_marks_orphans_and_cleanup_removes_them(server):
    instance = instance_name(server.state_dir)
    sandbox_id = new_sandbox(server)
    orphan = f"wc-{instance}-sb-0000000000aa"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    try:
        report = ctl(server, "audit", "host", "--json")
        data = as_json_any(report)
        assert report.returncode == (1 if data["orphans"] else 0) and data["mode"] == "online"
        ours = {(f["kind"], f["name"]): f for f in data["findings"] if f["instance"] == instance}
        assert ours[("netns", orphan)]["state"] == "orphaned"
        assert (
            ours[("cgroup", sandbox_id)]["state"] == "known"
            and ours[("cgroup", sandbox_id)]["owner"] == "this service"
        )
        assert ours[("netns", f"wc-{instance}-{sandbox_id}")]["state"] == "known"
        table = ctl(server, "audit", "host")
        assert table.returncode == 1 and any(
            orphan in line and "orphaned" in line for line in table.stdout.splitlines()
        )
        assert table.stdout.splitlines()[-1].endswith("orphaned (online scan)")

        offline = as_json_any(ctl(server, "audit", "host", "--offline", "--json"))
        mine = {(f["kind"], f["name"]): f for f in offline["findings"] if f["instance"] == instance}
        assert offline["mode"] == "offline" and mine[("netns", orphan)]["state"] == "orphaned"
        # Seen from outside, the live sandbox still belongs to the running service.
        assert (
            mine[("cgroup", sandbox_id)]["state"] == "known"
            and str(server.proc.pid) in mine[("cgroup", sandbox_id)]["owner"]
        )

        swept = ok(ctl(server, "cleanup"))
        assert any(line.split() == ["netns", orphan, "orphaned"] for line in swept.splitlines())
        assert swept.splitlines()[-1] == "removed 1"
        assert not os.path.exists(f"/run/netns/{orphan}")
        again = as_json(ctl(server, "cleanup", "--json"))
        assert again == {"expired": [], "dead": [], "orphans": {"cgroups": [], "netns": []}, "removed": 0}
        after = as_json_any(ctl(server, "audit", "host", "--json"))
        assert not [f for f in after["findings"] if f["instance"] == instance and f["state"] == "orphaned"]
    finally:
        if os.path.exists(f"/run/netns/{orphan}"):
            subprocess.run(["ip", "netns", "delete", orphan], check=False)
        ctl(server, "sandbox", "kill", sandbox_id)


def test_bad_usage_is_exit_two_and_unknown_commands_say_so(server):
    result = ctl(server, "cycles", "ls", "--status", "sleeping")
    assert result.returncode == 2 and "sleeping" in result.stderr and "Traceback" not in result.stderr
    assert ctl(server, "frobnicate").returncode == 2
