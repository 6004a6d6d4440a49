"""Every Prometheus metric the service exposes, defined once, on a registry owned by one app
(so several apps in one process do not clash), plus the event-loop lag probe.
Later code updates these through `Metrics`; names carry their units."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets tuned to an API whose answers should take well under 50 ms.
REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
AGGREGATION_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CYCLE_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
WARMUP_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW_S = 60


class _WindowRate:
    """Events per second over the last minute, from per-second counts."""

    def __init__(self, window_s: int = RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._counts: collections.deque[list[int]] = collections.deque()

    def add(self, n: int = 1, now: float | None = None) -> None:
        second = int(now if now is not None else time.monotonic())
        if self._counts and self._counts[-1][0] == second:
            self._counts[-1][1] += n
        else:
            self._counts.append([second, n])
        self._trim(second)

    def _trim(self, second: int) -> None:
        while self._counts and self._counts[0][0] <= second - self._window_s:
            self._counts.popleft()

    def per_second(self, now: float | None = None) -> float:
        second = int(now if now is not None else time.monotonic())
        self._trim(second)
        return sum(n for _, n in self._counts) / self._window_s


@dataclass(frozen=True)
class Metric:
    """One metric's declaration; `make` registers it."""

    kind: type  # Counter, Gauge or Histogram
    name: str
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    def make(self, registry: CollectorRegistry):
        extra = {"buckets": self.buckets} if self.buckets is not None else {}
        return self.kind(self.name, self.description, self.labels, registry=registry, **extra)


def counter(name: str, description: str, *labels: str) -> Metric:
    return Metric(Counter, name, description, labels)


def gauge(name: str, description: str, *labels: str) -> Metric:
    return Metric(Gauge, name, description, labels)


def histogram(name: str, description: str, buckets: tuple[float, ...], *labels: str) -> Metric:
    return Metric(Histogram, name, description, labels, buckets)


# Metrics attribute -> declaration. Adding a metric is adding one entry; names carry their units.
METRICS: dict[str, Metric] = {
    # HTTP
    "http_requests": counter(
        "wondercraft_http_requests_total", "HTTP requests answered, by route template and status",
        "method", "route", "status",
    ),
    "http_request_duration": histogram(
        "wondercraft_http_request_duration_seconds", "Time to answer an HTTP request, by route template",
        REQUEST_BUCKETS_S, "method", "route",
    ),
    "http_requests_in_flight": gauge("wondercraft_http_requests_in_flight", "HTTP requests being handled now"),
    # Event loop
    "event_loop_lag": gauge("wondercraft_event_loop_lag_seconds", "Latest measured event-loop scheduling delay"),
    "event_loop_lag_max": gauge(
        "wondercraft_event_loop_lag_max_seconds", "Largest event-loop scheduling delay since start"
    ),
    "event_loop_lag_histogram": histogram(
        "wondercraft_event_loop_lag_observed_seconds", "Distribution of event-loop scheduling delays",
        LAG_BUCKETS_S,
    ),
    # Warm pool (runtime/pool.py)
    "warm_pool_hits": counter("wondercraft_warm_pool_hits_total", "Learn cycles that took a warm sandbox", "profile"),
    "warm_pool_misses": counter(
        "wondercraft_warm_pool_misses_total", "Learn cycles that found no warm sandbox and went cold", "profile"
    ),
    "warm_pool_warmup": histogram(
        "wondercraft_warm_pool_warmup_seconds", "Time to create a warm sandbox and import its libraries",
        WARMUP_BUCKETS_S, "profile",
    ),
    "warm_pool_idle": gauge("wondercraft_warm_pool_idle", "Warm sandboxes waiting for a cycle", "profile"),
    # Telemetry
    "telemetry_events": counter("wondercraft_telemetry_events_emitted_total", "Telemetry events accepted", "event"),
    "telemetry_emission_rate": gauge(
        "wondercraft_telemetry_emission_rate_per_second", "Telemetry events accepted per second over the last minute"
    ),
    "telemetry_pending": gauge("wondercraft_telemetry_pending_events", "Telemetry events accepted but not yet written"),
    "telemetry_written": counter("wondercraft_telemetry_events_written_total", "Telemetry events written to the store"),
    "telemetry_flush_duration": histogram(
        "wondercraft_telemetry_flush_duration_seconds", "Time to write one telemetry batch", REQUEST_BUCKETS_S
    ),
    "telemetry_flush_failures": counter(
        "wondercraft_telemetry_flush_failures_total", "Telemetry batches that failed to write"
    ),
    "telemetry_pruned": counter("wondercraft_telemetry_events_pruned_total", "Telemetry events removed by retention"),
    "telemetry_subscribers": gauge("wondercraft_telemetry_stream_subscribers", "Open telemetry streams"),
    # Audit trail
    "audit_entries": counter("wondercraft_audit_entries_total", "Entries appended to the consensus/audit log", "kind"),
    # Sandboxes (set by the sandbox service); the per-sandbox gauges are labelled sandbox_id
    "sandboxes_active": gauge("wondercraft_sandboxes_active", "Sandboxes alive now"),
    # Admission: what sandboxes hold against the host budget (resource: memory_mb, cpu_cores, gpus)
    "admission_committed": gauge("wondercraft_admission_committed", "Committed to live sandboxes", "resource"),
    "admission_budget": gauge("wondercraft_admission_budget", "The host budget sandboxes may commit", "resource"),
    "sandboxes_created": counter("wondercraft_sandboxes_created_total", "Sandboxes created"),
    "sandboxes_destroyed": counter(
        "wondercraft_sandboxes_destroyed_total", "Sandboxes destroyed, by reason (deleted, expired, failed, oom, ...)",
        "reason",
    ),
    "sandbox_cpu_seconds": gauge("wondercraft_sandbox_cpu_seconds", "CPU time used by a live sandbox", "sandbox_id"),
    "sandbox_memory_bytes": gauge("wondercraft_sandbox_memory_bytes", "Memory in use by a live sandbox", "sandbox_id"),
    "sandbox_memory_peak_bytes": gauge(
        "wondercraft_sandbox_memory_peak_bytes", "Peak memory of a live sandbox", "sandbox_id"
    ),
    "sandbox_pids": gauge("wondercraft_sandbox_pids", "Processes in a live sandbox", "sandbox_id"),
    # Training cycles (set by the petals service)
    "training_cycles": counter(
        "wondercraft_training_cycles_total", "Training cycles finished, by outcome (completed or failed)", "outcome"
    ),
    "training_cycle_success_ratio": gauge(
        "wondercraft_training_cycle_success_ratio",
        "Completed cycles over finished cycles since start (0 before any finished)",
    ),
    "training_cycle_duration": histogram(
        "wondercraft_training_cycle_duration_seconds", "Wall time of one training cycle, queue excluded",
        CYCLE_BUCKETS_S,
    ),
    "training_queue_depth": gauge("wondercraft_training_queue_depth", "Training cycles waiting for a slot"),
    "training_cycles_running": gauge("wondercraft_training_cycles_running", "Training cycles running now"),
    # Aggregation and consensus (set by the petals service)
    "aggregation_duration": histogram(
        "wondercraft_aggregation_duration_seconds", "Time to aggregate one round's deltas, by strategy",
        AGGREGATION_BUCKETS_S, "strategy",
    ),
    "consensus_rounds": counter(
        "wondercraft_consensus_rounds_total", "Consensus rounds decided, by outcome (committed or rejected)", "outcome"
    ),
}  # fmt: skip

