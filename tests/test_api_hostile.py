"""Hostile input over real HTTP: oversized, malformed, mistyped and path-tricking requests get a
4xx with a JSON error naming the problem, never a 5xx, and the service keeps serving."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import ADMIN_TOKEN, api_server, http, raw_request, register_agent

AGENTS = "/v1/agents"
TELEMETRY = "/v1/telemetry/training"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(tmp_path_factory.mktemp("hostile") / "state") as server:
        yield server
        # Whatever came before, the service still answers and has logged no crash.
        assert http("GET", server.url + "/healthz")[0] == 200
        assert not [r for r in server.log_records() if r["level"] == "error"], server.log()


def post_raw(
    server, path: str, body: bytes, content_type: str = "application/json", token: str = ADMIN_TOKEN
):
    return http("POST", server.url + path, body, token=token, headers={"Content-Type": content_type})


def assert_error(answer, status: int, *fragments: str) -> dict:
    got_status, body, headers = answer
    assert got_status == status, answer
    assert headers["Content-Type"].startswith("application/json")
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    for fragment in fragments:
        assert fragment in body["error"]["message"], (fragment, body)
    return body


def request_head(method: str, path: str, *lines: str) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {ADMIN_TOKEN}", *lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


# ---- size ----


def test_a_declared_huge_body_is_refused_413_before_it_is_sent(server):
    # Content-Length says 1 GB and no body follows: the answer must come without reading it.
    started = time.monotonic()
    status, headers, body = raw_request(
        server.port,
        request_head("POST", TELEMETRY, "Content-Type: application/json", "Content-Length: 1000000000"),
    )
    assert status == 413
    assert time.monotonic() - started < 5
    assert body["error"]["code"] == "payload_too_large"
    assert "1000000000 bytes" in body["error"]["message"]
    assert headers.get("connection", "").lower() == "close"


def test_a_chunked_body_over_the_limit_is_refused_413_while_streaming(server):
    chunk = b"x" * 65536
    pieces = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(20))  # 1.25 MiB
    status, _, body = raw_request(
        server.port,
        request_head("POST", TELEMETRY, "Content-Type: application/json", "Transfer-Encoding: chunked")
        + pieces,
    )
    assert status == 413
    assert "over 1048576 bytes" in body["error"]["message"]


def test_small_bodies_have_small_limits(server):
    padded = json.dumps({"agentId": "a" + " " * 5000}).encode()
    assert_error(post_raw(server, AGENTS, padded), 413, "accepts at most 4096")


# ---- syntax ----


def metric_event(value: bytes) -> bytes:
    return (
        b'{"events": [{"event": "training_cycle_completed", "agentId": "a", "metrics": {"loss": '
        + value
        + b"}}]}"
    )


@pytest.mark.parametrize(
    "path,raw,fragment",
    [
        (AGENTS, b"{not json", "is not valid JSON"),
        (AGENTS, b'{"agentId": "a",}', "is not valid JSON"),
        (TELEMETRY, metric_event(b"NaN"), "NaN is not valid JSON"),
        (TELEMETRY, metric_event(b"-Infinity"), "-Infinity is not valid JSON"),
        (TELEMETRY, metric_event(b"1e999"), "out of range"),
        (TELEMETRY, b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (TELEMETRY, metric_event(b"9" * 5000), "not valid JSON"),
        (AGENTS, b'{"agentId": "\xff\xfe"}', "UTF-8"),
        (AGENTS, b"   ", "body is required"),
        (AGENTS, b"", "body is required"),
    ],
    ids=[
        "garbage",
        "trailing-comma",
        "nan",
        "infinity",
        "overflow",
        "deep-nesting",
        "huge-int",
        "not-utf8",
        "blank",
        "empty",
    ],
)
def test_malformed_json_is_400(server, path, raw, fragment):
    assert_error(post_raw(server, path, raw), 400, fragment)


def test_a_body_that_is_not_an_object_is_400(server):
    for raw in (b"[]", b'"agent"', b"42", b"null", b"true"):
        assert_error(post_raw(server, AGENTS, raw), 400, "body must be an object")


def test_a_non_json_content_type_is_415(server):
    assert_error(
        post_raw(server, AGENTS, b"agentId=x", "application/x-www-form-urlencoded"), 415, "application/json"
    )


# ---- fields ----


def test_unknown_fields_are_400_naming_them(server):
    body = assert_error(
        post_raw(server, AGENTS, json.dumps({"agentId": "x1", "isAdmin": True, "role": "root"}).encode()),
        400,
        "unknown field(s) isAdmin, role in body; allowed: agentId",
    )
    assert body["error"]["details"]["errors"][0]["field"] == "isAdmin"


@pytest.mark.parametrize(
    "body,message",
    [
        (
            {"agentId": 5},
            "agentId must be a string of 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit, got 5",
        ),
        ({"agentId": None}, "agentId must be a string"),
        ({"agentId": ["a"]}, "agentId must be a string"),
        ({"agentId": "a" * 65}, "agentId must be a string of 1 to 64 letters"),
        ({}, "agentId is required"),
    ],
)
def test_wrong_types_are_400_naming_the_field(server, body, message):
    assert_error(http("POST", server.url + AGENTS, body, token=ADMIN_TOKEN), 400, message)


@pytest.mark.parametrize(
    "value,expected",
    [
        (-5, "events[0].metrics.duration must be a number between 0 and 3.15576e+11, got -5"),
        (1e300, "events[0].metrics.duration must be a number between 0 and 3.15576e+11, got 1e+300"),
        ("fast", 'events[0].metrics.duration must be a number between 0 and 3.15576e+11, got "fast"'),
        (True, "events[0].metrics.duration must be a number between 0 and 3.15576e+11, got true"),
    ],
)
def test_negative_absurd_and_mistyped_numbers_are_400_naming_the_field(server, value, expected):
    event = {"event": "training_cycle_completed", "agentId": "a", "metrics": {"duration": value}}
    assert_error(http("POST", server.url + TELEMETRY, {"events": [event]}, token=ADMIN_TOKEN), 400, expected)


@pytest.mark.parametrize(
    "query,message",
    [
        ("limit=-5", "query parameter limit must be an integer between 1 and 1000, got -5"),
        ("limit=0", "limit must be an integer between 1 and 1000, got 0"),
        ("limit=99999999999999999999999", "limit must be an integer between 1 and 1000"),
        ("limit=1.5", 'limit must be an integer between 1 and 1000, got "1.5"'),
        ("limit=ten", 'got "ten"'),
        ("limit=", 'got ""'),
        ("since=-1", "since must be an integer between 0 and"),
        ("event=training_cycle_exploded", 'event must be one of "training_cycle_completed"'),
        ("limit=1&limit=2", "limit was given 2 times"),
        ("colour=red", 'unknown query parameter(s) "colour"'),
        ("agentId=..%2F..%2Fetc", "agentId must be a string of 1 to 64 letters"),
    ],
)
def test_bad_query_parameters_are_400_naming_them(server, query, message):
    assert_error(http("GET", f"{server.url}{TELEMETRY}?{query}", token=ADMIN_TOKEN), 400, message)


# ---- ids with path tricks ----


@pytest.mark.parametrize(
    "path",
    [
        "/v1/agents/..%2F..%2Fetc%2Fpasswd",
        "/v1/agents/%2e%2e",
        "/v1/agents/.hidden",
        "/v1/agents/a%00b",
        "/v1/agents/a:b",
        "/v1/agents/" + "a" * 300,
        "/v1/agents/%E2%80%AEevil",
    ],
)
def test_ids_with_path_tricks_are_400_or_404(server, path):
    status, headers, body = raw_request(server.port, request_head("DELETE", path))
    assert status in (400, 404), (status, body)
    assert set(body) == {"error"}


def test_dot_segments_never_escape_the_route(server):
    status, _, body = raw_request(server.port, request_head("DELETE", "/v1/agents/../agents/x"))
    assert status in (400, 404, 405)
    assert set(body) == {"error"}


def test_unknown_paths_and_methods_answer_json(server):
    assert_error(
        http("GET", server.url + "/v1/nothing", token=ADMIN_TOKEN), 404, "no endpoint at /v1/nothing"
    )
    status, body, headers = http("PUT", server.url + AGENTS, {"agentId": "x"}, token=ADMIN_TOKEN)
    assert status == 405
    assert headers["Allow"] == "GET,POST" or set(headers["Allow"].split(",")) == {"GET", "POST"}
    assert "PUT is not allowed" in body["error"]["message"]


def test_garbage_in_a_valid_request_changes_nothing_stored(server):
    register_agent(server, "steady")
    before = http("GET", server.url + AGENTS, token=ADMIN_TOKEN)[1]
    for raw in (b'{"agentId": "steady"', b'{"agentId": "steady", "x": 1}', b'{"agentId": "st/eady"}'):
        status, _, _ = post_raw(server, AGENTS, raw)
        assert 400 <= status < 500
    assert http("GET", server.url + AGENTS, token=ADMIN_TOKEN)[1] == before
