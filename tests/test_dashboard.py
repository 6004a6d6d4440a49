"""The web dashboard in a real browser: Playwright drives Debian's chromium against a real
service. One service and one browser serve the whole module; screenshots of every page are
written under tests/artifacts/dashboard/."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, register_agent, wait_until

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "dashboard"
MODEL = "logistic:dash"
AGENT = "alice"
PAGES = ["overview", "sandboxes", "cycles", "models", "consensus", "telemetry"]
# Each would set window.__pwned if it ever ran as markup rather than showing as text.
HOSTILE_SCRIPT = "<script>window.__pwned = 'script'</script>"
HOSTILE_IMG = "<img src=x onerror=\"window.__pwned = 'img'\">"
HOSTILE_AGENT = f"evil{HOSTILE_SCRIPT}{HOSTILE_IMG}"
HOSTILE_LINE = f"worker crashed: {HOSTILE_SCRIPT} {HOSTILE_IMG}"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (make install)"
)


def wait_cycle(server, token, cycle_id, statuses=("aggregated", "failed"), timeout=120.0) -> dict:
    def ended():
        _, body, _ = http("GET", f"{server.url}/v1/petals/status/{cycle_id}", token=token)
        return body if body["status"] in statuses else None

    return wait_until(ended, timeout, what=f"cycle {cycle_id} in {statuses}")


def train_model_with_versions(server, token: str, rounds: int = 2) -> list[dict]:
    """The one place that makes a model with versions: `rounds` learn cycles of one agent,
    each its own round (the service's aggregationThreshold is 1.0), so version N+1 follows
    cycle N. Returns each cycle's final status."""
    rows = [{"x": [float(i % 4), float(i % 3)], "y": float(i % 2)} for i in range(32)]
    cycles = []
    for round_index in range(rounds):
        job = {
            "modelType": MODEL,
            "dataBatch": rows,
            "seed": round_index,
            "trainingParams": {"epochs": 6, "learningRate": 0.1, "batchSize": 4},
            "resourceCaps": {"cpu": 1, "memory": 256},
        }
        status, body, _ = http("POST", f"{server.url}/v1/petals/train", job, token=token)
        assert status == 202, body
        cycle = wait_cycle(server, token, body["cycleId"])
        assert cycle["status"] == "aggregated", cycle
        cycles.append(cycle)
    return cycles


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    config = root / "scaling.json"
    config.write_text(json.dumps({"aggregationThreshold": 1.0}))
    env = clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_AUTO_CREATE_MODELS="1")
    with ServerProcess(root / "state", env=env, args=["--config", str(config)]) as server:
        server.agent_token = register_agent(server, AGENT)
        server.cycles = train_model_with_versions(server, server.agent_token)
        # A failed-cycle line carrying markup, as a learn program's error output could.
        event = {
            "event": "training_cycle_failed",
            "agentId": AGENT,
            "cycleId": server.cycles[0]["cycleId"],
            "error": HOSTILE_LINE,
        }
        status, body, _ = http(
            "POST", f"{server.url}/v1/telemetry/training", {"events": [event]}, token=ADMIN_TOKEN
        )
        assert status == 202, body
        yield server


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {ARTIFACTS}")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


class Tab:
    """A fresh browser context (its own sessionStorage) with every console error, page error
    and request URL it saw."""

    def __init__(self, browser, service):
        self.service = service
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.on("dialog", self._dialog)
        self.dialogs: list[str] = []
        self.accept_dialogs = True

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.accept() if self.accept_dialogs else dialog.dismiss()

    def sign_in(self, token: str = ADMIN_TOKEN) -> None:
        self.page.goto(f"{self.service.url}/dashboard/")
        self.page.fill("#token", token)
        self.page.click("#sign-in-form button[type=submit]")
        self.page.wait_for_selector("#nav:not([hidden])")
        self.page.wait_for_selector("#overview-cards .card")

    def open(self, hash_: str, ready: str) -> None:
        self.page.evaluate("h => { location.hash = h; }", hash_)
        self.page.wait_for_selector(ready)

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def until(self, script: str, what: str, timeout: float = 30.0):
        """Polls a JS expression from here (the page's CSP forbids the in-page eval that
        wait_for_function would use) until it is true."""
        return wait_until(lambda: self.page.evaluate(script), timeout, what=what)

    def points(self, selector: str) -> dict:
        return json.loads(self.page.get_attribute(selector, "data-points"))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, service):
    tab = Tab(browser, service)
    yield tab
    tab.close()


