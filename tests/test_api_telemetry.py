"""Training telemetry over real HTTP: batching by size and by interval, nothing accepted lost on
SIGTERM, retention pruning, filters, per-agent visibility and the live SSE stream."""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from tests.helpers import ADMIN_TOKEN, EventStream, api_server, http, register_agent, wait_until

DAY_MS = 86_400_000


def event(agent: str, kind: str = "training_cycle_completed", **extra) -> dict:
    return {"event": kind, "agentId": agent, **extra}


def post(server, *events: dict, token: str = ADMIN_TOKEN):
    return http("POST", server.url + "/v1/telemetry/training", {"events": list(events)}, token=token)


def stored_rows(server) -> list[tuple]:
    conn = sqlite3.connect(server.state_dir / "wondercraft.db")
    try:
        return conn.execute("SELECT seq, event, agent_id, timestamp FROM telemetry ORDER BY seq").fetchall()
    finally:
        conn.close()


def query(server, token: str = ADMIN_TOKEN, **params):
    from urllib.parse import urlencode

    suffix = f"?{urlencode(params)}" if params else ""
    return http("GET", server.url + "/v1/telemetry/training" + suffix, token=token)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Flush rarely: queries must also see events still in the buffer.
    with api_server(tmp_path_factory.mktemp("telemetry") / "state", TELEMETRY_FLUSH_INTERVAL="0.2") as server:
        server.tokens = {name: register_agent(server, name) for name in ("agent-a", "agent-b")}
        now = int(time.time() * 1000)
        status, body, _ = post(
            server,
            event(
                "agent-a",
                cycleId="c-1",
                timestamp=now - 3000,
                metrics={"loss": 0.4, "accuracy": 0.8, "duration": 1200},
            ),
            event("agent-b", "training_cycle_failed", cycleId="c-2", timestamp=now - 2000, error="oom"),
            event("agent-a", "training_cycle_failed", cycleId="c-3", timestamp=now - 1000, error="diverged"),
            event(
                "agent-b",
                cycleId="c-4",
                timestamp=now,
                deltas={"parameterCount": 10, "l2Norm": 0.5, "sha256": "ab" * 32},
            ),
        )
        assert status == 202, body
        server.base_ms = now
        server.seqs = [e["seq"] for e in body["events"]]
        yield server


def test_accepted_events_come_back_with_seq_and_the_seed_shape(server):
    status, body, _ = query(server, agentId="agent-a")
    assert status == 200
    assert body["count"] == 2
    newest, oldest = body["events"]
    assert newest["seq"] > oldest["seq"]
    assert oldest == {
        "seq": server.seqs[0],
        "event": "training_cycle_completed",
        "agentId": "agent-a",
        "cycleId": "c-1",
        "timestamp": server.base_ms - 3000,
        "metrics": {"loss": 0.4, "accuracy": 0.8, "duration": 1200},
    }
    assert newest["error"] == "diverged"


def test_filters_event_since_limit_and_before_seq(server):
    _, body, _ = query(server, event="training_cycle_failed")
    assert [e["cycleId"] for e in body["events"]] == ["c-3", "c-2"]
    _, body, _ = query(server, since=server.base_ms - 1500)
    assert [e["cycleId"] for e in body["events"]] == ["c-4", "c-3"]
    _, body, _ = query(server, limit=1)
    assert [e["cycleId"] for e in body["events"]] == ["c-4"]
    _, body, _ = query(server, beforeSeq=server.seqs[2])
    assert [e["cycleId"] for e in body["events"]] == ["c-2", "c-1"]


def test_an_agent_sees_only_its_own_events(server):
    status, body, _ = query(server, token=server.tokens["agent-a"])
    assert status == 200
    assert {e["agentId"] for e in body["events"]} == {"agent-a"}
    status, body, _ = query(server, token=server.tokens["agent-a"], agentId="agent-a")
    assert status == 200 and body["count"] == 2


def test_an_agent_asking_for_another_agents_events_is_403(server):
    status, body, _ = query(server, token=server.tokens["agent-a"], agentId="agent-b")
    assert status == 403
    assert "agent-b" in body["error"]["message"]


def test_admin_sees_every_agent(server):
    _, body, _ = query(server)
    assert {e["agentId"] for e in body["events"]} >= {"agent-a", "agent-b"}


def test_only_the_admin_records_events(server):
    status, _, _ = post(server, event("agent-a"), token=server.tokens["agent-a"])
    assert status == 403
    assert post(server, event("agent-a"), token=None)[0] == 401


def test_a_batch_with_one_bad_event_is_rejected_whole_naming_the_field(server):
    before = query(server, limit=1000)[1]["count"]
    status, body, _ = post(
        server, event("agent-a"), event("agent-a", metrics={"loss": 1.0, "accuracy": 7}), event("agent-a")
    )
    assert status == 400
    assert body["error"]["message"] == "events[1].metrics.accuracy must be a number between 0 and 1, got 7"
    assert query(server, limit=1000)[1]["count"] == before


