"""/metrics in the Prometheus text format (admin only): request counts and latency by route
template, telemetry emission, event-loop lag, and the gauges later services fill in."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import LoopLagMonitor, Metrics
from tests.helpers import ADMIN_TOKEN, api_server, http, register_agent


def scrape(server) -> dict[str, list]:
    status, text, headers = http("GET", server.url + "/metrics", token=ADMIN_TOKEN)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples, name: str, **labels) -> float:
    matching = [
        s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert matching, (name, labels, sorted(samples))
    return sum(matching)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(tmp_path_factory.mktemp("metrics") / "state") as server:
        server.token = register_agent(server, "agent-a")
        yield server


def test_metrics_is_admin_only(server):
    assert http("GET", server.url + "/metrics")[0] == 401
    assert http("GET", server.url + "/metrics", token=server.token)[0] == 403


def test_requests_are_counted_by_route_template_and_status(server):
    for name in ("ghost-1", "ghost-2", "ghost-3"):
        assert http("DELETE", server.url + f"/v1/agents/{name}", token=ADMIN_TOKEN)[0] == 404
    samples = scrape(server)
    labels = {"method": "DELETE", "route": "/v1/agents/{agentId}"}
    assert value(samples, "wondercraft_http_requests_total", status="404", **labels) == 3
    assert value(samples, "wondercraft_http_request_duration_seconds_count", **labels) == 3
    # Raw ids never become label values.
    assert not any("ghost" in str(s.labels) for series in samples.values() for s in series)


def test_telemetry_emission_is_counted_with_a_rate(server):
    events = [{"event": "training_cycle_completed", "agentId": "agent-a"} for _ in range(4)]
    events.append({"event": "training_cycle_failed", "agentId": "agent-a", "error": "x"})
    assert (
        http("POST", server.url + "/v1/telemetry/training", {"events": events}, token=ADMIN_TOKEN)[0] == 202
    )
    samples = scrape(server)
    assert value(samples, "wondercraft_telemetry_events_emitted_total", event="training_cycle_completed") == 4
    assert value(samples, "wondercraft_telemetry_events_emitted_total", event="training_cycle_failed") == 1
    assert value(samples, "wondercraft_telemetry_emission_rate_per_second") == pytest.approx(5 / 60)


def test_event_loop_lag_is_measured_current_and_max(server):
    time.sleep(0.6)  # a few probe intervals
    samples = scrape(server)
    current = value(samples, "wondercraft_event_loop_lag_seconds")
    worst = value(samples, "wondercraft_event_loop_lag_max_seconds")
    assert 0 <= current <= worst < 5
    assert value(samples, "wondercraft_event_loop_lag_observed_seconds_count") >= 2


def test_gauges_for_sandboxes_cycles_aggregation_and_queue_are_exposed(server):
    samples = scrape(server)
    for name in (
        "wondercraft_sandboxes_active",
        "wondercraft_training_cycle_success_ratio",
        "wondercraft_training_queue_depth",
        "wondercraft_training_cycles_running",
        "wondercraft_telemetry_pending_events",
        "wondercraft_http_requests_in_flight",
    ):
        assert value(samples, name) >= 0
    text = http("GET", server.url + "/metrics", token=ADMIN_TOKEN)[1]
    for family in (
        "wondercraft_aggregation_duration_seconds histogram",
        "wondercraft_training_cycle_duration_seconds histogram",
        "wondercraft_training_cycles_total counter",
        "wondercraft_sandbox_memory_bytes gauge",
        "wondercraft_consensus_rounds_total counter",
        "wondercraft_audit_entries_total counter",
    ):
        assert f"# TYPE {family}" in text, family


# ---- in-process: the registry and the probe ----


def test_each_app_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.sandboxes_active.set(3)
    assert second.registry.get_sample_value("wondercraft_sandboxes_active") == 0
    assert first.registry.get_sample_value("wondercraft_sandboxes_active") == 3


def test_cycle_success_ratio_follows_the_outcomes():
    metrics = Metrics()
    assert metrics.registry.get_sample_value("wondercraft_training_cycle_success_ratio") == 0
    for outcome in ("completed", "completed", "completed", "failed"):
        metrics.record_cycle(outcome, duration_s=1.0)
    assert metrics.registry.get_sample_value("wondercraft_training_cycle_success_ratio") == 0.75


def test_per_sandbox_series_are_dropped_when_forgotten():
    metrics = Metrics()
    metrics.set_sandbox_usage("sb-1", cpu_seconds=1.5, memory_bytes=1024, pids=3)
    assert metrics.registry.get_sample_value("wondercraft_sandbox_pids", {"sandbox_id": "sb-1"}) == 3
    metrics.forget_sandbox("sb-1")
    assert metrics.registry.get_sample_value("wondercraft_sandbox_pids", {"sandbox_id": "sb-1"}) is None


def test_loop_lag_probe_sees_a_blocked_loop():
    async def main() -> float:
        metrics = Metrics()
        monitor = LoopLagMonitor(metrics, interval_s=0.02)
        monitor.start()
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # block the loop on purpose
        await asyncio.sleep(0.05)
        await monitor.stop()
        return metrics.registry.get_sample_value("wondercraft_event_loop_lag_max_seconds")

    assert asyncio.run(main()) >= 0.15
