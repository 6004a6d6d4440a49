"""Models with their own program, over real HTTP with real sandboxes: registration as
multipart (spec, program, parameters, onnx), a numpy program without a graph (predict and
export answer 409), a Flower NumPyClient through the adapter on a dataset with an ONNX graph
(predictions use the trained version's tensors), and bad uploads that are 400 and store nothing."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import tarfile
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.artifacts.tensors import encode_tensors
from tests.helpers import ADMIN_TOKEN, ServerProcess, clean_env, http, register_agent, wait_cycle

PROGRAMS = Path(__file__).parent / "programs"
OCTETS = {"Content-Type": "application/octet-stream"}
FLOWER = "python /opt/wondercraft/wondercraft_learn.py flower /program/client.py:LinearClient"


def multipart(parts: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = secrets.token_hex(16)
    body = io.BytesIO()
    for name, (filename, data) in parts.items():
        body.write(f"--{boundary}\r\n".encode())
        body.write(f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode())
        body.write(b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def parameters(features: int = 2) -> bytes:
    tensors = {"fc.weight": np.zeros((features, 1), np.float32), "fc.bias": np.zeros(1, np.float32)}
    return encode_tensors(tensors, order=["fc.weight", "fc.bias"])


def graph(features: int = 2) -> bytes:
    weight = numpy_helper.from_array(np.ones((features, 1), np.float32), "fc.weight")
    bias = numpy_helper.from_array(np.ones(1, np.float32), "fc.bias")
    nodes = [
        helper.make_node("MatMul", ["x", "fc.weight"], ["m"]),
        helper.make_node("Add", ["m", "fc.bias"], ["y"]),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", features])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])], initializer=[weight, bias],
        ),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
    )  # fmt: skip
    return model.SerializeToString()


def tar_gz(members: dict[str, bytes], link: tuple[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            archive.addfile(info)
    return buffer.getvalue()


def spec(name: str, entrypoint, **more) -> tuple[str, bytes]:
    body = {"modelType": name, "entrypoint": entrypoint, "roundPolicy": {"minClients": 1}, **more}
    return "spec.json", json.dumps(body).encode()


def register(server, token, parts) -> tuple[int, dict]:
    body, headers = multipart(parts)
    status, answer, _ = http("POST", f"{server.url}/v1/petals/models", body, token=token, headers=headers)
    return status, answer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("byom-models") / "state"
    env = clean_env(WONDERCRAFT_ADMIN_TOKEN=ADMIN_TOKEN, PETALS_MAX_RETRIES="0")
    with ServerProcess(state, env=env) as server:
        server.tokens = {name: register_agent(server, name) for name in ("author", "agent")}
        status, body, _ = http(
            "PATCH", f"{server.url}/v1/agents/author", {"modelAuthor": True}, token=ADMIN_TOKEN
        )
        assert status == 200, body
        yield server


def train(server, token, body) -> dict:
    job = {"trainingParams": {"epochs": 20, "learningRate": 0.1}, "resourceCaps": {"cpu": 1, "memory": 256},
           "seed": 1, **body}  # fmt: skip
    status, answer, _ = http("POST", f"{server.url}/v1/petals/train", job, token=token)
    assert status == 202, answer
    cycle = wait_cycle(server, token, answer["cycleId"], statuses=("aggregated", "failed"))
    assert cycle["status"] == "aggregated", json.dumps(cycle)[:3000]
    return cycle


def test_a_numpy_program_without_a_graph_is_validated_by_its_evaluate_entrypoint(server):
    program = tar_gz(
        {name: (PROGRAMS / "linear_numpy" / name).read_bytes() for name in ("train.py", "evaluate.py")}
    )
    status, model = register(server, server.tokens["author"], {
        "spec": spec("numpy-linear", ["python", "/program/train.py"], hyperparameters={"rate": 0.1},
                     evaluateEntrypoint="python /program/evaluate.py"),
        "program": ("program.tar.gz", program), "parameters": ("p.safetensors", parameters()),
    })  # fmt: skip
    assert status == 201, model
    holdout = [{"x": [float(i) + 0.5, 1.0], "y": 2.0 * i + 2.0} for i in range(-3, 3)]
    status, body, _ = http("POST", f"{server.url}/v1/petals/validation",
                           {"modelType": "numpy-linear", "dataBatch": holdout}, token=ADMIN_TOKEN)  # fmt: skip
    assert status == 201, body
    assert (
        model["signature"] is None
        and model["program"]["programSha256"] == hashlib.sha256(program).hexdigest()
    )
    batch = [{"x": [float(i), 1.0], "y": 2.0 * i + 1.0} for i in range(-4, 5)]
    cycle = train(server, server.tokens["agent"], {"modelType": "numpy-linear", "dataBatch": batch})
    assert "training on 9 rows at rate 0.1" in cycle["logs"]
    assert cycle["result"]["numSamples"] == 9 and len(cycle["result"]["epochs"]) == 20
    status, versions, _ = http("GET", f"{server.url}/v1/petals/model/versions?modelType=numpy-linear",
                               token=ADMIN_TOKEN)  # fmt: skip
    assert [v["programSha256"] for v in versions["versions"]] == [model["program"]["programSha256"]] * 2
    status, shared, _ = http(
        "GET", f"{server.url}/v1/petals/model/shared?modelType=numpy-linear", token=ADMIN_TOKEN
    )
    assert shared["version"] == 1 and shared["parameters"]["fc.weight"]["values"][0] > 0.5
    # The hold-out vote came from evaluate.py in a sandbox: the trained loss against version 0's.
    holdout_vote = next(v for v in shared["metadata"]["votes"] if v["validator"] == "holdout")
    assert holdout_vote["approve"] and "negative loss" in holdout_vote["reason"], holdout_vote
    status, refused, _ = http("POST", f"{server.url}/v1/petals/model/shared/predict",
                              {"modelType": "numpy-linear", "inputs": [[1.0, 1.0]]}, token=ADMIN_TOKEN)  # fmt: skip
    assert status == 409 and "onnx" in refused["error"]["message"], refused
    status, refused, _ = http("GET", f"{server.url}/v1/petals/model/shared?modelType=numpy-linear&format=onnx",
                              token=ADMIN_TOKEN)  # fmt: skip
    assert status == 409, refused


def test_a_flower_client_on_a_dataset_trains_and_predicts_through_its_graph(server):
    archive = tar_gz(
        {name: (PROGRAMS / "flower_linear" / name).read_bytes() for name in ("client.py", "linear_math.py")}
    )
    status, model = register(server, server.tokens["author"], {
        "spec": spec("flower-linear", FLOWER), "program": ("client.tar.gz", archive),
        "parameters": ("p.safetensors", parameters()), "onnx": ("model.onnx", graph()),
    })  # fmt: skip
    assert status == 201, model
    assert model["program"]["onnxSha256"] == hashlib.sha256(graph()).hexdigest()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    data = io.BytesIO()
    np.savez(data, x=x, y=(x @ np.array([3.0, -1.0], np.float32) + 0.5).astype(np.float32))
    status, dataset, _ = http("POST", f"{server.url}/v1/datasets?name=shard", data.getvalue(),
                              token=server.tokens["agent"], headers=OCTETS)  # fmt: skip
    assert status == 201, dataset
    holdout = [{"x": [1.0, 0.0], "y": 3.5}, {"x": [0.0, 1.0], "y": -0.5}, {"x": [1.0, 1.0], "y": 2.5}]
    status, body, _ = http("POST", f"{server.url}/v1/petals/validation",
                           {"modelType": "flower-linear", "dataBatch": holdout}, token=ADMIN_TOKEN)  # fmt: skip
    assert status == 201, body
    cycle = train(
        server, server.tokens["agent"], {"modelType": "flower-linear", "datasetId": dataset["datasetId"]}
    )
    assert cycle["result"]["numSamples"] == 64
    status, shared, _ = http(
        "GET", f"{server.url}/v1/petals/model/shared?modelType=flower-linear", token=ADMIN_TOKEN
    )
    # Judged through the graph with the candidate's tensors: no worse than version 0's.
    holdout_vote = next(v for v in shared["metadata"]["votes"] if v["validator"] == "holdout")
    assert holdout_vote["approve"] and "negative loss" in holdout_vote["reason"], holdout_vote
    w = np.array(shared["parameters"]["fc.weight"]["values"], np.float32).reshape(2, 1)
    b = np.array(shared["parameters"]["fc.bias"]["values"], np.float32)
    inputs = [[1.0, 2.0], [-0.5, 0.25]]
    status, predicted, _ = http("POST", f"{server.url}/v1/petals/model/shared/predict",
                                {"modelType": "flower-linear", "inputs": inputs}, token=server.tokens["agent"])  # fmt: skip
    assert status == 200, predicted
    assert predicted["version"] == 1
    np.testing.assert_allclose(
        np.array(predicted["outputs"]), np.array(inputs, np.float32) @ w + b, atol=1e-5
    )


BAD_UPLOADS = {
    "dotdot": ({"program": ("p.tar.gz", tar_gz({"../evil.py": b"print(1)"}))}, "..", 400),
    "absolute": ({"program": ("p.tar.gz", tar_gz({"/etc/evil.py": b"print(1)"}))}, "absolute", 400),
    "link": ({"program": ("p.tar.gz", tar_gz({"a.py": b"1"}, link=("b.py", "/etc/passwd")))}, "link", 400),
    "float64": (
        {"parameters": ("p.safetensors", encode_tensors({"fc.weight": np.zeros((2, 1))}))},
        "float64",
        400,
    ),
    "graph-names": ({"onnx": ("m.onnx", graph(3))}, "shape", 400),
    "not-a-graph": ({"onnx": ("m.onnx", b"garbage")}, "ONNX", 400),
    "no-parameters": ({"parameters": None}, "parameters", 400),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_is_a_400_and_stores_nothing(server, case):
    override, fragment, expected = BAD_UPLOADS[case]
    name = f"bad-{case}"
    parts = {"spec": spec(name, ["python", "/program/main.py"]), "program": ("main.py", b"print(1)"),
             "parameters": ("p.safetensors", parameters())}  # fmt: skip
    parts.update(override)
    parts = {k: v for k, v in parts.items() if v is not None}
    status, body = register(server, server.tokens["author"], parts)
    assert status == expected and fragment.lower() in body["error"]["message"].lower(), body
    status, _, _ = http("GET", f"{server.url}/v1/petals/model/shared?modelType={name}", token=ADMIN_TOKEN)
    assert status == 404


def test_only_the_admin_or_a_model_author_may_register(server):
    parts = {"spec": spec("not-mine", ["python", "/program/main.py"]), "program": ("main.py", b"print(1)"),
             "parameters": ("p.safetensors", parameters())}  # fmt: skip
    status, body = register(server, server.tokens["agent"], parts)
    assert status == 403, body


HYPER_PROGRAM = b"""import numpy as np
import wondercraft_learn as wl

job, base = wl.job(), wl.read_base()
wl.write_deltas({name: np.zeros_like(t) for name, t in base.items()})
hp = job["hyperparameters"]
wl.write_metrics(job["numSamples"], loss=0.0, rate=float(hp["rate"]), kept=float(hp["kept"]))
"""


def test_a_jobs_hyperparameters_reach_the_program_over_the_models_defaults(server):
    status, model = register(server, server.tokens["author"], {
        "spec": spec("hyper-defaults", "hyper.py", hyperparameters={"rate": 0.1, "kept": 7}),
        "program": ("hyper.py", HYPER_PROGRAM), "parameters": ("p.safetensors", parameters()),
    })  # fmt: skip
    assert status == 201, model
    batch = [{"x": [1.0, 2.0], "y": 3.0}, {"x": [0.0, 1.0], "y": 1.0}]
    cycle = train(server, server.tokens["agent"], {"modelType": "hyper-defaults", "dataBatch": batch,
                                                   "hyperparameters": {"rate": 0.5}})  # fmt: skip
    metrics = cycle["result"]["metrics"]
    assert metrics["rate"] == 0.5 and metrics["kept"] == 7.0, metrics
