"""The seed's sandbox endpoints over real HTTP on loopback, against a real server whose
sandboxes are real: create with caps, execute argv, status and list, destroy."""

from __future__ import annotations

import time

import pytest

from tests.helpers import ADMIN_TOKEN, api_server, http, register_agent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(tmp_path_factory.mktemp("sandbox-api") / "state", SANDBOX_OUTPUT_LIMIT="4096") as server:
        server.token = register_agent(server, "owner")
        server.other = register_agent(server, "stranger")
        yield server


def create(server, body=None, token=None):
    # Small by default: every sandbox's memory cap counts against the host budget.
    body = {"resourceCaps": {"memory": 256}} if body is None else body
    status, view, _ = http("POST", f"{server.url}/v1/sandbox/create", body, token=token or server.token)
    assert status == 201, view
    return view


def execute(server, sandbox_id, command, token=None, **extra):
    body = {"sandboxId": sandbox_id, "command": command, **extra}
    return http("POST", f"{server.url}/v1/sandbox/execute", body, token=token or server.token)


def test_create_returns_the_effective_caps_and_times(server):
    view = create(
        server, {"resourceCaps": {"cpu": 0.5, "memory": 256}, "storageMB": 32, "lifetimeSeconds": 600}
    )
    assert view["agentId"] == "owner" and view["status"] == "running"
    assert view["resourceCaps"] == {"cpu": 0.5, "memory": 256, "gpu": 0, "pids": 256, "storageMB": 32}
    assert view["network"] == "isolated"
    assert 599_000 <= view["expiresAt"] - view["createdAt"] <= 601_000
    defaults = create(server, {})
    assert defaults["resourceCaps"]["cpu"] == 2.0 and defaults["resourceCaps"]["memory"] == 4096


def test_caps_above_resource_limits_are_a_400_naming_the_cap(server):
    for caps, name in (({"cpu": 8}, "resourceCaps.cpu"), ({"memory": 16384}, "resourceCaps.memory"),
                       ({"gpu": 2}, "resourceCaps.gpu")):  # fmt: skip
        status, body, _ = http(
            "POST", f"{server.url}/v1/sandbox/create", {"resourceCaps": caps}, token=server.token
        )
        assert status == 400, body
        assert name in body["error"]["message"] and "resourceLimits" in body["error"]["message"]


def test_execute_runs_argv_and_reports_the_kernel_record(server):
    sandbox = create(server, {"resourceCaps": {"cpu": 1, "memory": 256}})
    status, result, _ = execute(server, sandbox["sandboxId"], ["sh", "-c", "echo out; echo err >&2; cat; exit 3"],
                                stdin="from stdin", env={"GREETING": "hi"})  # fmt: skip
    assert status == 200, result
    assert result["exitCode"] == 3 and result["signal"] is None
    assert result["stdout"] == "out\nfrom stdin" and result["stderr"] == "err\n"
    assert result["truncated"] is False and result["terminationReason"] is None
    usage = result["resourceUsage"]
    assert usage["cpuSeconds"] is not None and usage["memoryPeakBytes"] > 0 and usage["wallSeconds"] > 0
    status, result, _ = execute(
        server, sandbox["sandboxId"], ["sh", "-c", "echo $GREETING"], env={"GREETING": "hi"}
    )
    assert result["stdout"] == "hi\n"


def test_a_shell_string_instead_of_argv_is_a_400(server):
    sandbox = create(server)
    status, body, _ = execute(server, sandbox["sandboxId"], "echo hello; rm -rf /")
    assert status == 400
    assert "command" in body["error"]["message"]


def test_output_over_the_cap_is_truncated(server):
    sandbox = create(server)
    status, result, _ = execute(server, sandbox["sandboxId"], ["head", "-c", "100000", "/dev/zero"])
    assert status == 200
    assert result["truncated"] is True and len(result["stdout"]) == 4096


def test_timeout_is_reported_as_the_termination_reason(server):
    sandbox = create(server)
    started = time.monotonic()
    status, result, _ = execute(server, sandbox["sandboxId"], ["sleep", "30"], timeoutSeconds=0.5)
    assert status == 200 and result["terminationReason"] == "timeout"
    assert time.monotonic() - started < 10


