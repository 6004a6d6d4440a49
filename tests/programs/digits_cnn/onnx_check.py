"""What the tests compare: the program's ONNX graph run by onnxruntime with a version's
tensors put in place of its initializers, and the same tensors' torch forward pass."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from tests.programs.digits_cnn.digits_cnn import DigitsCNN

PROGRAM = Path(__file__).resolve().with_name("digits_cnn.py")


def onnx_logits(graph: Path, tensors: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    model = onnx.load(str(graph))
    substituted = set()
    for initializer in model.graph.initializer:
        if initializer.name in tensors:
            initializer.CopyFrom(
                numpy_helper.from_array(np.asarray(tensors[initializer.name]), initializer.name)
            )
            substituted.add(initializer.name)
    assert substituted == set(tensors), f"not in the graph: {sorted(set(tensors) - substituted)}"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0]


def torch_logits(tensors: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    import torch

    model = DigitsCNN().eval()
    model.load_state_dict({name: torch.from_numpy(np.array(array)) for name, array in tensors.items()})
    with torch.no_grad():
        return model(torch.from_numpy(x.astype(np.float32))).numpy()


def digits_split(holdout: int = 360, seed: int = 0):
    """scikit-learn's digits scaled to 0-1, shuffled: (x_hold, y_hold), (x_train, y_train)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:holdout], y[:holdout]), (x[holdout:], y[holdout:])
