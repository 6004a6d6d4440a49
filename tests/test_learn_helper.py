"""The in-sandbox helper (rootfs/wondercraft_learn.py), run outside a sandbox with its paths
moved by WONDERCRAFT_LEARN_ROOT: a numpy program and a duck-typed Flower NumPyClient train
from /model and /data, and what they write passes the service's own output checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from server.artifacts import outputs, tensors

REPO = Path(__file__).resolve().parent.parent
HELPER = REPO / "rootfs" / "wondercraft_learn.py"
# The model's own order, not the names' sorted order: Flower's parameter list follows it.
BASE = {"fc.weight": np.zeros((3, 1), np.float32), "fc.bias": np.zeros(1, np.float32)}
EXPECTED = {name: array.shape for name, array in BASE.items()}
JOB = {
    "learningRate": 0.1,
    "batchSize": 8,
    "epochs": 40,
    "seed": 3,
    "numSamples": 64,
    "hyperparameters": {"l2": 0.0, "tag": "x", "nested": {"no": 1}},
}


@pytest.fixture
def learn_root(tmp_path):
    """A sandbox's view laid out under one directory, as the service would lay it out."""
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    tensors.write_tensors(tmp_path / "model" / "base.safetensors", BASE)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = (x @ np.array([[1.5], [-2.0], [0.5]], np.float32) + 0.25).astype(np.float32)
    np.savez(tmp_path / "data" / "batch.npz", x=x, y=y)
    (tmp_path / "job.json").write_text(json.dumps(JOB))
    return tmp_path


