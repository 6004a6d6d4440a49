"""Every list pages with `cursor` and `limit` through the real service: walking a list page by
page gives every item once, in the list's order; a cursor survives items added meanwhile; a
bad cursor or limit is a 400 JSON error; the OpenAPI document declares both parameters and
`nextCursor` for each list."""

from __future__ import annotations

import base64
import io
import json
from urllib.parse import urlencode

import numpy as np
import pytest

from tests.helpers import ADMIN_TOKEN, api_server, http, register_agent, wait_cycle

MODEL = "linear:paged"
OCTETS = {"Content-Type": "application/octet-stream"}
# Each list: its path, the fixed query that selects this test's items, the key of its items,
# the field that identifies an item.
LISTS = {
    "sandboxes": ("/v1/sandbox", {"agentId": "pager"}, "sandboxes", "sandboxId"),
    "cycles": ("/v1/admin/cycles", {"agentId": "pager"}, "cycles", "cycleId"),
    "models": ("/v1/petals/models", {}, "models", "modelType"),
    "versions": ("/v1/petals/model/versions", {"modelType": MODEL}, "versions", "version"),
    "history": ("/v1/consensus/history", {"modelType": MODEL}, "entries", "seq"),
    "datasets": ("/v1/datasets", {"agentId": "pager"}, "datasets", "datasetId"),
}


def get(server, path: str, token: str = ADMIN_TOKEN, **query):
    suffix = f"?{urlencode(query)}" if query else ""
    return http("GET", f"{server.url}{path}{suffix}", token=token)


def npz(seed: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.full((4, 2), seed, dtype=np.float32), y=np.arange(4, dtype=np.float32))
    return buffer.getvalue()


def add_item(server, name: str, n: int) -> None:
    """One more item of list `name`."""
    if name == "sandboxes":
        body = {"agentId": "pager", "resourceCaps": {"cpu": 0.1, "memory": 32}}
        status, view, _ = http("POST", f"{server.url}/v1/sandbox/create", body, token=ADMIN_TOKEN)
        assert status == 201, view
        assert http("DELETE", f"{server.url}/v1/sandbox/{view['sandboxId']}", token=ADMIN_TOKEN)[0] == 200
    elif name == "models":
        body = {"modelType": f"linear:paged-{n}", "modelConfig": {"inputDim": 2}}
        assert http("POST", f"{server.url}/v1/petals/models", body, token=ADMIN_TOKEN)[0] == 201
    elif name == "datasets":
        status, body, _ = http(
            "POST",
            f"{server.url}/v1/datasets?name=d{n}&agentId=pager",
            npz(n),
            token=ADMIN_TOKEN,
            headers=OCTETS,
        )
        assert status == 201, body
    else:  # cycles, versions and history: one learn cycle, which commits a version
        job = {"agentId": "pager", "modelType": MODEL, "seed": n,
               "dataBatch": [{"x": [0.1 * i, 1.0], "y": 0.2 * i} for i in range(4)],
               "trainingParams": {"epochs": 1}, "resourceCaps": {"cpu": 0.5, "memory": 64}}  # fmt: skip
        status, body, _ = http("POST", f"{server.url}/v1/petals/train", job, token=ADMIN_TOKEN)
        assert status == 202, body
        ended = wait_cycle(server, ADMIN_TOKEN, body["cycleId"], statuses=("aggregated", "failed"))
        assert ended["status"] == "aggregated", ended


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(tmp_path_factory.mktemp("paging") / "state") as server:
        server.agent = register_agent(server, "pager")
        body = {"modelType": MODEL, "modelConfig": {"inputDim": 2}, "roundPolicy": {"minClients": 1}}
        assert http("POST", f"{server.url}/v1/petals/models", body, token=ADMIN_TOKEN)[0] == 201
        for name in ("sandboxes", "models", "datasets", "cycles"):
            for n in range(3):
                add_item(server, name, n)
        yield server


