"""Server-side optimizers that turn an aggregated delta into the next shared model.

Plain (model + lr * delta, FedAvg at lr 1.0), momentum (FedAvgM) and Adam (FedAdam), each keeping its
state across rounds in flat float32 buffers of the model's layout; one fused kernel pass per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import kernels
from .errors import LayoutError, OptionError
from .layout import ModelLayout, tensor_table


def _check_rate(name: str, value: float, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OptionError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bound = "(" if low_open else "["
        raise OptionError(f"{name} must be in {bound}{low}, {high}], got {value!r}")
    return float(value)


class ServerOptimizer:
    """Applies an aggregated delta to the shared model; subclasses hold the per-round state."""

    name = "base"

    def __init__(self) -> None:
        self.layout: ModelLayout | None = None
        self.rounds = 0

    def step(self, model: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The next model (new arrays, views into one flat buffer); ``model`` and ``delta`` stay unchanged."""
        if self.layout is None:
            self.layout = ModelLayout.of(model, "the current model")
            self._allocate_state(self.layout)
        else:
            self.layout.check(model, "the current model")
        self.layout.check(delta, "the aggregated delta")
        layout = self.layout
        model_table = tensor_table(layout, [model])
        delta_table = tensor_table(layout, [delta])
        out = layout.empty_flat()
        block = kernels.STREAM_BLOCK
        chunk_tensor, chunk_start = kernels.chunk_table(model_table.sizes, block)
        self.rounds += 1
        with kernels.launch(layout.num_parameters):
            self._apply(
                (model_table.addresses, delta_table.addresses, model_table.sizes, model_table.offsets),
                (chunk_tensor, chunk_start, block),
                out,
            )
        return layout.unflatten(out)

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters, round count and state buffers (flat float32), enough to resume."""
        return {
            "name": self.name,
            "rounds": self.rounds,
            "hyperparameters": self.hyperparameters(),
            "layout": None
            if self.layout is None
            else {"names": list(self.layout.names), "shapes": [list(s) for s in self.layout.shapes]},
            "buffers": {key: value.copy() for key, value in self._buffers().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name:
            raise OptionError(f"state is for optimizer {state.get('name')!r}, expected {self.name!r}")
        layout_record = state.get("layout")
        if layout_record is None:
            self.layout = None
            self.rounds = int(state["rounds"])
            return
        layout = ModelLayout(tuple(layout_record["names"]), tuple(tuple(s) for s in layout_record["shapes"]))
        self._allocate_state(layout)
        for key, buffer in self._buffers().items():
            saved = np.asarray(state["buffers"][key], dtype=np.float32)
            if saved.shape != buffer.shape:
                raise LayoutError(f"state buffer {key!r} has shape {saved.shape}, expected {buffer.shape}")
            buffer[:] = saved
        self.layout = layout
        self.rounds = int(state["rounds"])

    def hyperparameters(self) -> dict[str, float]:
        raise NotImplementedError

    def _allocate_state(self, layout: ModelLayout) -> None:
        pass

    def _buffers(self) -> dict[str, np.ndarray]:
        return {}

    def _apply(self, tables: tuple, chunks: tuple, out: np.ndarray) -> None:
        raise NotImplementedError


class ServerSGD(ServerOptimizer):
    """model + learning_rate * delta; at learning_rate 1.0 this is plain FedAvg."""

    name = "plain"

    def __init__(self, learning_rate: float = 1.0) -> None:
        super().__init__()
        self.learning_rate = _check_rate("learning_rate", learning_rate, 0.0, math.inf, low_open=True)

    def hyperparameters(self) -> dict[str, float]:
        return {"learning_rate": self.learning_rate}

    def _apply(self, tables: tuple, chunks: tuple, out: np.ndarray) -> None:
        kernels.add_scaled(*tables, *chunks, self.learning_rate, out)


class ServerMomentum(ServerOptimizer):
    """FedAvgM: velocity = momentum * velocity + delta; model + learning_rate * velocity."""

    name = "momentum"

    def __init__(self, learning_rate: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__()
        self.learning_rate = _check_rate("learning_rate", learning_rate, 0.0, math.inf, low_open=True)
        self.momentum = _check_rate("momentum", momentum, 0.0, 1.0)
        self.velocity: np.ndarray | None = None

    def hyperparameters(self) -> dict[str, float]:
        return {"learning_rate": self.learning_rate, "momentum": self.momentum}

    def _allocate_state(self, layout: ModelLayout) -> None:
        self.velocity = np.zeros(layout.num_parameters, dtype=np.float32)

    def _buffers(self) -> dict[str, np.ndarray]:
        return {} if self.velocity is None else {"velocity": self.velocity}

    def _apply(self, tables: tuple, chunks: tuple, out: np.ndarray) -> None:
        kernels.momentum_step(*tables, *chunks, self.learning_rate, self.momentum, self.velocity, out)


class ServerAdam(ServerOptimizer):
    """FedAdam: Adam moments of the delta, step = lr_t * m / (sqrt(v) + tau).

    lr_t = learning_rate * sqrt(1 - beta2^t) / (1 - beta1^t) for step t = 1, 2, ... (Kingma and Ba's
    bias correction; Flower's FedAdam uses the same form with t = server round + 1). Defaults are
    FedAdam's: learning_rate 0.1, beta1 0.9, beta2 0.99, tau 1e-9.
    """

    name = "adam"

    def __init__(
        self, learning_rate: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-9
    ) -> None:
        super().__init__()
        self.learning_rate = _check_rate("learning_rate", learning_rate, 0.0, math.inf, low_open=True)
        self.beta1 = _check_rate("beta1", beta1, 0.0, 1.0)
        self.beta2 = _check_rate("beta2", beta2, 0.0, 1.0)
        self.tau = _check_rate("tau", tau, 0.0, math.inf, low_open=True)
        self.first_moment: np.ndarray | None = None
        self.second_moment: np.ndarray | None = None

    def hyperparameters(self) -> dict[str, float]:
        return {
            "learning_rate": self.learning_rate,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
        }

    def _allocate_state(self, layout: ModelLayout) -> None:
        self.first_moment = np.zeros(layout.num_parameters, dtype=np.float32)
        self.second_moment = np.zeros(layout.num_parameters, dtype=np.float32)

    def _buffers(self) -> dict[str, np.ndarray]:
        if self.first_moment is None or self.second_moment is None:
            return {}
        return {"first_moment": self.first_moment, "second_moment": self.second_moment}

    def _apply(self, tables: tuple, chunks: tuple, out: np.ndarray) -> None:
        t = self.rounds
        rate = (
            self.learning_rate * math.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
            if self.beta1 < 1.0
            else self.learning_rate
        )
        kernels.adam_step(
            *tables,
            *chunks,
            rate,
            self.beta1,
            self.beta2,
            self.tau,
            self.first_moment,
            self.second_moment,
            out,
        )


OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    "plain": ServerSGD,
    "momentum": ServerMomentum,
    "adam": ServerAdam,
}


def make_optimizer(name: str, **hyperparameters: float) -> ServerOptimizer:
    """A server optimizer by name: "plain", "momentum" (FedAvgM) or "adam" (FedAdam)."""
    if name not in OPTIMIZERS:
        raise OptionError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
    try:
        return OPTIMIZERS[name](**hyperparameters)
    except TypeError as exc:
        raise OptionError(f"optimizer {name!r}: {exc}") from None
