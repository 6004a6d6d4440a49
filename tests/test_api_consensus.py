"""The consensus history and audit trail: append-only, hash-chained, readable at
/v1/consensus/history and /v1/chat/history, and checked by the admin's /v1/audit/verify,
which names the entry that was edited, inserted or deleted behind the service's back."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from urllib.parse import urlencode

import pytest

from server.audit import AuditLog, canonical_json, entry_hash
from server.storage import cycles as cycle_rows
from server.storage.cycles import Cycle
from server.store import Store
from server.vocabulary import CycleStatus
from tests.helpers import ADMIN_TOKEN, api_server, http, register_agent

PARTICIPANTS = [{"agentId": "agent-a", "numSamples": 3}, {"agentId": "agent-b", "numSamples": 4}]


def history(server, path: str = "/v1/consensus/history", token: str = ADMIN_TOKEN, **params):
    suffix = f"?{urlencode(params)}" if params else ""
    return http("GET", server.url + path + suffix, token=token)


def verify(server, token: str = ADMIN_TOKEN):
    return http("GET", server.url + "/v1/audit/verify", token=token)


def db(server) -> sqlite3.Connection:
    return sqlite3.connect(server.state_dir / "wondercraft.db", isolation_level=None)


def seed_log(state_dir, entries, trained=()) -> None:
    """Appends entries through the real AuditLog while the service is stopped; `trained` holds
    (agent, model) pairs recorded as finished cycles, which make the model one the agent trains."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = Store(state_dir / "wondercraft.db")
    try:
        log = AuditLog(store)
        for kind, model, body, agent in entries:
            log.append_blocking(kind, model, body, agent_id=agent)
        for n, (agent, model) in enumerate(trained):
            cycle = Cycle(f"cy-seed-{n}", agent, model, CycleStatus.FAILED, {}, 0, time.time())
            cycle_rows.insert(store, cycle)
    finally:
        store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("consensus") / "state"
    seed_log(
        state,
        [
            ("round.opened", "linear", {"round": 1, "baseVersion": 0}, None),
            ("vote", "linear", {"round": 1, "voter": "finite", "approve": True}, None),
            ("model.committed", "linear", {"version": 1, "sha256": "ab" * 32}, None),
            ("round.opened", "mnist", {"round": 1, "baseVersion": 0}, None),
            ("sandbox.created", None, {"sandboxId": "sb-1"}, "agent-a"),
            ("sandbox.created", None, {"sandboxId": "sb-2"}, "agent-b"),
            ("round_proposal", "linear", {"participants": PARTICIPANTS, "createdBy": "agent-b"}, None),
        ],
        trained=[("agent-a", "linear")],
    )
    with api_server(state) as server:
        server.tokens = {name: register_agent(server, name) for name in ("agent-a", "agent-b")}
        yield server


def test_history_is_newest_first_with_hashes_that_chain(server):
    status, body, _ = history(server)
    assert status == 200
    entries = body["entries"]
    assert body["count"] == len(entries) == 9  # seven seeded plus two agent registrations
    assert [e["seq"] for e in entries] == list(range(9, 0, -1))
    for newer, older in zip(entries, entries[1:], strict=False):
        assert newer["prevHash"] == older["entryHash"]
    assert entries[-1]["prevHash"] == "0" * 64
    assert entries[-1]["kind"] == "round.opened" and entries[-1]["body"] == {"round": 1, "baseVersion": 0}


def test_chat_history_is_the_same_as_consensus_history(server):
    assert history(server, "/v1/chat/history")[1] == history(server)[1]
    assert history(server, "/v1/chat/history", modelType="mnist")[1] == history(server, modelType="mnist")[1]