@pytest.mark.parametrize(
    "bad,fragment",
    [
        (event("agent-a", "training_cycle_exploded"), "events[0].event must be one of"),
        (event("agent-a", colour="red"), "unknown field(s) colour in events[0]"),
        (event("agent-a", deltas={"weights": [1, 2]}), "unknown field(s) weights in events[0].deltas"),
        (event("agent-a", timestamp=-1), "events[0].timestamp must be an integer between 0 and"),
        (event("../etc"), "events[0].agentId must be a string"),
        ({"event": "training_cycle_completed"}, "events[0].agentId is required"),
    ],
)
def test_invalid_events_are_400_naming_the_field(server, bad, fragment):
    status, body, _ = post(server, bad)
    assert status == 400
    assert fragment in body["error"]["message"]


def test_events_are_written_in_batches_of_the_configured_size(tmp_path):
    with api_server(tmp_path / "state", TELEMETRY_BATCH_SIZE="5", TELEMETRY_FLUSH_INTERVAL="3600") as server:
        for i in range(3):
            assert post(server, event("agent-a", cycleId=f"c{i}"))[0] == 202
        time.sleep(0.5)
        # Accepted and readable, but not yet written: the batch is not full.
        assert stored_rows(server) == []
        assert query(server)[1]["count"] == 3
        assert post(server, event("agent-a"), event("agent-a"))[0] == 202
        rows = wait_until(lambda: len(stored_rows(server)) == 5 and stored_rows(server))
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5]


def test_a_partial_batch_is_written_after_the_flush_interval(tmp_path):
    with api_server(
        tmp_path / "state", TELEMETRY_BATCH_SIZE="1000", TELEMETRY_FLUSH_INTERVAL="0.5"
    ) as server:
        assert post(server, event("agent-a"), event("agent-b"))[0] == 202
        assert wait_until(lambda: len(stored_rows(server)) == 2, timeout=5)


def test_sigterm_writes_every_accepted_event_and_seq_continues_after_restart(tmp_path):
    state = tmp_path / "state"
    env = {"TELEMETRY_BATCH_SIZE": "100000", "TELEMETRY_FLUSH_INTERVAL": "3600"}
    server = api_server(state, **env).start()
    for batch in range(5):
        events = [event("agent-a", cycleId=f"b{batch}-{i}") for i in range(50)]
        assert post(server, *events)[0] == 202
    assert stored_rows(server) == []
    assert server.stop(signal.SIGTERM) == 0
    rows = stored_rows(server)
    assert [r[0] for r in rows] == list(range(1, 251))
    with api_server(state, **env) as again:
        _, body, _ = post(again, event("agent-a"))
        assert body["events"][0]["seq"] == 251
        assert query(again, limit=1000)[1]["count"] == 251


def test_events_older_than_the_retention_period_are_pruned(tmp_path):
    state = tmp_path / "state"
    api_server(state).start().stop()
    now = int(time.time() * 1000)
    conn = sqlite3.connect(state / "wondercraft.db")
    for seq, age_days in ((1, 30), (2, 8), (3, 6), (4, 0)):
        body = f'{{"event":"training_cycle_completed","agentId":"old","timestamp":{now - age_days * DAY_MS}}}'
        conn.execute(
            "INSERT INTO telemetry(seq, event, agent_id, timestamp, body) VALUES(?, ?, ?, ?, ?)",
            (seq, "training_cycle_completed", "old", now - age_days * DAY_MS, body),
        )
    conn.commit()
    conn.close()
    with api_server(state, TELEMETRY_RETENTION_DAYS="7") as server:
        assert [r[0] for r in wait_until(lambda: len(stored_rows(server)) == 2 and stored_rows(server))] == [
            3,
            4,
        ]
        _, body, _ = query(server, agentId="old")
        assert [e["seq"] for e in body["events"]] == [4, 3]
        # Pruned seqs are never handed out again.
        assert post(server, event("agent-a"))[1]["events"][0]["seq"] == 5


# ---- the live stream ----


def stream(server, token: str = ADMIN_TOKEN, query_string: str = "", **headers) -> EventStream:
    return EventStream(
        server.url + "/v1/telemetry/training/stream" + query_string, token=token, headers=headers
    )


def test_stream_delivers_new_events_live_with_filters(server):
    everything = stream(server)
    failures_of_b = stream(server, query_string="?agentId=agent-b&event=training_cycle_failed")
    try:
        assert everything.status == 200
        assert everything.headers["Content-Type"].startswith("text/event-stream")
        post(
            server,
            event("agent-a", cycleId="live-1"),
            event("agent-b", "training_cycle_failed", cycleId="live-2"),
        )
        got = everything.wait_for(2)
        assert [e["cycleId"] for e in got] == ["live-1", "live-2"]
        assert [int(i) for i, _, _ in everything.events] == [e["seq"] for e in got]
        assert [e["cycleId"] for e in failures_of_b.wait_for(1)] == ["live-2"]
    finally:
        everything.close()
        failures_of_b.close()