# The gauges set_sandbox_usage sets and forget_sandbox drops: attribute names after "sandbox_".
SANDBOX_USAGE = tuple(
    attr.removeprefix("sandbox_") for attr, metric in METRICS.items() if metric.labels == ("sandbox_id",)
)


class Metrics:
    """The service's metrics, one attribute per METRICS entry: prometheus_client objects with
    `.inc()`, `.set()`, `.observe()`, `.labels(...)`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for attr, metric in METRICS.items():
            setattr(self, attr, metric.make(self.registry))
        self._telemetry_rate = _WindowRate()
        self.telemetry_emission_rate.set_function(self._telemetry_rate.per_second)
        self.training_cycle_success_ratio.set_function(self._cycle_success_ratio)

    # ---- helpers for the services ----

    def count_telemetry(self, event: str) -> None:
        self.telemetry_events.labels(event=event).inc()
        self._telemetry_rate.add()

    def record_cycle(self, outcome: str, duration_s: float | None = None) -> None:
        """outcome: "completed" or "failed"."""
        self.training_cycles.labels(outcome=outcome).inc()
        if duration_s is not None:
            self.training_cycle_duration.observe(duration_s)

    def _cycle_success_ratio(self) -> float:
        totals = {"completed": 0.0, "failed": 0.0}
        for family in self.training_cycles.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("outcome") in totals:
                    totals[sample.labels["outcome"]] += sample.value
        completed, finished = totals["completed"], totals["completed"] + totals["failed"]
        return completed / finished if finished else 0.0

    def set_sandbox_usage(
        self,
        sandbox_id: str,
        *,
        cpu_seconds: float | None = None,
        memory_bytes: int | None = None,
        memory_peak_bytes: int | None = None,
        pids: int | None = None,
    ) -> None:
        values = {"cpu_seconds": cpu_seconds, "memory_bytes": memory_bytes,
                  "memory_peak_bytes": memory_peak_bytes, "pids": pids}  # fmt: skip
        for name in SANDBOX_USAGE:
            if values[name] is not None:
                getattr(self, f"sandbox_{name}").labels(sandbox_id=sandbox_id).set(values[name])

    def forget_sandbox(self, sandbox_id: str) -> None:
        """Drops a destroyed sandbox's per-sandbox series so they do not pile up."""
        for name in SANDBOX_USAGE:
            with contextlib.suppress(KeyError):
                getattr(self, f"sandbox_{name}").remove(sandbox_id)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LoopLagMonitor:
    """Sleeps a fixed interval and records how late it wakes: the time the loop was busy with
    something else. Runs for the life of the app."""

    def __init__(self, metrics: Metrics, interval_s: float = 0.25) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._task: asyncio.Task | None = None
        self.current_s = 0.0
        self.max_s = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self._interval_s
            await asyncio.sleep(self._interval_s)
            lag = max(0.0, loop.time() - expected)
            self.current_s = lag
            self.max_s = max(self.max_s, lag)
            self._metrics.event_loop_lag.set(lag)
            self._metrics.event_loop_lag_max.set(self.max_s)
            self._metrics.event_loop_lag_histogram.observe(lag)