def test_history_filters_model_kind_limit_before_seq_and_since(server):
    _, body, _ = history(server, modelType="linear")
    assert [e["kind"] for e in body["entries"]] == [
        "round_proposal",
        "model.committed",
        "vote",
        "round.opened",
    ]
    _, body, _ = history(server, kind="round.opened")
    assert [e["modelName"] for e in body["entries"]] == ["mnist", "linear"]
    _, body, _ = history(server, limit=2)
    assert [e["seq"] for e in body["entries"]] == [9, 8]
    _, body, _ = history(server, beforeSeq=3)
    assert [e["seq"] for e in body["entries"]] == [2, 1]
    _, body, _ = history(server, since=int(time.time() * 1000) + 60_000)
    assert body["entries"] == []


def test_an_agent_sees_its_own_entries_and_those_of_models_it_trains_with_pseudonyms(server):
    for path in ("/v1/consensus/history", "/v1/chat/history"):
        # agent-a trains linear: its entries, and linear's rounds, votes and commits.
        status, body, _ = history(server, path, token=server.tokens["agent-a"])
        assert status == 200
        entries = body["entries"]
        assert {e["agentId"] for e in entries} == {None, "agent-a"}
        assert {e["modelName"] for e in entries} == {None, "linear"}  # nothing about mnist
        assert '"agent-b"' not in json.dumps(body)  # as a whole value: a pseudonym may begin "agent-b..."
        proposal = next(e for e in entries if e["kind"] == "round_proposal")
        ids = [p["agentId"] for p in proposal["body"]["participants"]]
        assert ids[0] == "agent-a" and ids[1] != "agent-b"
        assert re.fullmatch(r"agent-[0-9a-f]{12}", ids[1])
        assert proposal["body"]["createdBy"] == ids[1]  # the same agent, the same pseudonym
        # agent-b trains nothing: only its own entries.
        _, body, _ = history(server, path, token=server.tokens["agent-b"])
        assert {e["agentId"] for e in body["entries"]} == {"agent-b"}
        assert "agent-a" not in json.dumps(body)


def test_pseudonyms_are_stable_and_the_admin_sees_the_real_ids(server):
    def pseudonym() -> str:
        _, body, _ = history(server, token=server.tokens["agent-a"], kind="round_proposal")
        return body["entries"][0]["body"]["participants"][1]["agentId"]

    assert pseudonym() == pseudonym()
    _, body, _ = history(server, kind="round_proposal")
    assert [p["agentId"] for p in body["entries"][0]["body"]["participants"]] == ["agent-a", "agent-b"]
    assert body["entries"][0]["body"]["createdBy"] == "agent-b"
    # Keyed: not a plain hash of the id anyone could compute.
    assert pseudonym()[len("agent-") :] != hashlib.sha256(b"agent-b").hexdigest()[:12]


def test_history_needs_a_token(server):
    for path in ("/v1/consensus/history", "/v1/chat/history"):
        assert history(server, path, token=None)[0] == 401


def test_verify_is_admin_only(server):
    assert verify(server, token=server.tokens["agent-a"])[0] == 403
    assert verify(server, token=None)[0] == 401


def test_untouched_chain_verifies(server):
    status, body, _ = verify(server)
    assert status == 200
    assert body == {
        "ok": True,
        "entries": 9,
        "headSeq": 9,
        "headHash": history(server, limit=1)[1]["entries"][0]["entryHash"],
    }


# ---- tampering: each test works on its own copy of the service ----


@pytest.fixture
def fresh(tmp_path):
    state = tmp_path / "state"
    seed_log(state, [("vote", "linear", {"round": r, "approve": True}, None) for r in range(1, 6)])
    with api_server(state) as server:
        status, body, _ = verify(server)
        assert body["ok"] is True and body["entries"] == 5
        yield server


def test_an_edited_body_fails_verify_naming_the_entry(fresh):
    conn = db(fresh)
    conn.execute(
        "UPDATE consensus_log SET body = ? WHERE seq = 3", (canonical_json({"round": 3, "approve": False}),)
    )
    conn.close()
    _, body, _ = verify(fresh)
    assert body["ok"] is False
    assert body["firstBadSeq"] == 3
    assert "entry 3" in body["reason"] and "changed" in body["reason"]
    assert body["entries"] == 2