READY = {
    "overview": "[data-metric=success-rate]",
    "sandboxes": "#recent-sandboxes table",
    "cycles": "#cycle-list table",
    "models": "#model-chart .uplot",
    "consensus": "#chain-ok",
    "telemetry": "#telemetry-rows tr",
}


def test_sign_in_and_every_page_opens_with_a_clean_console(tab, service):
    tab.sign_in()
    assert tab.page.text_content("[data-metric=cgroup-mode] .value") == "hybrid"
    assert tab.page.text_content("[data-metric=health] .value") == "ok"
    for name in PAGES:
        tab.open(f"#{name}", READY[name])
        tab.page.wait_for_timeout(300)  # one more refresh of live pages
        tab.shot(name)
    cycle_id = service.cycles[-1]["cycleId"]
    tab.open(f"#cycles/{cycle_id}", "#cycle-chart .uplot")
    tab.until(
        "document.querySelector('#cycle-chart').dataset.points.includes('\"x\":[1')", "the page to show it"
    )
    tab.shot("cycle")
    assert tab.errors == []
    # The token went only in headers: no URL the page asked for carried it.
    assert tab.urls and not any(ADMIN_TOKEN in url for url in tab.urls)


def test_cycle_chart_shows_the_epochs_the_api_reports(tab, service):
    cycle_id = service.cycles[0]["cycleId"]
    _, api_cycle, _ = http("GET", f"{service.url}/v1/petals/status/{cycle_id}", token=ADMIN_TOKEN)
    epochs = api_cycle["result"]["epochs"]
    tab.sign_in()
    tab.open(f"#cycles/{cycle_id}", "#cycle-chart .uplot")
    tab.until(
        f"JSON.parse(document.querySelector('#cycle-chart').dataset.points).x.length === {len(epochs)}",
        "the page to show it",
    )
    shown = tab.points("#cycle-chart")
    assert shown["x"] == [e["epoch"] for e in epochs]
    assert shown["series"]["loss"] == pytest.approx([e["loss"] for e in epochs])
    assert shown["series"]["accuracy"] == pytest.approx([e["accuracy"] for e in epochs])
    # The uPlot instance drew them: one path per series over the axes' canvas.
    assert tab.page.locator("#cycle-chart canvas").count() >= 1
    assert tab.errors == []


def test_cycle_resource_table_shows_the_records_figures_against_its_caps(tab, service):
    cycle_id = service.cycles[0]["cycleId"]
    _, api_cycle, _ = http("GET", f"{service.url}/v1/petals/status/{cycle_id}", token=ADMIN_TOKEN)
    record = api_cycle["result"]["resourceRecord"]
    tab.sign_in()
    tab.open(f"#cycles/{cycle_id}", "#cycle-resources table")

    def cells(resource: str) -> list[str]:
        row = tab.page.locator(f'#cycle-resources tr[data-resource="{resource}"] td')
        return [row.nth(i).inner_text() for i in range(row.count())]

    memory_cap = record["sandbox"]["limits"]["memoryMB"]
    assert cells("memory peak")[2] == f"{memory_cap} MB"
    assert cells("memory peak")[1] not in ("–", "")  # the peak the kernel recorded
    assert cells("pids")[2] == str(record["sandbox"]["limits"]["pids"])
    assert cells("pids")[1] not in ("–", "")
    assert cells("ended by")[1] == record["sandbox"]["terminationReason"]
    assert tab.errors == []


def test_model_chart_labels_training_metrics_and_matches_the_versions(tab, service):
    _, versions, _ = http(
        "GET", f"{service.url}/v1/petals/model/versions?modelType={MODEL}", token=ADMIN_TOKEN
    )
    trained = [v for v in versions["versions"] if v["metrics"]]
    tab.sign_in()
    tab.open(f"#models/{MODEL}", "#model-chart .uplot")
    shown = tab.points("#model-chart")
    assert shown["x"] == [v["version"] for v in trained]
    assert shown["series"]["training accuracy"] == pytest.approx([v["metrics"]["accuracy"] for v in trained])
    assert "training figures" in tab.page.text_content("#metrics-source").lower()
    # Each round with its participants and votes, as the history recorded them.
    assert tab.page.locator("#model-rounds tbody tr").count() == len(trained)
    assert AGENT in tab.page.text_content("#model-rounds") and "norm: approve" in tab.page.text_content(
        "#model-rounds"
    )
    assert tab.errors == []