def test_an_agents_stream_carries_only_its_own_events(server):
    mine = stream(server, token=server.tokens["agent-a"])
    try:
        post(server, event("agent-b", cycleId="not-yours"), event("agent-a", cycleId="yours"))
        assert mine.wait_for(1)
        time.sleep(0.3)  # room for a wrongly delivered event to arrive
        assert [e["cycleId"] for e in mine.data()] == ["yours"]
    finally:
        mine.close()


def test_stream_auth_matrix(server):
    other = stream(server, token=server.tokens["agent-a"], query_string="?agentId=agent-b")
    assert other.status == 403
    nobody = stream(server, token=None)
    assert nobody.status == 401
    own = stream(server, token=server.tokens["agent-a"], query_string="?agentId=agent-a")
    assert own.status == 200
    own.close()


def test_stream_replays_after_last_event_id_then_goes_live(server):
    _, body, _ = post(server, event("agent-a", cycleId="r-1"), event("agent-a", cycleId="r-2"))
    first_seq = body["events"][0]["seq"]
    resumed = stream(server, query_string="?agentId=agent-a", **{"Last-Event-ID": str(first_seq)})
    try:
        post(server, event("agent-a", cycleId="r-3"))
        got = resumed.wait_for(2)
        assert [e["cycleId"] for e in got] == ["r-2", "r-3"]
    finally:
        resumed.close()


def test_stream_with_since_replays_from_that_time(server):
    since = server.base_ms - 1500
    replay = stream(server, query_string=f"?since={since}&agentId=agent-b")
    try:
        got = replay.wait_for(1)
        assert got[0]["cycleId"] == "c-4"
        assert all(e["timestamp"] >= since and e["agentId"] == "agent-b" for e in got)
    finally:
        replay.close()


def test_bad_last_event_id_is_400(server):
    bad = stream(server, **{"Last-Event-ID": "../../1"})
    assert bad.status == 400
    assert "Last-Event-ID" in bad.body["error"]["message"]


def test_sigterm_ends_open_streams_and_the_server_exits_promptly(tmp_path):
    server = api_server(tmp_path / "state").start()
    reader = stream(server)
    assert reader.status == 200
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert reader.ended.wait(5)
    reader.close()


# ---- the service API later code calls (in-process) ----


def test_emit_validates_names_the_field_and_stop_writes_everything(tmp_path):
    import asyncio

    from server.errors import BadRequest
    from server.metrics import Metrics
    from server.store import Store
    from server.telemetry import TelemetryFilter, TelemetryService

    store = Store(tmp_path / "wondercraft.db")

    async def main():
        service = TelemetryService(store, Metrics(), batch_size=1000, flush_interval_s=3600, retention_days=7)
        await service.start()
        with pytest.raises(BadRequest, match="metrics.loss must be a number"):
            service.emit({"event": "training_cycle_completed", "agentId": "a", "metrics": {"loss": "low"}})
        first = service.emit({"event": "training_cycle_completed", "agentId": "a", "cycleId": "c-1"})
        # From a worker thread, as the runtime's supervisors would.
        await asyncio.to_thread(service.emit_threadsafe, {"event": "training_cycle_failed", "agentId": "a"})
        await asyncio.sleep(0.05)
        found = await service.query(TelemetryFilter(agent_id="a"))
        assert [e.seq for e in found] == [first.seq + 1, first.seq]
        assert store.query("SELECT COUNT(*) AS n FROM telemetry")[0]["n"] == 0
        await service.stop()

    try:
        asyncio.run(main())
        assert store.query("SELECT COUNT(*) AS n FROM telemetry")[0]["n"] == 2
    finally:
        store.close()


def test_a_reader_too_slow_for_the_stream_is_cut_off_not_buffered_without_bound():
    import asyncio

    from server.telemetry import Subscription, TelemetryEvent, TelemetryFilter

    async def main():
        subscription = Subscription(TelemetryFilter(agent_id="a"), max_queued=3)
        for seq in range(1, 6):
            subscription.offer(
                TelemetryEvent(seq=seq, event="training_cycle_completed", agent_id="a", timestamp_ms=0)
            )
        subscription.offer(
            TelemetryEvent(seq=9, event="training_cycle_completed", agent_id="b", timestamp_ms=0)
        )
        assert subscription.overflowed
        assert (await subscription.next(0.1)).seq == 1
        subscription.close()

    asyncio.run(main())


def test_seqs_lost_in_a_crash_are_never_handed_out_again(tmp_path):
    state = tmp_path / "state"
    env = {"TELEMETRY_BATCH_SIZE": "100000", "TELEMETRY_FLUSH_INTERVAL": "3600"}
    server = api_server(state, **env).start()
    _, body, _ = post(server, event("agent-a"), event("agent-a"), event("agent-a"))
    handed_out = [e["seq"] for e in body["events"]]
    server.stop(signal.SIGKILL)  # the three events were never written
    assert stored_rows(server) == []
    with api_server(state, **env) as again:
        _, body, _ = post(again, event("agent-a"))
        # A reader that saw seq 3 before the crash and resumes with Last-Event-ID: 3 gets this one.
        assert body["events"][0]["seq"] > max(handed_out)