def run(learn_root: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {
        "WONDERCRAFT_LEARN_ROOT": str(learn_root),
        "PYTHONPATH": str(REPO / "rootfs"),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=120)


NUMPY_PROGRAM = """
import numpy as np
import wondercraft_learn as wl

job = wl.job()
base = wl.read_base()
data = wl.read_data()
x, y = data["x"], data["y"]
w, b = base["fc.weight"].copy(), base["fc.bias"].copy()
for epoch in range(job["epochs"]):
    error = x @ w + b - y
    w -= job["learningRate"] * x.T @ error / len(x)
    b -= job["learningRate"] * error.mean(axis=0)
    wl.report(epoch + 1, float((error ** 2).mean()))
wl.write_deltas({"fc.weight": w - base["fc.weight"], "fc.bias": b - base["fc.bias"]})
wl.write_metrics(len(x), loss=float(((x @ w + b - y) ** 2).mean()), accuracy=None, epochs=job["epochs"])
"""


def test_a_numpy_program_trains_and_its_outputs_pass_the_service_checks(learn_root):
    program = learn_root / "train.py"
    program.write_text(NUMPY_PROGRAM)
    done = run(learn_root, str(program))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == JOB["epochs"]
    assert lines[0]["progress"]["epoch"] == 1 and lines[0]["progress"]["epochs"] == JOB["epochs"]
    assert lines[-1]["progress"]["loss"] < lines[0]["progress"]["loss"] / 10
    result = outputs.read_outputs(learn_root / "out", EXPECTED)
    assert result.num_samples == 64 and result.metrics["epochs"] == 40
    assert result.metrics["loss"] < lines[0]["progress"]["loss"] / 10
    np.testing.assert_allclose(result.deltas["fc.weight"][:, 0], [1.5, -2.0, 0.5], atol=0.3)


FLOWER_CLIENT = """
import numpy as np


class LinearClient:
    '''Flower's NumPyClient shape, duck-typed: fit(parameters, config) -> (parameters, n, metrics).'''

    def __init__(self):
        import wondercraft_learn as wl

        data = wl.read_data()
        self.x, self.y = data["x"], data["y"]
        self.seen = None

    def fit(self, parameters, config):
        self.seen = ([p.shape for p in parameters], dict(config))
        weight, bias = parameters  # the model's order: fc.weight, then fc.bias
        for _ in range(int(config["epochs"])):
            error = self.x @ weight + bias - self.y
            weight = weight - config["learningRate"] * self.x.T @ error / len(self.x)
            bias = bias - config["learningRate"] * error.mean(axis=0)
        loss = float(((self.x @ weight + bias - self.y) ** 2).mean())
        with open(__file__ + ".seen.json", "w") as handle:
            import json
            json.dump({"shapes": [list(s) for s in self.seen[0]], "config": self.seen[1]}, handle)
        return [weight, bias], len(self.x), {"loss": loss, "note": "strings are dropped", "flag": True}


def client_fn():
    return LinearClient()
"""


def test_a_flower_numpy_client_runs_unchanged_through_the_adapter(learn_root):
    client = learn_root / "client.py"
    client.write_text(FLOWER_CLIENT)
    done = run(learn_root, str(HELPER), "flower", f"{client}:client_fn")
    assert done.returncode == 0, done.stderr
    seen = json.loads((learn_root / "client.py.seen.json").read_text())
    assert seen["shapes"] == [[3, 1], [1]]  # the base's order, not sorted (fc.bias < fc.weight)
    assert seen["config"] == {
        "l2": 0.0,
        "tag": "x",
        "learningRate": 0.1,
        "batchSize": 8,
        "epochs": 40,
        "seed": 3,
        "numSamples": 64,
    }
    result = outputs.read_outputs(learn_root / "out", EXPECTED)
    assert result.num_samples == 64 and set(result.metrics) == {"numSamples", "loss"}
    np.testing.assert_allclose(result.deltas["fc.weight"][:, 0], [1.5, -2.0, 0.5], atol=0.3)


def test_the_adapter_refuses_a_client_returning_the_wrong_number_of_arrays(learn_root, monkeypatch):
    monkeypatch.setenv("WONDERCRAFT_LEARN_ROOT", str(learn_root))
    from rootfs import wondercraft_learn as wl

    class Wrong:
        def fit(self, parameters, config):
            return parameters[:1], 10, {}

    with pytest.raises(wl.ContractError, match="fit returned 1 arrays; the model has 2"):
        wl.run_numpy_client(Wrong())
    assert not (learn_root / "out" / "deltas.safetensors").exists()


def test_the_adapter_takes_the_clients_own_order(learn_root, monkeypatch):
    monkeypatch.setenv("WONDERCRAFT_LEARN_ROOT", str(learn_root))
    from rootfs import wondercraft_learn as wl

    class Shifter:
        def fit(self, parameters, config):
            bias, weight = parameters
            return [bias + 1, weight + 2], 5, {}

    wl.run_numpy_client(Shifter(), names=["fc.bias", "fc.weight"])
    result = outputs.read_outputs(learn_root / "out", EXPECTED)
    np.testing.assert_array_equal(result.deltas["fc.bias"], [1.0])
    np.testing.assert_array_equal(result.deltas["fc.weight"], np.full((3, 1), 2.0, np.float32))


def test_write_deltas_names_a_mistake_at_once(learn_root, monkeypatch):
    monkeypatch.setenv("WONDERCRAFT_LEARN_ROOT", str(learn_root))
    from rootfs import wondercraft_learn as wl

    with pytest.raises(wl.ContractError, match=r"missing \['fc.bias'\]"):
        wl.write_deltas({"fc.weight": np.zeros((3, 1))})
    with pytest.raises(wl.ContractError, match="'fc.weight' has shape \\[1, 3\\]"):
        wl.write_deltas({"fc.weight": np.zeros((1, 3)), "fc.bias": np.zeros(1)})
    with pytest.raises(wl.ContractError, match="non-finite"):
        wl.write_deltas({"fc.weight": np.full((3, 1), np.nan), "fc.bias": np.zeros(1)})
    with pytest.raises(wl.ContractError, match="positive integer"):
        wl.write_metrics(0)
    # float64 deltas are written as float32, which the service requires.
    wl.write_deltas({"fc.weight": np.ones((3, 1)), "fc.bias": np.zeros(1)})
    assert (
        outputs.read_deltas(learn_root / "out" / "deltas.safetensors", EXPECTED)["fc.weight"].dtype
        == np.float32
    )


def test_read_data_merges_npz_and_safetensors_and_never_unpickles(learn_root, monkeypatch):
    monkeypatch.setenv("WONDERCRAFT_LEARN_ROOT", str(learn_root))
    from rootfs import wondercraft_learn as wl

    (learn_root / "data" / "extra.safetensors").write_bytes(
        safetensors.numpy.save({"w": np.ones(64, np.float32)})
    )
    assert sorted(wl.read_data()) == ["w", "x", "y"]
    np.savez(learn_root / "data" / "evil.npz", z=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        wl.read_data()


def test_read_base_keeps_the_models_order_and_is_writable(learn_root, monkeypatch):
    monkeypatch.setenv("WONDERCRAFT_LEARN_ROOT", str(learn_root))
    from rootfs import wondercraft_learn as wl

    base = wl.read_base()
    assert list(base) == ["fc.weight", "fc.bias"]
    base["fc.bias"] += 1  # trained in place without a copy


TORCH_PROGRAM = """
import torch
import wondercraft_learn as wl

job = wl.job()
torch.manual_seed(job["seed"])
base = wl.read_base()
data = wl.read_data()
x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
model = torch.nn.Linear(3, 1)
# The base's names are a state_dict's: fc.weight is (3, 1) here, Linear's weight is (1, 3).
# torch.from_numpy shares the arrays' memory: training changes them in place.
model.weight.data = torch.from_numpy(base["fc.weight"]).T.contiguous()
model.bias.data = torch.from_numpy(base["fc.bias"])
optimiser = torch.optim.SGD(model.parameters(), lr=job["learningRate"])
for epoch in range(job["epochs"]):
    optimiser.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimiser.step()
    wl.report(epoch + 1, loss.item())
trained = {"fc.weight": model.weight.detach().T.numpy(), "fc.bias": model.bias.detach().numpy()}
# write_trained takes the deltas against the base read afresh, so the sharing above is harmless.
wl.write_trained(trained)
wl.write_metrics(len(x), loss=loss.item())
"""


def test_a_pytorch_program_writes_outputs_the_service_accepts(learn_root):
    pytest.importorskip("torch", reason="the torch extra (make install installs it)")
    program = learn_root / "train_torch.py"
    program.write_text(TORCH_PROGRAM)
    done = run(learn_root, str(program))
    assert done.returncode == 0, done.stderr
    result = outputs.read_outputs(learn_root / "out", EXPECTED)
    assert result.num_samples == 64
    np.testing.assert_allclose(result.deltas["fc.weight"][:, 0], [1.5, -2.0, 0.5], atol=0.3)