def test_rollback_button_asks_then_changes_the_current_version(tab, service):
    _, before, _ = http("GET", f"{service.url}/v1/petals/model/versions?modelType={MODEL}", token=ADMIN_TOKEN)
    target = before["currentVersion"] - 1
    tab.sign_in()
    tab.open(f"#models/{MODEL}", "#model-chart .uplot")
    tab.accept_dialogs = False
    tab.page.click(f"[data-rollback='{target}']")
    assert tab.dialogs and str(target) in tab.dialogs[-1]
    _, unchanged, _ = http(
        "GET", f"{service.url}/v1/petals/model/versions?modelType={MODEL}", token=ADMIN_TOKEN
    )
    assert unchanged["currentVersion"] == before["currentVersion"]
    tab.accept_dialogs = True
    tab.page.click(f"[data-rollback='{target}']")
    tab.until(
        f"document.querySelector('#current-version')?.textContent === '{target}'", "the page to show it"
    )
    _, after, _ = http("GET", f"{service.url}/v1/petals/model/versions?modelType={MODEL}", token=ADMIN_TOKEN)
    assert after["currentVersion"] == target
    assert tab.errors == []


def test_hostile_strings_render_as_text(tab, service):
    # The API refuses such an agentId, so it is put into the answers the page reads: the page
    # must show whatever the API hands it as text.
    def rewrite(route):
        response = route.fetch()
        body = response.json()
        for event in body.get("events", []):
            event["agentId"] = HOSTILE_AGENT
        route.fulfill(response=response, body=json.dumps(body))

    tab.sign_in()
    tab.page.route("**/v1/telemetry/training?*", rewrite)
    tab.open("#telemetry", "#telemetry-rows tr")
    tab.until(
        "[...document.querySelectorAll('#telemetry-rows .agent')].some(c => c.textContent.includes('<script>'))",
        "the page to show it",
    )
    agents = tab.page.locator("#telemetry-rows .agent").all_text_contents()
    assert HOSTILE_AGENT in agents
    assert HOSTILE_LINE in tab.page.locator("#telemetry-rows .error-text").all_text_contents()
    tab.shot("hostile-telemetry")
    tab.page.unroute("**/v1/telemetry/training?*")
    tab.open(f"#cycles/{service.cycles[0]['cycleId']}", "#cycle-log")
    tab.until(
        "document.querySelector('#cycle-log').textContent.includes('worker crashed')", "the page to show it"
    )
    assert HOSTILE_LINE in tab.page.text_content("#cycle-log")
    assert tab.page.evaluate("document.querySelectorAll('img').length") == 0
    assert tab.page.evaluate("document.querySelectorAll('main script').length") == 0
    assert tab.page.evaluate("window.__pwned === undefined")
    assert tab.errors == []


