"""The fleet's pieces that need no cluster: the executor setting, inputs by content (a folder
packs to the same bytes whatever its times, a node stores only what matches its hash), and the
refusal of a Ray GCS that answers without a token (a real gRPC server on loopback)."""

from __future__ import annotations

import os
import time
from concurrent import futures

import pytest

from server.config import load_settings
from server.errors import ConfigError, StartupRefused
from server.fleet.cas import TREE, Content, NodeCache, digest, pack
from server.training.executors import LocalExecutor, executor_from


def test_the_local_executor_is_the_default_and_ray_needs_an_address():
    settings = load_settings(None, {})
    assert settings.executor == "local"
    assert isinstance(executor_from(settings, sandboxes=None), LocalExecutor)
    with pytest.raises(ConfigError, match="RAY_ADDRESS"):
        load_settings(None, {"WONDERCRAFT_EXECUTOR": "ray"})
    with pytest.raises(ConfigError, match="RAY_ADDRESS"):
        load_settings(None, {"WONDERCRAFT_EXECUTOR": "ray", "RAY_ADDRESS": "no-port"})
    assert load_settings(None, {"WONDERCRAFT_EXECUTOR": "ray", "RAY_ADDRESS": "10.0.0.1:6379"}).ray_address


def test_a_folder_packs_to_the_same_bytes_whatever_its_times_and_is_rebuilt_readable(tmp_path):
    source = tmp_path / "data"
    (source / "sub").mkdir(parents=True)
    (source / "job.json").write_text('{"seed": 1}')
    (source / "sub" / "batch.npz").write_bytes(b"\x00" * 100)
    kind, first = pack(source)
    past = time.time() - 86400
    os.utime(source / "job.json", (past, past))
    assert pack(source) == (kind, first) and kind == TREE
    content = Content(str(source), kind, digest(first), len(first))
    cache = NodeCache(tmp_path / "cas")
    path = cache.store(content, first)
    assert (path / "job.json").read_text() == '{"seed": 1}' and cache.has(content)
    assert (path / "sub" / "batch.npz").stat().st_mode & 0o777 == 0o644
    (source / "job.json").write_text('{"seed": 2}')
    assert digest(pack(source)[1]) != content.sha256


def test_a_node_refuses_content_that_does_not_match_its_hash(tmp_path):
    content = Content("/x", "file", digest(b"right"), 5)
    cache = NodeCache(tmp_path / "cas")
    with pytest.raises(ValueError, match="does not match"):
        cache.store(content, b"wrong")
    assert not cache.has(content) and not (tmp_path / "cas").exists()


def test_a_gcs_that_answers_without_a_token_is_refused():
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("ray")
    from ray.core.generated import gcs_service_pb2

    from server.fleet.executor import requires_token

    def open_answer(request, context):
        return gcs_service_pb2.GetClusterIdReply()

    def refusing(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken")

    for behaviour, expected in ((open_answer, False), (refusing, True)):
        server = grpc.server(futures.ThreadPoolExecutor(2))
        handler = grpc.method_handlers_generic_handler("ray.rpc.NodeInfoGcsService", {
            "GetClusterId": grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=gcs_service_pb2.GetClusterIdRequest.FromString,
                response_serializer=gcs_service_pb2.GetClusterIdReply.SerializeToString),
        })  # fmt: skip
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            assert requires_token(f"127.0.0.1:{port}") is expected
        finally:
            server.stop(0)
    with pytest.raises(StartupRefused, match="does not answer"):
        requires_token("127.0.0.1:1", timeout_s=2)
