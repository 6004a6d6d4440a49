"""Datasets as files over real HTTP: .npz and .safetensors uploads are streamed, checked and
stored by their sha256 (the same bytes twice are one dataset), bounded by a size cap and a
per-agent quota, private to their agent; every corrupt or hostile kind is a 400 that leaves
nothing stored. Plus the in-use hook that makes DELETE a 409, in-process."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import pickle
import stat
import struct
import zipfile

import numpy as np
import pytest
import safetensors.numpy

from tests.helpers import ADMIN_TOKEN, api_server, http, raw_request, register_agent

CAP_BYTES = 256 * 1024
QUOTA_BYTES = 600 * 1024
OCTETS = {"Content-Type": "application/octet-stream"}


def npz(seed: int = 0, rows: int = 20, compressed: bool = False, **arrays) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = arrays or {
        "x": rng.standard_normal((rows, 4)).astype(np.float32),
        "y": rng.integers(0, 3, rows).astype(np.int64),
    }
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def safetensors_file(seed: int = 0, rows: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    return safetensors.numpy.save(
        {"x": rng.standard_normal((rows, 8, 8)).astype(np.float32), "y": np.arange(rows, dtype=np.int32)}
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(
        tmp_path_factory.mktemp("datasets") / "state",
        PETALS_DATASET_MAX_BYTES=str(CAP_BYTES),
        PETALS_DATASET_QUOTA_BYTES=str(QUOTA_BYTES),
    ) as server:
        server.tokens = {name: register_agent(server, name) for name in ("agent-a", "agent-b", "agent-q")}
        yield server


def upload(server, data: bytes, token: str, name: str = "shard", query: str = "", headers=None):
    return http(
        "POST", f"{server.url}/v1/datasets?name={name}{query}", data, token=token, headers=headers or OCTETS
    )


def stored(server) -> dict:
    """What the service holds: dataset rows, dataset directories, files left in incoming."""
    root = server.state_dir / "datasets"
    status, listing, _ = http("GET", server.url + "/v1/datasets", token=ADMIN_TOKEN)
    assert status == 200
    return {
        "rows": sorted(d["datasetId"] for d in listing["datasets"]),
        "dirs": sorted(p.name for p in root.iterdir() if p.name != ".incoming"),
        "incoming": sorted(p.name for p in (root / ".incoming").iterdir()),
    }


def test_an_npz_upload_is_stored_by_its_sha256_readable_by_sandboxes(server):
    data = npz(1)
    status, body, _ = upload(server, data, server.tokens["agent-a"], name="digits-shard-1")
    assert status == 201, body
    assert body["datasetId"].startswith("ds-") and body["agentId"] == "agent-a"
    assert body["name"] == "digits-shard-1" and body["format"] == "npz"
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["sizeBytes"] == len(data)
    assert body["arrays"] == {
        "x": {"shape": [20, 4], "dtype": "float32"},
        "y": {"shape": [20], "dtype": "int64"},
    }
    assert body["numRows"] == 20
    directory = server.state_dir / "datasets" / body["sha256"]
    assert (directory / "data.npz").read_bytes() == data
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert stat.S_IMODE((directory / "data.npz").stat().st_mode) == 0o644
    assert (
        http("GET", f"{server.url}/v1/datasets/{body['datasetId']}", token=server.tokens["agent-a"])[1]
        == body
    )


def test_a_safetensors_upload_is_stored(server):
    data = safetensors_file(2)
    status, body, _ = upload(server, data, server.tokens["agent-a"])
    assert status == 201, body
    assert body["format"] == "safetensors"
    assert body["arrays"] == {
        "x": {"shape": [20, 8, 8], "dtype": "float32"},
        "y": {"shape": [20], "dtype": "int32"},
    }
    assert (server.state_dir / "datasets" / body["sha256"] / "data.safetensors").read_bytes() == data


def test_a_compressed_npz_is_accepted(server):
    status, body, _ = upload(server, npz(3, compressed=True), server.tokens["agent-a"])
    assert status == 201, body
    assert body["arrays"]["x"] == {"shape": [20, 4], "dtype": "float32"}


def test_the_same_bytes_twice_from_one_agent_are_one_dataset(server):
    data = npz(4)
    first = upload(server, data, server.tokens["agent-a"], name="first")
    again = upload(server, data, server.tokens["agent-a"], name="second")
    assert first[0] == 201 and again[0] == 200
    assert again[1] == first[1]  # the stored dataset, its first name kept
    ids = [
        d["datasetId"]
        for d in http("GET", server.url + "/v1/datasets", token=server.tokens["agent-a"])[1]["datasets"]
    ]
    assert ids.count(first[1]["datasetId"]) == 1


def test_another_agents_dataset_is_404_and_missing_from_its_list(server):
    status, mine, _ = upload(server, npz(5), server.tokens["agent-a"])
    assert status == 201
    url = f"{server.url}/v1/datasets/{mine['datasetId']}"
    for method in ("GET", "DELETE"):
        status, body, _ = http(method, url, token=server.tokens["agent-b"])
        assert status == 404 and body["error"]["code"] == "not_found", body
        assert body["error"]["message"] == f"dataset {mine['datasetId']} not found"
    status, listing, _ = http("GET", server.url + "/v1/datasets", token=server.tokens["agent-b"])
    assert status == 200 and "agent-a" not in json.dumps(listing)
    assert http("GET", server.url + "/v1/datasets?agentId=agent-a", token=server.tokens["agent-b"])[0] == 403
    # Still there for its owner.
    assert http("GET", url, token=server.tokens["agent-a"])[0] == 200


def test_two_agents_with_the_same_bytes_share_the_file_until_both_delete(server):
    data = npz(6)
    a = upload(server, data, server.tokens["agent-a"])[1]
    b = upload(server, data, server.tokens["agent-b"])[1]
    assert a["datasetId"] != b["datasetId"] and a["sha256"] == b["sha256"]
    directory = server.state_dir / "datasets" / a["sha256"]
    status, deleted, _ = http(
        "DELETE", f"{server.url}/v1/datasets/{a['datasetId']}", token=server.tokens["agent-a"]
    )
    assert status == 200 and deleted["datasetId"] == a["datasetId"]
    assert http("GET", f"{server.url}/v1/datasets/{a['datasetId']}", token=server.tokens["agent-a"])[0] == 404
    assert (directory / "data.npz").exists()  # agent-b's dataset still uses it
    assert (
        http("DELETE", f"{server.url}/v1/datasets/{b['datasetId']}", token=server.tokens["agent-b"])[0] == 200
    )
    assert not directory.exists()


def _object_npz() -> bytes:
    return npz(x=np.array([{"a": 1}] * 3, dtype=object))


def _corrupt_npz() -> bytes:
    data = bytearray(npz(7))
    data[200] ^= 0xFF  # inside x's data: the member's CRC no longer matches
    return bytes(data)


def _extra_member_npz() -> bytes:
    buffer = io.BytesIO(npz(8))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("payload.pkl", pickle.dumps({"not": "an array"}))
    return buffer.getvalue()


def _lying_safetensors() -> bytes:
    header = json.dumps({"x": {"dtype": "F32", "shape": [20, 4], "data_offsets": [0, 10**9]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(320)


def _padded_npy_npz() -> bytes:
    # An .npy whose header says 20 rows but whose data holds 21.
    good = io.BytesIO()
    np.lib.format.write_array(good, np.zeros((20, 4), np.float32))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", good.getvalue() + bytes(16))
    return buffer.getvalue()


CORRUPT = {
    "truncated npz": (lambda: npz(9)[:-40], "not a readable .npz"),
    "npz with a flipped byte": (_corrupt_npz, "corrupt or truncated"),
    "pickle inside an npz": (_object_npz, "Python objects"),
    "a plain pickle": (lambda: pickle.dumps({"x": [1, 2, 3]}), "neither an .npz nor a valid .safetensors"),
    "non-array member in an npz": (_extra_member_npz, "not an array"),
    "first dimensions disagree": (
        lambda: npz(x=np.zeros((5, 2)), y=np.zeros(4)),
        "first dimensions disagree",
    ),
    "a scalar array": (lambda: npz(x=np.zeros((5, 2)), y=np.float32(1.0)), "is a scalar"),
    "string array": (lambda: npz(x=np.zeros((2, 2)), y=np.array(["a", "b"])), "only bool, integer and float"),
    "npy data longer than its shape": (_padded_npy_npz, "data bytes but shape"),
    "safetensors header lying about offsets": (_lying_safetensors, "outside the file"),
    "truncated safetensors": (lambda: safetensors_file(10)[:-7], "outside the file"),
    "random bytes": (lambda: os.urandom(4096), "neither an .npz nor a valid .safetensors"),
    "an empty zip": (lambda: zipfile_bytes(), "holds no arrays"),
}


def zipfile_bytes() -> bytes:
    buffer = io.BytesIO()
    zipfile.ZipFile(buffer, "w").close()
    return buffer.getvalue()


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_or_hostile_file_is_400_and_nothing_is_stored(server, kind):
    make, message = CORRUPT[kind]
    before = stored(server)
    status, body, _ = upload(server, make(), server.tokens["agent-b"])
    assert status == 400, body
    assert body["error"]["code"] == "bad_dataset"
    assert message in body["error"]["message"], body
    assert stored(server) == before
    assert before["incoming"] == []


def test_an_empty_body_is_400(server):
    status, body, _ = upload(server, b"", server.tokens["agent-b"])
    assert status == 400 and body["error"]["code"] == "bad_dataset"


def test_a_body_declared_over_the_cap_is_413_before_it_is_read(server):
    before = stored(server)
    head = (
        f"POST /v1/datasets?name=big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.tokens['agent-b']}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {10**9}\r\n\r\n"
    ).encode()
    status, headers, body = raw_request(server.port, head)  # no body is ever sent
    assert status == 413, body
    assert f"at most {CAP_BYTES} bytes" in body["error"]["message"]
    assert stored(server) == before


def test_a_chunked_body_growing_over_the_cap_is_413_and_not_stored(server):
    before = stored(server)
    data = npz(11, rows=CAP_BYTES // 16)  # about 1.25x the cap
    assert len(data) > CAP_BYTES
    chunks = b"".join(
        f"{len(data[i : i + 65536]):x}\r\n".encode() + data[i : i + 65536] + b"\r\n"
        for i in range(0, len(data), 65536)
    )
    request = (
        (
            f"POST /v1/datasets?name=big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.tokens['agent-b']}\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + chunks
        + b"0\r\n\r\n"
    )
    status, _, body = raw_request(server.port, request)
    assert status == 413, body
    assert stored(server) == before


def test_an_agents_quota_bounds_its_datasets(server):
    token = server.tokens["agent-q"]
    sizes = []
    for seed in range(100, 120):
        data = npz(seed, rows=3000)  # about 72 KB each
        status, body, _ = upload(server, data, token)
        if status != 201:
            break
        sizes.append(body)
    assert status == 413, body
    assert "quota" in body["error"]["message"] and str(QUOTA_BYTES) in body["error"]["message"]
    assert sum(d["sizeBytes"] for d in sizes) <= QUOTA_BYTES < sum(d["sizeBytes"] for d in sizes) + len(data)
    # The same bytes again take no more room; deleting one makes room for a new one.
    assert upload(server, npz(100, rows=3000), token)[0] == 200
    assert http("DELETE", f"{server.url}/v1/datasets/{sizes[0]['datasetId']}", token=token)[0] == 200
    assert upload(server, data, token)[0] == 201


def test_the_admin_uploads_for_a_named_agent_and_lists_all(server):
    status, body, _ = upload(server, npz(12), ADMIN_TOKEN)
    assert status == 400 and "agentId is required" in body["error"]["message"]
    status, body, _ = upload(server, npz(12), ADMIN_TOKEN, query="&agentId=agent-b")
    assert status == 201 and body["agentId"] == "agent-b"
    status, listing, _ = http("GET", server.url + "/v1/datasets", token=ADMIN_TOKEN)
    assert {"agent-a", "agent-b"} <= {d["agentId"] for d in listing["datasets"]}
    assert listing["count"] == len(listing["datasets"])
    only_b = http("GET", server.url + "/v1/datasets?agentId=agent-b", token=ADMIN_TOKEN)[1]["datasets"]
    assert only_b and {d["agentId"] for d in only_b} == {"agent-b"}


def test_an_agent_may_not_upload_as_another(server):
    status, body, _ = upload(server, npz(13), server.tokens["agent-b"], query="&agentId=agent-a")
    assert status == 403, body


def test_a_json_content_type_is_415_and_a_missing_name_400(server):
    status, body, _ = upload(
        server, npz(14), server.tokens["agent-b"], headers={"Content-Type": "application/json"}
    )
    assert status == 415 and "application/octet-stream" in body["error"]["message"]
    status, body, _ = http(
        "POST", server.url + "/v1/datasets", npz(14), token=server.tokens["agent-b"], headers=OCTETS
    )
    assert status == 400 and "name is required" in body["error"]["message"]


def test_datasets_survive_a_restart_and_interrupted_uploads_are_swept(tmp_path):
    state = tmp_path / "state"
    with api_server(state) as server:
        token = register_agent(server, "keeper")
        status, body, _ = upload(server, npz(15), token)
        assert status == 201
    (state / "datasets" / ".incoming" / "interrupted.part").write_bytes(b"half an upload")
    (state / "datasets" / ("f" * 64)).mkdir()  # a directory no dataset refers to
    with api_server(state) as server:
        assert http("GET", f"{server.url}/v1/datasets/{body['datasetId']}", token=token)[1] == body
        assert list((state / "datasets" / ".incoming").iterdir()) == []
        assert sorted(p.name for p in (state / "datasets").iterdir()) == [".incoming", body["sha256"]]


# ---- the in-use hook, in-process ----


def test_delete_is_409_while_the_in_use_hook_says_a_cycle_uses_it(tmp_path):
    from server.config import Settings
    from server.datasets import DatasetService
    from server.errors import Conflict
    from server.store import Store

    busy: set[str] = set()
    store = Store(tmp_path / "wondercraft.db")

    async def scenario():
        service = DatasetService(Settings(), store, tmp_path, in_use=lambda dataset_id: dataset_id in busy)
        await service.start()

        async def body():
            yield npz(16)

        dataset, created = await service.upload("agent-a", "shard", body())
        assert created
        busy.add(dataset.dataset_id)
        with pytest.raises(Conflict, match="used by a queued or running training cycle"):
            await service.delete(dataset.dataset_id, "agent-a")
        assert service.get(dataset.dataset_id).dataset_id == dataset.dataset_id
        busy.clear()
        await service.delete(dataset.dataset_id, "agent-a")
        assert not (tmp_path / "datasets" / dataset.sha256).exists()

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))


def test_a_large_upload_is_streamed_not_held_in_memory(tmp_path):
    size_mb = 96
    data = npz(17, x=np.zeros((size_mb << 18, 1), np.float32), y=np.zeros(size_mb << 18, np.uint8))
    with api_server(tmp_path / "state", PETALS_DATASET_MAX_BYTES=str(256 << 20)) as server:
        token = register_agent(server, "streamer")
        # Warm the path (imports, first allocations) with a small upload, then measure.
        assert upload(server, npz(18), token)[0] == 201
        before = _peak_rss_kb(server.proc.pid)
        status, body, _ = upload(server, data, token, name="big")
        grown_mb = (_peak_rss_kb(server.proc.pid) - before) / 1024
    assert status == 201, body
    assert body["sizeBytes"] == len(data) and body["numRows"] == size_mb << 18
    # Holding the body whole would add its 120 MB; streaming adds a few MB of buffers.
    assert grown_mb < 32, f"peak RSS grew by {grown_mb:.0f} MB for a {len(data) >> 20} MB upload"