def test_kill_button_asks_first_and_then_destroys_the_sandbox(tab, service):
    status, sandbox, _ = http(
        "POST", f"{service.url}/v1/sandbox/create",
        {"agentId": AGENT, "resourceCaps": {"cpu": 1, "memory": 128}}, token=service.agent_token,
    )  # fmt: skip
    assert status == 201, sandbox
    sandbox_id = sandbox["sandboxId"]
    busy = {"sandboxId": sandbox_id, "command": ["sh", "-c", "while :; do :; done"], "timeoutSeconds": 300}
    spinner = threading.Thread(
        target=http,
        args=("POST", f"{service.url}/v1/sandbox/execute", busy),
        kwargs={"token": service.agent_token},
    )
    spinner.start()
    tab.sign_in()
    tab.open("#sandboxes", f"[data-kill='{sandbox_id}']")
    # The busy loop shows on the CPU sparkline: samples every 2 s, CPU % from their difference.
    # It spins until the kill button ends it; on a loaded host it may get only a slice of a core.
    cpu = f"JSON.parse(document.querySelector('[data-sandbox=\"{sandbox_id}\"] [data-spark=cpu]').dataset.points)"
    tab.until(f"Math.max(...{cpu}.series.cpu) > 5", "the busy sandbox's CPU % on its sparkline", timeout=120)
    assert max(tab.page.evaluate(f"{cpu}.series.cpu")) <= 100 * 1.3  # one core's cap, with sampling slack
    memory = f"JSON.parse(document.querySelector('[data-sandbox=\"{sandbox_id}\"] [data-spark=memory]').dataset.points)"
    assert all(m > 0 for m in tab.page.evaluate(f"{memory}.series.memory"))
    tab.shot("sandboxes-live")
    tab.accept_dialogs = False
    tab.page.click(f"[data-kill='{sandbox_id}']")
    assert tab.dialogs and sandbox_id in tab.dialogs[-1]
    _, alive, _ = http("GET", f"{service.url}/v1/sandbox/status/{sandbox_id}", token=ADMIN_TOKEN)
    assert alive["status"] == "running"
    tab.accept_dialogs = True
    tab.page.click(f"[data-kill='{sandbox_id}']")
    wait_until(
        lambda: http("GET", f"{service.url}/v1/sandbox/status/{sandbox_id}", token=ADMIN_TOKEN)[1]["status"] != "running",
        30, what="the sandbox destroyed",
    )  # fmt: skip
    tab.page.wait_for_selector(f"[data-kill='{sandbox_id}']", state="detached")
    spinner.join(60)
    assert not spinner.is_alive(), "the busy execution outlived its sandbox"
    assert tab.errors == []


def test_an_agent_sees_only_what_its_token_may_see(tab, service):
    other = register_agent(service, "bob")
    status, _, _ = http(
        "POST",
        f"{service.url}/v1/sandbox/create",
        {"agentId": "bob", "resourceCaps": {"cpu": 1, "memory": 64}},
        token=other,
    )
    assert status == 201
    tab.sign_in(service.agent_token)
    assert tab.page.text_content("#who") == "signed in as an agent"
    tab.open("#sandboxes", "#recent-sandboxes table")
    agents = set(tab.page.locator("#recent-sandboxes td:nth-child(2)").all_text_contents())
    assert agents <= {AGENT}
    tab.open("#cycles", "#cycle-list table")
    assert tab.page.locator("#cycle-list tbody tr").count() >= 2
    tab.open(f"#models/{MODEL}", "#model-chart .uplot")
    assert tab.page.locator("[data-rollback]").count() == 0
    # The only refusal is the sign-in's probe of /v1/admin/status, which tells agent from admin.
    assert all("403" in error for error in tab.errors) and len(tab.errors) <= 1


def test_sign_out_clears_the_token(tab, service):
    tab.sign_in()
    assert tab.page.evaluate("sessionStorage.getItem('wondercraft.token')") == ADMIN_TOKEN
    tab.page.click("#sign-out")
    tab.page.wait_for_selector("#sign-in:not([hidden])")
    assert tab.page.evaluate("sessionStorage.length") == 0
    tab.page.reload()
    tab.page.wait_for_selector("#sign-in:not([hidden])")
    assert tab.page.is_hidden("#nav")