def test_edits_to_any_column_are_caught(fresh):
    for column, value in (
        ("kind", "veto"),
        ("model_name", "other"),
        ("agent_id", "agent-x"),
        ("created_at", 1.0),
    ):
        conn = db(fresh)
        original = conn.execute(f"SELECT {column} FROM consensus_log WHERE seq = 2").fetchone()[0]
        conn.execute(f"UPDATE consensus_log SET {column} = ? WHERE seq = 2", (value,))
        conn.close()
        _, body, _ = verify(fresh)
        assert body["ok"] is False and body["firstBadSeq"] == 2, (column, body)
        conn = db(fresh)
        conn.execute(f"UPDATE consensus_log SET {column} = ? WHERE seq = 2", (original,))
        conn.close()
        assert verify(fresh)[1]["ok"] is True


def test_a_rewritten_entry_with_a_recomputed_hash_breaks_the_next_link(fresh):
    conn = db(fresh)
    row = conn.execute(
        "SELECT seq, kind, model_name, agent_id, created_at, prev_hash FROM consensus_log WHERE seq = 2"
    ).fetchone()
    forged_body = {"round": 2, "approve": False}
    forged_hash = entry_hash(row[0], row[1], row[2], row[3], forged_body, row[4], row[5])
    conn.execute(
        "UPDATE consensus_log SET body = ?, entry_hash = ? WHERE seq = 2",
        (canonical_json(forged_body), forged_hash),
    )
    conn.close()
    _, body, _ = verify(fresh)
    assert body["ok"] is False and body["firstBadSeq"] == 3
    assert "does not link to entry 2" in body["reason"]


def test_a_deleted_middle_entry_fails_verify_naming_it(fresh):
    conn = db(fresh)
    conn.execute("DELETE FROM consensus_log WHERE seq = 3")
    conn.close()
    _, body, _ = verify(fresh)
    assert body["ok"] is False
    assert body["firstBadSeq"] == 3
    assert "entry 3 is missing" in body["reason"]


def test_a_deleted_last_entry_is_caught_by_the_recorded_head(fresh):
    conn = db(fresh)
    conn.execute("DELETE FROM consensus_log WHERE seq = 5")
    conn.close()
    _, body, _ = verify(fresh)
    assert body["ok"] is False and body["firstBadSeq"] == 5
    assert "entry 5 is missing" in body["reason"]


def test_an_inserted_entry_with_a_valid_looking_hash_is_caught(fresh):
    conn = db(fresh)
    last = conn.execute("SELECT entry_hash FROM consensus_log WHERE seq = 5").fetchone()[0]
    forged = {"round": 6, "approve": True}
    created = round(time.time(), 3)
    digest = entry_hash(6, "vote", "linear", None, forged, created, last)
    conn.execute(
        "INSERT INTO consensus_log(seq, kind, model_name, agent_id, body, prev_hash, entry_hash, created_at)"
        " VALUES(6, 'vote', 'linear', NULL, ?, ?, ?, ?)",
        (canonical_json(forged), last, digest, created),
    )
    conn.close()
    _, body, _ = verify(fresh)
    assert body["ok"] is False and body["firstBadSeq"] == 6
    assert "added outside the log" in body["reason"]


def test_appends_from_many_threads_keep_one_unbroken_chain(tmp_path):
    store = Store(tmp_path / "wondercraft.db")
    try:
        log = AuditLog(store)
        threads = [
            threading.Thread(target=log.append_blocking, args=("vote", "linear", {"voter": i}))
            for i in range(40)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result = log.verify_blocking()
        assert result.ok and result.entries == 40 and result.head_seq == 40
    finally:
        store.close()


def test_audit_entries_survive_a_restart_and_keep_chaining(tmp_path):
    state = tmp_path / "state"
    with api_server(state) as server:
        register_agent(server, "first")
    with api_server(state) as server:
        register_agent(server, "second")
        _, body, _ = verify(server)
        assert body["ok"] is True and body["entries"] == 2
