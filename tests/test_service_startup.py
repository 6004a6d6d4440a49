"""The service starts, refuses clearly when it cannot, and keeps its state: a real
process, real HTTP on loopback, real SQLite."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess

import pytest

from tests.helpers import AS_NOBODY, WONDERCRAFT, ServerProcess, clean_env, free_port, http, run_serve

REFUSAL_PREFIX = "wondercraft: cannot start: "


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("wondercraft:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_healthz_reports_status_version_hybrid_cgroups_and_uptime(tmp_path):
    with ServerProcess(tmp_path / "state") as server:
        status, body, headers = http("GET", server.url + "/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body["status"] == "ok"
    assert isinstance(body["version"], str) and body["version"]
    # This machine mounts v1 controllers beside a cgroup2 "unified" mount.
    assert body["cgroupMode"] == "hybrid"
    assert isinstance(body["uptimeSeconds"], int | float) and body["uptimeSeconds"] >= 0


def test_unknown_path_is_a_json_404(tmp_path):
    with ServerProcess(tmp_path / "state") as server:
        status, body, _ = http("GET", server.url + "/no/such/thing")
    assert status == 404
    assert body["error"]["code"] == "not_found"


def test_sigterm_and_sigint_stop_cleanly_with_exit_zero(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = ServerProcess(tmp_path / "state").start()
        assert server.stop(sig) == 0, server.log()
        assert any(r["msg"] == "stopped" for r in server.log_records())


def test_logs_are_json_lines_on_stderr(tmp_path):
    server = ServerProcess(tmp_path / "state").start()
    server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(record)
    assert any(r["msg"] == "listening" and r["port"] == server.port for r in server.log_records())


# ---- refusals: one clear line, non-zero exit ----


def test_refuses_without_root(tmp_path):
    state = tmp_path / "state"
    result = run_serve(state, prefix=AS_NOBODY)
    assert result.returncode != 0
    assert _one_line(result.stderr).startswith(REFUSAL_PREFIX + "must run as root")


def test_refuses_without_cap_sys_admin(tmp_path):
    state = tmp_path / "state"
    result = run_serve(state, prefix=["setpriv", "--inh-caps=-all", "--bounding-set=-sys_admin"])
    assert result.returncode != 0
    assert "CAP_SYS_ADMIN" in _one_line(result.stderr)
    assert not (state / "wondercraft.db").exists()


def test_refuses_when_port_is_taken(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        result = run_serve(tmp_path / "state", port=port)
    assert result.returncode != 0
    assert _one_line(result.stderr) == f"{REFUSAL_PREFIX}port {port} on 127.0.0.1 is already in use"


def test_refuses_when_state_dir_is_not_writable(tmp_path):
    # A read-only tmpfs in a private mount namespace: nothing leaks onto the host.
    state = tmp_path / "ro"
    state.mkdir()
    script = f'mount -t tmpfs -o ro,size=1m tmpfs "{state}" && exec "$@"'
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            WONDERCRAFT,
            "serve",
            "--port",
            str(free_port()),
            "--state-dir",
            str(state),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    line = _one_line(result.stderr)
    assert line.startswith(f"{REFUSAL_PREFIX}state dir {state} is not writable"), line


def test_refuses_when_state_dir_is_a_file(tmp_path):
    state = tmp_path / "file"
    state.write_text("x")
    result = run_serve(state)
    assert result.returncode != 0
    assert _one_line(result.stderr).startswith(f"{REFUSAL_PREFIX}state dir {state}")


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["not-sqlite", "garbled-pages"],
)
def test_refuses_corrupt_database_and_never_overwrites_it(tmp_path, content):
    state = tmp_path / "state"
    state.mkdir()
    db = state / "wondercraft.db"
    db.write_bytes(content)
    result = run_serve(state)
    assert result.returncode != 0
    line = _one_line(result.stderr)
    assert line.startswith(f"{REFUSAL_PREFIX}state database {db}"), line
    assert "refusing to start" in line
    assert db.read_bytes() == content
    assert not (state / "wondercraft.db-wal").exists()


# ---- configuration ----


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("PETALS_MAX_CONCURRENT_CYCLES", "0", "an integer between 1 and 1024"),
        ("PETALS_MAX_CONCURRENT_CYCLES", "ten", "an integer between 1 and 1024"),
        ("PETALS_DEFAULT_LEARNING_RATE", "-0.1", "a number > 0"),
        ("PETALS_DEFAULT_LEARNING_RATE", "nan", "a number > 0"),
        ("PETALS_DEFAULT_BATCH_SIZE", "1.5", "an integer between 1 and 65536"),
        ("PETALS_DEFAULT_EPOCHS", "", "an integer between 1 and 1000"),
        ("SANDBOX_DEFAULT_CPU", "0", "a number > 0"),
        ("SANDBOX_DEFAULT_MEMORY", "-5", "an integer between 16 and 262144"),
        ("SANDBOX_MAX_LIFETIME", "forever", "an integer between 1 and 604800"),
        ("SANDBOX_CLEANUP_INTERVAL", "0", "an integer between 1 and 86400"),
        ("TELEMETRY_RETENTION_DAYS", "7d", "an integer between 1 and 3650"),
        ("TELEMETRY_BATCH_SIZE", "0", "an integer between 1 and 100000"),
        ("TELEMETRY_FLUSH_INTERVAL", "inf", "a number > 0"),
        ("WONDERCRAFT_ADMIN_TOKEN", "short", "16 to 512 printable characters"),
    ],
)
def test_bad_environment_value_stops_startup_naming_it(tmp_path, name, value, expected):
    result = run_serve(tmp_path / "state", env=clean_env(**{name: value}))
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith(f"wondercraft: configuration error: {name}="), line
    assert expected in line
    if name != "WONDERCRAFT_ADMIN_TOKEN":
        assert repr(value) in line
    else:
        assert value not in line.split("=", 1)[1].split(" is invalid")[0]
    assert not (tmp_path / "state").exists()


def test_default_above_resource_limit_is_refused(tmp_path):
    config = tmp_path / "scaling.json"
    config.write_text(json.dumps({"resourceLimits": {"cpu": 1, "memory": 8192}}))
    result = run_serve(tmp_path / "state", args=["--config", str(config)])
    assert result.returncode == 2
    assert "SANDBOX_DEFAULT_CPU=2 exceeds resourceLimits.cpu=1" in result.stderr


@pytest.mark.parametrize(
    "document,fragment",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        (
            '{"maxConcurrentTrainingCycles": 0}',
            "maxConcurrentTrainingCycles must be an integer between 1 and 1024",
        ),
        ('{"aggregationThreshold": 1.5}', "aggregationThreshold must be a number > 0 and <= 1"),
        ('{"consensusRequired": "maybe"}', "consensusRequired must be true or false"),
        ('{"resourceLimits": {"memory": "lots"}}', "resourceLimits.memory must be an integer"),
        ('{"resourceLimits": {"disk": 5}}', "resourceLimits has unknown key(s) disk"),
        ('{"maxConcurrentCycles": 3}', "unknown key(s) maxConcurrentCycles"),
    ],
)
def test_bad_config_file_stops_startup_naming_the_key(tmp_path, document, fragment):
    config = tmp_path / "scaling.json"
    config.write_text(document)
    result = run_serve(tmp_path / "state", args=["--config", str(config)])
    assert result.returncode == 2
    assert fragment in _one_line(result.stderr)


def _effective(config_path=None, **env) -> dict:
    argv = [WONDERCRAFT, "config"] + (["--config", str(config_path)] if config_path else [])
    result = subprocess.run(argv, env=clean_env(**env), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_config_precedence_defaults_then_file_then_environment(tmp_path):
    defaults = _effective()
    assert defaults["max_concurrent_cycles"] == 10
    assert defaults["sandbox_max_lifetime_s"] == 3600
    assert defaults["aggregation_threshold"] == 0.67
    assert defaults["resource_limits"] == {"cpu_cores": 4.0, "memory_mb": 8192, "gpu_count": 1}

    config = tmp_path / "scaling.json"
    config.write_text(
        json.dumps(
            {
                "maxConcurrentTrainingCycles": 4,
                "maxSandboxLifetime": 600,
                "resourceLimits": {"cpu": 8, "memory": 16384, "gpu": 2},
                "aggregationThreshold": 0.5,
                "consensusRequired": False,
            }
        )
    )
    from_file = _effective(config)
    assert from_file["max_concurrent_cycles"] == 4
    assert from_file["sandbox_max_lifetime_s"] == 600
    assert from_file["resource_limits"] == {"cpu_cores": 8.0, "memory_mb": 16384, "gpu_count": 2}
    assert from_file["aggregation_threshold"] == 0.5
    assert from_file["consensus_required"] is False

    both = _effective(config, PETALS_MAX_CONCURRENT_CYCLES="7", SANDBOX_MAX_LIFETIME="120")
    assert both["max_concurrent_cycles"] == 7  # environment beats the file
    assert both["sandbox_max_lifetime_s"] == 120
    assert both["aggregation_threshold"] == 0.5  # the file still beats the defaults


def test_running_server_logs_the_effective_settings(tmp_path):
    config = tmp_path / "scaling.json"
    config.write_text(json.dumps({"maxConcurrentTrainingCycles": 3}))
    server = ServerProcess(
        tmp_path / "state", args=["--config", str(config)], env=clean_env(TELEMETRY_BATCH_SIZE="9")
    ).start()
    server.stop()
    (record,) = [r for r in server.log_records() if r["msg"] == "settings"]
    assert record["settings"]["max_concurrent_cycles"] == 3
    assert record["settings"]["telemetry_batch_size"] == 9


# ---- admin token and durable state ----


def test_admin_token_file_is_generated_once_with_mode_0600(tmp_path):
    state = tmp_path / "state"
    ServerProcess(state).start().stop()
    token_file = state / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    first = token_file.read_text().strip()
    assert len(first) >= 32
    ServerProcess(state).start().stop()
    assert token_file.read_text().strip() == first


def test_admin_token_from_environment_writes_no_file(tmp_path):
    state = tmp_path / "state"
    ServerProcess(state, env=clean_env(WONDERCRAFT_ADMIN_TOKEN="x" * 24)).start().stop()
    assert not (state / "admin.token").exists()


def test_world_readable_token_file_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    token_file = state / "admin.token"
    token_file.write_text("y" * 40)
    os.chmod(token_file, 0o644)
    result = run_serve(state)
    assert result.returncode != 0
    assert "chmod 600" in _one_line(result.stderr)


def test_state_survives_a_restart_in_wal_mode_with_migrations(tmp_path):
    state = tmp_path / "state"
    ServerProcess(state).start().stop()
    db = state / "wondercraft.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        assert version >= 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"sandboxes", "cycles", "telemetry", "model_versions", "consensus_log", "agents"} <= tables
        conn.execute(
            "INSERT INTO cycles(cycle_id, agent_id, model_name, status, request, created_at, updated_at)"
            " VALUES('c-1', 'agent-a', 'linear', 'completed', '{}', 1, 1)"
        )
    conn.close()
    ServerProcess(state).start().stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == version
        assert conn.execute("SELECT agent_id FROM cycles WHERE cycle_id='c-1'").fetchone()[0] == "agent-a"
    conn.close()


def test_newer_schema_than_this_release_is_refused(tmp_path):
    state = tmp_path / "state"
    ServerProcess(state).start().stop()
    db = state / "wondercraft.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 999")
    conn.commit()
    conn.close()
    result = run_serve(state)
    assert result.returncode != 0
    assert "schema version 999" in _one_line(result.stderr)
