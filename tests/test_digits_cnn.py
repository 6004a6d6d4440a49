"""The PyTorch digits CNN (tests/programs/digits_cnn) as a learn program, run outside a
sandbox with its paths moved by WONDERCRAFT_LEARN_ROOT: its export gives version 0 and an ONNX
graph named like the state_dict, it trains, what it writes passes the service's own output
checks, and the graph with the trained tensors substituted computes what torch computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

pytest.importorskip("torch", reason="the torch extra (make install installs it)")

from server.artifacts import outputs  # noqa: E402
from tests.programs.digits_cnn import onnx_check  # noqa: E402
from tests.programs.digits_cnn.digits_cnn import export  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
JOB = {
    "learningRate": 0.05,
    "batchSize": 32,
    "epochs": 4,
    "seed": 7,
    "numSamples": 600,
    "hyperparameters": {},
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return export(tmp_path_factory.mktemp("digits-cnn-artifacts"))


@pytest.fixture
def learn_root(tmp_path, artifacts):
    parameters, _ = artifacts
    for folder in ("model", "data", "out"):
        (tmp_path / folder).mkdir()
    (tmp_path / "model" / "base.safetensors").write_bytes(parameters.read_bytes())
    _, (x, y) = onnx_check.digits_split()
    np.savez(tmp_path / "data" / "data.npz", x=x[:600], y=y[:600])
    (tmp_path / "job.json").write_text(json.dumps(JOB))
    return tmp_path


def test_export_names_every_initializer_after_the_state_dict(artifacts):
    import onnx

    parameters, graph = artifacts
    base = safetensors.numpy.load_file(str(parameters))
    assert sorted(base) == [
        "conv1.bias",
        "conv1.weight",
        "conv2.bias",
        "conv2.weight",
        "fc.bias",
        "fc.weight",
    ]
    assert all(array.dtype == np.float32 for array in base.values())
    initializers = {i.name: tuple(i.dims) for i in onnx.load(str(graph)).graph.initializer}
    assert {name: initializers[name] for name in base} == {name: a.shape for name, a in base.items()}
    with safetensors.safe_open(str(parameters), framework="np") as handle:
        assert json.loads(handle.metadata()["tensor_order"])[:2] == ["conv1.weight", "conv1.bias"]


def test_the_cnn_trains_and_onnx_with_its_trained_weights_equals_torch(learn_root, artifacts):
    parameters, graph = artifacts
    env = {
        "WONDERCRAFT_LEARN_ROOT": str(learn_root),
        "PYTHONPATH": str(REPO / "rootfs"),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, str(onnx_check.PROGRAM)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    progress = [json.loads(line)["progress"] for line in done.stderr.splitlines()]
    assert [p["epoch"] for p in progress] == [1, 2, 3, 4] and progress[-1]["epochs"] == 4
    base = safetensors.numpy.load_file(str(parameters))
    result = outputs.read_outputs(learn_root / "out", {name: a.shape for name, a in base.items()})
    assert result.num_samples == 600 and result.metrics["cudaDevices"] == 0
    assert result.metrics["accuracy"] > 0.85 and result.metrics["loss"] < progress[0]["loss"]
    trained = {name: base[name] + result.deltas[name] for name in base}
    (x_hold, y_hold), _ = onnx_check.digits_split()
    from_onnx = onnx_check.onnx_logits(graph, trained, x_hold)
    from_torch = onnx_check.torch_logits(trained, x_hold)
    np.testing.assert_allclose(from_onnx, from_torch, atol=1e-4, rtol=0)
    assert (from_onnx.argmax(1) == y_hold).mean() > 0.85
    # The untrained graph computes something else: the substitution is what changed it.
    assert not np.allclose(onnx_check.onnx_logits(graph, base, x_hold), from_onnx, atol=1e-2)


def test_the_readme_carries_the_program_verbatim():
    """The README's PyTorch example is this program, so a copy of it is the tested one."""
    readme = (REPO / "README.md").read_text()
    assert onnx_check.PROGRAM.read_text() in readme
