"""The model families a learn cycle trains, in plain numpy so the same code runs inside
the sandbox (numpy only) and in the service (evaluation, validation, ONNX export).

Parameters are named float32 tensors: `layerN.weight` [in, out] and `layerN.bias` [out]."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

FAMILIES = ("linear", "logistic", "softmax", "mlp")


@dataclass(frozen=True)
class Signature:
    """What fixes a shared model's shape: the family and its dimensions."""

    family: str
    input_dim: int
    num_classes: int  # 1 for linear/logistic outputs
    hidden: tuple[int, ...] = field(default_factory=tuple)

    def layer_sizes(self) -> list[int]:
        return [self.input_dim, *self.hidden, self.output_dim]

    @property
    def output_dim(self) -> int:
        return 1 if self.family in ("linear", "logistic") else self.num_classes

    def as_dict(self) -> dict:
        return {
            "family": self.family,
            "inputDim": self.input_dim,
            "numClasses": self.num_classes,
            "hidden": list(self.hidden),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Signature:
        return cls(
            data["family"], int(data["inputDim"]), int(data["numClasses"]), tuple(data.get("hidden", ()))
        )

    def differences(self, other: Signature) -> list[str]:
        mine, theirs = self.as_dict(), other.as_dict()
        return [
            f"{key} is {theirs[key]!r}, the model has {mine[key]!r}"
            for key in mine
            if mine[key] != theirs[key]
        ]


def tensor_names(signature: Signature) -> list[str]:
    names = []
    for index in range(len(signature.layer_sizes()) - 1):
        names += [f"layer{index}.weight", f"layer{index}.bias"]
    return names


def initial_parameters(signature: Signature, model_name: str) -> dict[str, np.ndarray]:
    """Version 0: He-initialised weights and zero biases from a seed derived from the
    model's name and signature, so it is the same on every host."""
    digest = hashlib.sha256(f"{model_name}|{sorted(signature.as_dict().items())}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    sizes = signature.layer_sizes()
    params = {}
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        scale = np.sqrt(2.0 / fan_in) if signature.family == "mlp" else np.sqrt(1.0 / fan_in)
        params[f"layer{index}.weight"] = (rng.standard_normal((fan_in, fan_out)) * scale).astype(np.float32)
        params[f"layer{index}.bias"] = np.zeros(fan_out, dtype=np.float32)
    return params


def forward(signature: Signature, params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list]:
    """Outputs (regression values, probabilities) and the activations backprop needs."""
    activations = [x]
    h = x
    layers = len(signature.layer_sizes()) - 1
    for index in range(layers):
        z = h @ params[f"layer{index}.weight"] + params[f"layer{index}.bias"]
        if index < layers - 1:
            h = np.maximum(z, 0.0)
            activations.append(h)
        else:
            h = z
    if signature.family == "logistic":
        out = 1.0 / (1.0 + np.exp(-np.clip(h, -60, 60)))
    elif signature.family in ("softmax", "mlp"):
        shifted = h - h.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        out = exp / exp.sum(axis=1, keepdims=True)
    else:
        out = h
    return out, activations


def predict(signature: Signature, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return forward(signature, params, x)[0]


def loss_and_accuracy(signature: Signature, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray):
    """Loss (MSE, binary or categorical cross-entropy) and accuracy; for `linear` the
    accuracy is the coefficient of determination R² (clipped at 0)."""
    out, _ = forward(signature, params, x)
    return _loss_and_accuracy(signature, out, y)


def _loss_and_accuracy(signature: Signature, out: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    eps = 1e-7
    if signature.family == "linear":
        residual = out[:, 0] - y
        loss = float(np.mean(residual**2))
        variance = float(np.var(y))
        accuracy = max(0.0, 1.0 - loss / variance) if variance > 0 else float(loss < 1e-12)
        return loss, accuracy
    if signature.family == "logistic":
        p = np.clip(out[:, 0], eps, 1 - eps)
        loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        return loss, float(np.mean((p >= 0.5) == (y >= 0.5)))
    labels = y.astype(np.int64)
    p = np.clip(out[np.arange(len(labels)), labels], eps, 1.0)
    return float(-np.mean(np.log(p))), float(np.mean(out.argmax(axis=1) == labels))


def gradients(signature: Signature, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict:
    out, activations = forward(signature, params, x)
    n = len(x)
    if signature.family == "linear":
        delta = (2.0 / n) * (out - y.reshape(-1, 1))
    elif signature.family == "logistic":
        delta = (out - y.reshape(-1, 1)) / n
    else:
        delta = out.copy()
        delta[np.arange(n), y.astype(np.int64)] -= 1.0
        delta /= n
    grads = {}
    layers = len(signature.layer_sizes()) - 1
    for index in reversed(range(layers)):
        grads[f"layer{index}.weight"] = activations[index].T @ delta
        grads[f"layer{index}.bias"] = delta.sum(axis=0)
        if index > 0:
            delta = (delta @ params[f"layer{index}.weight"].T) * (activations[index] > 0)
    return grads


def train(
    signature: Signature,
    base: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    seed: int,
    on_epoch=None,
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Mini-batch SGD from `base`; deterministic for a given seed. Returns the trained
    parameters and the loss/accuracy of every epoch (over the whole batch)."""
    rng = np.random.default_rng(seed)
    params = {name: value.astype(np.float32).copy() for name, value in base.items()}
    x = x.astype(np.float32)
    y = y.astype(np.float32)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            for name, grad in gradients(signature, params, x[index], y[index]).items():
                params[name] -= np.float32(learning_rate) * grad.astype(np.float32)
        loss, accuracy = loss_and_accuracy(signature, params, x, y)
        history.append({"epoch": epoch + 1, "loss": loss, "accuracy": accuracy})
        if on_epoch is not None:
            on_epoch(history[-1])
    return params, history


def save(path, params: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **params)


def load(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
