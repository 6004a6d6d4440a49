"""Every Prometheus metric the service exposes, defined once, on a registry owned by one app
(so several apps in one process do not clash), plus the event-loop lag probe.
Later code updates these through `Metrics`; names carry their units."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets tuned to an API whose answers should take well under 50 ms.
REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
AGGREGATION_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CYCLE_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
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


class Metrics:
    """The service's metrics. Attributes are prometheus_client objects: `.inc()`, `.set()`,
    `.observe()`, `.labels(...)`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)

        # HTTP
        self.http_requests = Counter(
            "wondercraft_http_requests_total",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_duration = Histogram(
            "wondercraft_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["method", "route"],
            buckets=REQUEST_BUCKETS_S,
            registry=r,
        )
        self.http_requests_in_flight = Gauge(
            "wondercraft_http_requests_in_flight", "HTTP requests being handled now", registry=r
        )

        # Event loop
        self.event_loop_lag = Gauge(
            "wondercraft_event_loop_lag_seconds", "Latest measured event-loop scheduling delay", registry=r
        )
        self.event_loop_lag_max = Gauge(
            "wondercraft_event_loop_lag_max_seconds",
            "Largest event-loop scheduling delay since start",
            registry=r,
        )
        self.event_loop_lag_histogram = Histogram(
            "wondercraft_event_loop_lag_observed_seconds",
            "Distribution of event-loop scheduling delays",
            buckets=LAG_BUCKETS_S,
            registry=r,
        )

        # Telemetry
        self.telemetry_events = Counter(
            "wondercraft_telemetry_events_emitted_total", "Telemetry events accepted", ["event"], registry=r
        )
        self._telemetry_rate = _WindowRate()
        self.telemetry_emission_rate = Gauge(
            "wondercraft_telemetry_emission_rate_per_second",
            "Telemetry events accepted per second over the last minute",
            registry=r,
        )
        self.telemetry_emission_rate.set_function(self._telemetry_rate.per_second)
        self.telemetry_pending = Gauge(
            "wondercraft_telemetry_pending_events",
            "Telemetry events accepted but not yet written",
            registry=r,
        )
        self.telemetry_written = Counter(
            "wondercraft_telemetry_events_written_total", "Telemetry events written to the store", registry=r
        )
        self.telemetry_flush_duration = Histogram(
            "wondercraft_telemetry_flush_duration_seconds",
            "Time to write one telemetry batch",
            buckets=REQUEST_BUCKETS_S,
            registry=r,
        )
        self.telemetry_flush_failures = Counter(
            "wondercraft_telemetry_flush_failures_total", "Telemetry batches that failed to write", registry=r
        )
        self.telemetry_pruned = Counter(
            "wondercraft_telemetry_events_pruned_total", "Telemetry events removed by retention", registry=r
        )
        self.telemetry_subscribers = Gauge(
            "wondercraft_telemetry_stream_subscribers", "Open telemetry streams", registry=r
        )

        # Audit trail
        self.audit_entries = Counter(
            "wondercraft_audit_entries_total",
            "Entries appended to the consensus/audit log",
            ["kind"],
            registry=r,
        )

        # Sandboxes (set by the sandbox service)
        self.sandboxes_active = Gauge("wondercraft_sandboxes_active", "Sandboxes alive now", registry=r)
        self.sandboxes_created = Counter(
            "wondercraft_sandboxes_created_total", "Sandboxes created", registry=r
        )
        self.sandboxes_destroyed = Counter(
            "wondercraft_sandboxes_destroyed_total",
            "Sandboxes destroyed, by reason (deleted, expired, failed, oom, ...)",
            ["reason"],
            registry=r,
        )
        self.sandbox_cpu_seconds = Gauge(
            "wondercraft_sandbox_cpu_seconds", "CPU time used by a live sandbox", ["sandbox_id"], registry=r
        )
        self.sandbox_memory_bytes = Gauge(
            "wondercraft_sandbox_memory_bytes", "Memory in use by a live sandbox", ["sandbox_id"], registry=r
        )
        self.sandbox_memory_peak_bytes = Gauge(
            "wondercraft_sandbox_memory_peak_bytes",
            "Peak memory of a live sandbox",
            ["sandbox_id"],
            registry=r,
        )
        self.sandbox_pids = Gauge(
            "wondercraft_sandbox_pids", "Processes in a live sandbox", ["sandbox_id"], registry=r
        )
        # Admission: what sandboxes hold against the host budget (resource: memory_mb, cpu_cores, gpus)
        self.admission_committed = Gauge(
            "wondercraft_admission_committed", "Committed to live sandboxes", ["resource"], registry=r
        )
        self.admission_budget = Gauge(
            "wondercraft_admission_budget", "The host budget sandboxes may commit", ["resource"], registry=r
        )

        # Training cycles (set by the petals service)
        self.training_cycles = Counter(
            "wondercraft_training_cycles_total",
            "Training cycles finished, by outcome (completed or failed)",
            ["outcome"],
            registry=r,
        )
        self.training_cycle_success_ratio = Gauge(
            "wondercraft_training_cycle_success_ratio",
            "Completed cycles over finished cycles since start (0 before any finished)",
            registry=r,
        )
        self.training_cycle_success_ratio.set_function(self._cycle_success_ratio)
        self.training_cycle_duration = Histogram(
            "wondercraft_training_cycle_duration_seconds",
            "Wall time of one training cycle, queue excluded",
            buckets=CYCLE_BUCKETS_S,
            registry=r,
        )
        self.training_queue_depth = Gauge(
            "wondercraft_training_queue_depth", "Training cycles waiting for a slot", registry=r
        )
        self.training_cycles_running = Gauge(
            "wondercraft_training_cycles_running", "Training cycles running now", registry=r
        )

        # Aggregation and consensus (set by the petals service)
        self.aggregation_duration = Histogram(
            "wondercraft_aggregation_duration_seconds",
            "Time to aggregate one round's deltas, by strategy",
            ["strategy"],
            buckets=AGGREGATION_BUCKETS_S,
            registry=r,
        )
        self.consensus_rounds = Counter(
            "wondercraft_consensus_rounds_total",
            "Consensus rounds decided, by outcome (committed or rejected)",
            ["outcome"],
            registry=r,
        )

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
        for gauge, value in (
            (self.sandbox_cpu_seconds, cpu_seconds),
            (self.sandbox_memory_bytes, memory_bytes),
            (self.sandbox_memory_peak_bytes, memory_peak_bytes),
            (self.sandbox_pids, pids),
        ):
            if value is not None:
                gauge.labels(sandbox_id=sandbox_id).set(value)

    def forget_sandbox(self, sandbox_id: str) -> None:
        """Drops a destroyed sandbox's per-sandbox series so they do not pile up."""
        for gauge in (
            self.sandbox_cpu_seconds,
            self.sandbox_memory_bytes,
            self.sandbox_memory_peak_bytes,
            self.sandbox_pids,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(sandbox_id)

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