def test_pages_are_served_with_a_strict_content_security_policy(service):
    status, text, headers = http("GET", f"{service.url}/dashboard/")
    assert status == 200 and "app.js" in text
    csp = headers["Content-Security-Policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "<script>" not in text and "style=" not in text  # nothing inline for the policy to allow
    status, _, headers = http("GET", f"{service.url}/dashboard/vendor/uPlot.esm.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert http("GET", f"{service.url}/dashboard/static/..%2F__init__.py")[0] == 404
    assert http("GET", f"{service.url}/dashboard/vendor/package.json")[0] == 404


def test_a_state_change_from_another_origin_is_refused(service):
    body = {"modelType": MODEL, "version": 0}
    status, answer, _ = http(
        "POST", f"{service.url}/v1/petals/model/shared/rollback", body, token=ADMIN_TOKEN,
        headers={"Origin": "http://evil.example"},
    )  # fmt: skip
    assert status == 403 and answer["error"]["code"] == "forbidden" and "origin" in answer["error"]["message"]
    status, answer, _ = http(
        "POST", f"{service.url}/v1/petals/model/shared/rollback", body, token=ADMIN_TOKEN,
        headers={"Origin": service.url, "Content-Type": "text/plain"},
    )  # fmt: skip
    assert status == 415, answer


def test_cycle_chart_grows_while_the_cycle_trains(tab, service):
    epochs = 1000
    job = {
        "modelType": "linear:dash-live",
        "dataBatch": [{"x": [float(i % 16)], "y": 2.0 * (i % 16)} for i in range(128)],
        "trainingParams": {"epochs": epochs, "learningRate": 0.0001, "batchSize": 1},
        "resourceCaps": {"cpu": 1, "memory": 256},
    }
    status, body, _ = http("POST", f"{service.url}/v1/petals/train", job, token=service.agent_token)
    assert status == 202, body
    cycle_id = body["cycleId"]
    tab.sign_in()
    tab.open(f"#cycles/{cycle_id}", "#cycle-chart .uplot")
    counts_while_running = set()

    def ended() -> bool:
        state = tab.page.evaluate(
            "(() => { const c = document.querySelector('#cycle-chart');"
            " return [c.dataset.status, JSON.parse(c.dataset.points).x.length]; })()"
        )
        if state[0] == "running":
            counts_while_running.add(state[1])
        return state[0] in ("completed", "aggregated", "failed")

    wait_until(ended, 120, what="the cycle to end on the page")
    # Partial curves were drawn while it ran, and they grew.
    partial = sorted(n for n in counts_while_running if 0 < n < epochs)
    assert len(partial) >= 2, counts_while_running
    final = wait_cycle(service, service.agent_token, cycle_id)
    tab.until(
        f"JSON.parse(document.querySelector('#cycle-chart').dataset.points).x.length === {epochs}",
        "all epochs",
    )
    shown = tab.points("#cycle-chart")
    assert shown["series"]["loss"] == pytest.approx([e["loss"] for e in final["result"]["epochs"]])
    assert tab.errors == []


def test_overview_shows_the_admission_budget_in_use_when_the_service_reports_it(tab, service):
    # The admission totals come with the sandbox hardening; until the service reports them,
    # they are added to its real answer here, in the shape `wondercraft-ctl status` reads.
    admission = {"budget": {"memoryMB": 8192, "cpu": 2}, "committed": {"memoryMB": 384, "cpu": 1.5}}

    def with_admission(route):
        response = route.fetch()
        body = {**response.json(), "admission": admission}
        route.fulfill(response=response, body=json.dumps(body))

    tab.page.route("**/v1/admin/status", with_admission)
    tab.sign_in()
    assert tab.page.text_content("[data-metric=admission-memoryMB] .value") == "384 / 8192"
    assert tab.page.text_content("[data-metric=admission-cpu] .value") == "1.5 / 2"
    assert tab.errors == []


def test_telemetry_tail_is_live_and_filtered(tab, service):
    tab.sign_in()
    tab.open("#telemetry", "#telemetry-rows tr")
    tab.until("document.querySelector('#tail-state').textContent === 'live'", "the tail to be live")

    def record(agent_id: str, error: str) -> int:
        event = {"event": "training_cycle_failed", "agentId": agent_id, "error": error}
        status, body, _ = http(
            "POST", f"{service.url}/v1/telemetry/training", {"events": [event]}, token=ADMIN_TOKEN
        )
        assert status == 202, body
        return body["events"][0]["seq"]

    # A new event shows up without a reload: it came over the stream.
    seq = record(AGENT, "live line one")
    tab.until(f"!!document.querySelector('#telemetry-rows tr[data-seq=\"{seq}\"]')", "the streamed event")
    assert tab.page.text_content("#telemetry-rows tr:first-child .error-text") == "live line one"
    # Filtered to another agent: only its events, old and new.
    register_agent(service, "carol")
    tab.page.fill("#telemetry-agent", "carol")
    tab.page.click("#telemetry-filters button[type=submit]")
    tab.until("document.querySelectorAll('#telemetry-rows tr').length === 0", "the filtered tail to be empty")
    record(AGENT, "not carol's")
    seq = record("carol", "carol's line")
    tab.until(f"!!document.querySelector('#telemetry-rows tr[data-seq=\"{seq}\"]')", "carol's streamed event")
    assert tab.page.locator("#telemetry-rows .agent").all_text_contents() == ["carol"]
    assert tab.errors == []