def test_status_list_and_destroy_with_the_final_record(server):
    sandbox = create(server)
    sandbox_id = sandbox["sandboxId"]
    execute(server, sandbox_id, ["true"])
    status, view, _ = http("GET", f"{server.url}/v1/sandbox/status/{sandbox_id}", token=server.token)
    assert status == 200 and view["status"] == "running" and view["executions"] == 1
    assert view["healthy"] is True and "resourceUsage" in view
    status, listing, _ = http("GET", f"{server.url}/v1/sandbox?status=running", token=server.token)
    assert sandbox_id in [s["sandboxId"] for s in listing["sandboxes"]]
    status, final, _ = http("DELETE", f"{server.url}/v1/sandbox/{sandbox_id}", token=server.token)
    assert status == 200 and final["status"] == "destroyed"
    assert final["finalResourceRecord"]["terminationReason"] == "destroyed"
    assert final["finalResourceRecord"]["executions"] == 1
    assert final["finalResourceRecord"]["resourceUsage"]["cpuSeconds"] is not None
    status, again, _ = http("DELETE", f"{server.url}/v1/sandbox/{sandbox_id}", token=server.token)
    assert status == 200 and again["finalResourceRecord"] == final["finalResourceRecord"]
    status, body, _ = execute(server, sandbox_id, ["true"])
    assert status == 409  # destroyed: not running
    status, listing, _ = http("GET", f"{server.url}/v1/sandbox?status=destroyed", token=server.token)
    assert sandbox_id in [s["sandboxId"] for s in listing["sandboxes"]]


def test_other_agents_sandboxes_look_missing(server):
    sandbox = create(server)
    sandbox_id = sandbox["sandboxId"]
    for method, path, body in (
        ("GET", f"/v1/sandbox/status/{sandbox_id}", None),
        ("DELETE", f"/v1/sandbox/{sandbox_id}", None),
        ("POST", "/v1/sandbox/execute", {"sandboxId": sandbox_id, "command": ["true"]}),
    ):
        stranger = http(method, server.url + path, body, token=server.other)
        unknown = http(method, server.url + path.replace(sandbox_id, "sb-000000000000"),
                       body and {**body, "sandboxId": "sb-000000000000"}, token=server.token)  # fmt: skip
        assert stranger[0] == unknown[0] == 404
        assert stranger[1]["error"]["code"] == unknown[1]["error"]["code"] == "not_found"
    status, listing, _ = http("GET", f"{server.url}/v1/sandbox", token=server.other)
    assert sandbox_id not in str(listing)
    status, _, _ = http("POST", f"{server.url}/v1/sandbox/create", {"agentId": "owner"}, token=server.other)
    assert status == 403


@pytest.mark.parametrize("path", ["/v1/sandbox/status/..%2F..%2Fetc%2Fpasswd", "/v1/sandbox/status/sb-../x",
                                  "/v1/sandbox/sb-%00", "/v1/sandbox/status/SB-000000000000"])  # fmt: skip
def test_ids_with_path_tricks_are_refused(server, path):
    status, body, _ = http("GET" if "status" in path else "DELETE", server.url + path, token=server.token)
    assert status in (400, 404), body
    assert "error" in body


def test_the_sandbox_cannot_reach_the_api_server_on_host_loopback(server):
    sandbox = create(server)
    port = server.url.rsplit(":", 1)[1]
    code = (
        "import socket\ns = socket.socket()\ns.settimeout(2)\n"
        f"try:\n    s.connect(('127.0.0.1', {port}))\n    print('reached')\n"
        "except OSError as e:\n    print('refused')"
    )
    status, result, _ = execute(server, sandbox["sandboxId"], ["python", "-I", "-S", "-c", code])
    assert status == 200 and result["stdout"].strip() == "refused", result


def test_the_admin_acts_for_a_named_agent(server):
    status, view, _ = http("POST", f"{server.url}/v1/sandbox/create", {"agentId": "owner"}, token=ADMIN_TOKEN)
    assert status == 201 and view["agentId"] == "owner"
    status, body, _ = http("POST", f"{server.url}/v1/sandbox/create", {}, token=ADMIN_TOKEN)
    assert status == 400 and "agentId is required" in body["error"]["message"]