def walk(server, name: str, limit: int) -> tuple[list, int]:
    """Every item of the list, page by page; and how many pages it took."""
    path, query, key, _ = LISTS[name]
    items, cursor, pages = [], None, 0
    while True:
        status, body, _ = get(server, path, **query, limit=limit, **({"cursor": cursor} if cursor else {}))
        assert status == 200, body
        assert body["count"] == len(body[key]) <= limit
        items += body[key]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            return items, pages
        assert pages < 100


@pytest.mark.parametrize("name", list(LISTS))
def test_walking_a_list_page_by_page_gives_every_item_once_in_order(server, name):
    path, query, key, ident = LISTS[name]
    status, whole, _ = get(server, path, **query, limit=1000)
    assert status == 200 and whole["nextCursor"] is None
    assert len(whole[key]) >= 3
    items, pages = walk(server, name, limit=2)
    assert [i[ident] for i in items] == [i[ident] for i in whole[key]]
    assert pages == -(-len(items) // 2)  # the last page says so: no empty page after it
    assert len({json.dumps(i[ident]) for i in items}) == len(items)


@pytest.mark.parametrize("name", list(LISTS))
def test_a_cursor_stays_valid_when_items_are_added_meanwhile(server, name):
    path, query, key, ident = LISTS[name]
    status, first, _ = get(server, path, **query, limit=1)
    assert status == 200 and first["nextCursor"], first
    _, before, _ = get(server, path, **query, cursor=first["nextCursor"], limit=1000)
    add_item(server, name, 100 + len(before[key]))
    _, after, _ = get(server, path, **query, cursor=first["nextCursor"], limit=1000)
    shown = [i[ident] for i in before[key]]
    again = [i[ident] for i in after[key]]
    assert first[key][0][ident] not in again
    # What followed the cursor still follows it, in order, none skipped; the new item shows only
    # where it sorts after the cursor (at the end of an oldest-first list, in its name's place).
    assert [i for i in again if i in shown] == shown
    assert len(again) - len(shown) <= 1


@pytest.mark.parametrize("name", list(LISTS))
def test_a_bad_cursor_or_limit_is_a_400_naming_it(server, name):
    path, query, _, _ = LISTS[name]
    other = "datasets" if name != "datasets" else "models"
    _, foreign, _ = get(server, LISTS[other][0], **LISTS[other][1], limit=1)
    forged = base64.urlsafe_b64encode(json.dumps([name, "x", "y", "z"]).encode()).decode().rstrip("=")
    for bad in ({"cursor": "not a cursor!"}, {"cursor": "AAAA"}, {"cursor": forged},
                {"cursor": foreign["nextCursor"]}, {"limit": 0}, {"limit": 1001}, {"limit": "ten"}):  # fmt: skip
        status, body, _ = get(server, path, **query, **bad)
        assert status == 400, (bad, body)
        field = next(iter(bad))
        assert field in body["error"]["message"], (bad, body)


def test_an_agent_pages_only_through_what_it_may_see(server):
    status, body, _ = get(server, "/v1/datasets", token=server.agent, limit=1)
    assert status == 200 and len(body["datasets"]) == 1 and body["nextCursor"]
    _, rest, _ = get(server, "/v1/datasets", token=server.agent, cursor=body["nextCursor"], limit=1000)
    assert {d["agentId"] for d in body["datasets"] + rest["datasets"]} == {"pager"}


def test_openapi_declares_cursor_limit_and_next_cursor_for_every_list(server):
    _, document, _ = http("GET", f"{server.url}/v1/openapi.json")
    for path, _, key, _ in LISTS.values():
        operation = document["paths"][path]["get"]
        names = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert {"cursor", "limit"} <= names, path
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        name = schema["$ref"].rsplit("/", 1)[-1]
        component = document["components"]["schemas"][name]
        assert "nextCursor" in component["required"] and key in component["properties"], path