def test_metrics_cover_sandboxes_and_their_resource_use(server):
    sandbox = create(server)
    execute(server, sandbox["sandboxId"], ["sh", "-c", "head -c 5000000 /dev/zero > /tmp/x"])
    import urllib.request

    request = urllib.request.Request(
        server.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    text = urllib.request.urlopen(request).read().decode()
    active = [line for line in text.splitlines() if line.startswith("wondercraft_sandboxes_active ")]
    assert active and float(active[0].split()[1]) >= 1
    peak = [line for line in text.splitlines()
            if line.startswith("wondercraft_sandbox_memory_peak_bytes{") and sandbox["sandboxId"] in line]  # fmt: skip
    assert peak and float(peak[0].rsplit(" ", 1)[1]) > 0
    assert "wondercraft_sandboxes_created_total" in text
    # Committed totals against the host budget.
    committed = [
        line
        for line in text.splitlines()
        if line.startswith('wondercraft_admission_committed{resource="memory_mb"}')
    ]
    budget = [
        line
        for line in text.splitlines()
        if line.startswith('wondercraft_admission_budget{resource="memory_mb"}')
    ]
    assert committed and float(committed[0].split()[1]) >= 256
    assert budget and float(budget[0].split()[1]) > 0


def test_admission_answers_409_and_429_naming_the_budget_and_admin_status_shows_totals(tmp_path):
    # 2 GB share of the host minus a 1 GB reserve would be tiny: the share is set so that
    # three 1 GB sandboxes overfill it, and the agent quota allows two sandboxes each.
    total_mb = int(open("/proc/meminfo").read().split()[1]) // 1024
    share = max(1, int(100 * (1024 + 2500) / total_mb))
    env = {"SANDBOX_HOST_MEMORY_SHARE": str(share), "SANDBOX_AGENT_MAX_SANDBOXES": "2"}
    with api_server(tmp_path / "state", **env) as server:
        first, second = register_agent(server, "first"), register_agent(server, "second")
        small = {"resourceCaps": {"cpu": 0.5, "memory": 1024}, "storageMB": 16}
        made = [create(server, small, token=first), create(server, small, token=first)]
        url = f"{server.url}/v1/sandbox/create"
        status, body, headers = http("POST", url, small, token=first)
        assert status == 409, body
        error = body["error"]
        assert error["code"] == "over_budget" and error["details"]["budget"] == "agent_sandboxes"
        assert error["details"]["limit"] == 2 and error["details"]["inUse"] == 2
        assert "agent_sandboxes" in error["message"] and int(headers["Retry-After"]) >= 1
        status, body, headers = http("POST", url, small, token=second)
        assert status == 429, body
        assert (
            body["error"]["details"]["budget"] == "host_memory" and body["error"]["details"]["inUse"] == 2048
        )
        assert int(headers["Retry-After"]) >= 1
        huge = {"resourceCaps": {"cpu": 0.5, "memory": 8192}}
        status, body, headers = http("POST", url, huge, token=second)
        assert status == 409 and "Retry-After" not in headers, body
        status, admin, _ = http("GET", f"{server.url}/v1/admin/status", token=ADMIN_TOKEN)
        assert status == 200
        assert admin["admission"]["memoryMB"]["committed"] == 2048
        assert admin["admission"]["agents"]["first"]["sandboxes"] == 2
        for view in made:
            http("DELETE", f"{server.url}/v1/sandbox/{view['sandboxId']}", token=first)
        create(server, small, token=second)


def test_a_detached_execution_is_listed_in_status_and_ended_by_delete(server):
    sandbox = create(server)
    sandbox_id = sandbox["sandboxId"]
    script = "echo started; touch /work/ready; exec sleep 1000"
    status, started, _ = execute(server, sandbox_id, ["sh", "-c", script], detach=True)
    assert status == 202 and started["status"] == "running", started
    execution_id = started["executionId"]
    deadline = time.monotonic() + 20
    while execute(server, sandbox_id, ["test", "-e", "/work/ready"])[1]["exitCode"] != 0:
        assert time.monotonic() < deadline, "the background execution never started"
        time.sleep(0.05)
    status, view, _ = http("GET", f"{server.url}/v1/sandbox/status/{sandbox_id}", token=server.token)
    assert [e["executionId"] for e in view["backgroundExecutions"]] == [execution_id]
    status, ended, _ = http("DELETE", f"{server.url}/v1/sandbox/{sandbox_id}/executions/{execution_id}",
                            token=server.token)  # fmt: skip
    assert status == 200 and ended["terminationReason"] == "killed" and ended["stdout"] == "started\n"
    assert "sandbox" in ended["resourceUsage"]
    status, view, _ = http("GET", f"{server.url}/v1/sandbox/status/{sandbox_id}", token=server.token)
    assert "backgroundExecutions" not in view
    status, body, _ = http("DELETE", f"{server.url}/v1/sandbox/{sandbox_id}/executions/{execution_id}",
                           token=server.token)  # fmt: skip
    assert status == 404, body
    status, body, _ = http("DELETE", f"{server.url}/v1/sandbox/{sandbox_id}/executions/exec-x",
                           token=server.other)  # fmt: skip
    assert status in (400, 404), body


def test_a_uid_range_holding_host_accounts_refuses_start_up_naming_them(tmp_path):
    from tests.helpers import clean_env, run_serve

    result = run_serve(tmp_path / "state", env=clean_env(SANDBOX_UID_RANGE="65530-65545"))
    assert result.returncode != 0
    assert "nobody (65534)" in result.stderr and "Traceback" not in result.stderr, result.stderr
