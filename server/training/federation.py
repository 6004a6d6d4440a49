"""The robust and private parts of a model's round policy: how its updates are combined
(aggregation method and options, the bias rule), the server optimizer that applies the result,
how each update is screened before it counts, and client-level differential privacy.

Each part is a frozen record read from camelCase JSON (fields left out keep the current value),
checked with a ValueError naming the field, and written back with every field filled in."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import aggregation
from aggregation.screening import ScreeningRule
from aggregation.strategies import KRUM_METHODS, METHODS, resolve_options

OPTIMIZERS = {"plain": "plain", "fedavgm": "momentum", "fedadam": "adam"}
# Each optimizer's hyperparameters as the API spells them, and the optimizer class's names.
_HYPER = {
    "plain": {"learningRate": "learning_rate"},
    "fedavgm": {"learningRate": "learning_rate", "momentum": "momentum"},
    "fedadam": {"learningRate": "learning_rate", "beta1": "beta1", "beta2": "beta2", "tau": "tau"},
}
EPSILON_MAX = 100.0
PLANNED_ROUNDS_MAX = 100000


def _number(body: dict, key: str, field: str, current: Any) -> Any:
    if key not in body:
        return current
    value = body[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field}.{key} must be a finite number, got {value!r}")
    return value


def _object(body: Any, field: str) -> dict:
    if not isinstance(body, dict):
        raise ValueError(f"{field} must be an object, got {body!r}")
    return body


@dataclass(frozen=True)
class AggregationChoice:
    method: str = "fedavg"
    bias_method: str | None = None  # None: bias tensors take `method` too
    beta: float | None = None  # trimmed_mean: share cut from each end
    f: int | None = None  # krum / multi_krum: clients assumed malicious
    m: int | None = None  # multi_krum: updates kept

    def updated(self, body: Any) -> AggregationChoice:
        body = _object(body, "roundPolicy.aggregation")
        field = "roundPolicy.aggregation"
        method = body.get("method", self.method)
        # A new method drops options that belonged to the old one.
        base = self if method == self.method else AggregationChoice(method)
        return replace(
            base,
            method=method,
            bias_method=body.get("biasMethod", base.bias_method),
            beta=_number(body, "beta", field, base.beta),
            f=_number(body, "f", field, base.f),
            m=_number(body, "m", field, base.m),
        )

    def check(self, min_clients: int | None) -> None:
        field = "roundPolicy.aggregation"
        if self.method not in METHODS:
            raise ValueError(f"{field}.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.bias_method is not None and self.bias_method not in METHODS:
            raise ValueError(
                f"{field}.biasMethod must be one of {', '.join(METHODS)} or null, got {self.bias_method!r}"
            )
        for key in ("f", "m"):
            value = getattr(self, key)
            if value is not None and not float(value).is_integer():
                raise ValueError(f"{field}.{key} must be an integer, got {value!r}")
        in_use = {self.method, self.bias_method or self.method}
        f = int(self.f or 0)
        # Checked against the fewest updates a round may close with: krum needs 2f + 3.
        clients = min_clients if min_clients is not None else 2 * f + 3
        if in_use & set(KRUM_METHODS) and clients < 2 * f + 3:
            raise ValueError(
                f"{field}: krum with f={f} needs at least 2f+3 = {2 * f + 3} updates a round, but "
                f"roundPolicy.minClients is {min_clients}"
            )
        try:
            resolve_options(
                max(clients, 2 * f + 3), self.method, self.bias_method, None, None, None, self.beta,
                None if self.f is None else int(self.f), None if self.m is None else int(self.m),
            )  # fmt: skip
        except aggregation.OptionError as exc:
            raise ValueError(f"{field}: {exc}") from None

    def kwargs(self) -> dict[str, Any]:
        return {
            "bias_method": self.bias_method,
            "beta": self.beta,
            "f": None if self.f is None else int(self.f),
            "m": None if self.m is None else int(self.m),
        }

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "biasMethod": self.bias_method, "beta": self.beta, "f": self.f,
                "m": self.m}  # fmt: skip


@dataclass(frozen=True)
class OptimizerChoice:
    name: str = "plain"
    options: tuple[tuple[str, float], ...] = ()  # API names; absent ones take the optimizer's defaults

    def updated(self, body: Any) -> OptimizerChoice:
        body = _object(body, "roundPolicy.serverOptimizer")
        name = body.get("name", self.name)
        known = dict(self.options) if name == self.name else {}
        for key in body:
            if key != "name":
                known[key] = _number(body, key, "roundPolicy.serverOptimizer", None)
        return OptimizerChoice(name, tuple(sorted((k, v) for k, v in known.items() if v is not None)))

    def check(self) -> None:
        field = "roundPolicy.serverOptimizer"
        if self.name not in OPTIMIZERS:
            raise ValueError(f"{field}.name must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        allowed = _HYPER[self.name]
        for key, _ in self.options:
            if key not in allowed:
                raise ValueError(
                    f"{field}.{key} does not apply to {self.name} (it takes {', '.join(allowed)})"
                )
        try:
            self.make()
        except aggregation.OptionError as exc:
            raise ValueError(f"{field}: {exc}") from None

    def make(self) -> aggregation.ServerOptimizer:
        names = _HYPER[self.name]
        return aggregation.make_optimizer(
            OPTIMIZERS[self.name], **{names[k]: float(v) for k, v in self.options}
        )

    def as_json(self) -> dict[str, Any]:
        filled = self.make().hyperparameters()
        api = {python: key for key, python in _HYPER[self.name].items()}
        return {"name": self.name, **{api[k]: v for k, v in filled.items()}}


@dataclass(frozen=True)
class Screening:
    enabled: bool = True
    max_norm: float | None = None
    norm_ratio: float | None = 10.0
    min_cosine: float | None = 0.0
    min_updates: int = 3

    def updated(self, body: Any) -> Screening:
        body = _object(body, "roundPolicy.screening")
        field = "roundPolicy.screening"
        enabled = body.get("enabled", self.enabled)
        if not isinstance(enabled, bool):
            raise ValueError(f"{field}.enabled must be true or false, got {enabled!r}")
        return replace(
            self,
            enabled=enabled,
            max_norm=_number(body, "maxNorm", field, self.max_norm),
            norm_ratio=_number(body, "normRatio", field, self.norm_ratio),
            min_cosine=_number(body, "minCosine", field, self.min_cosine),
            min_updates=_number(body, "minUpdates", field, self.min_updates),
        )

    def check(self) -> None:
        field = "roundPolicy.screening"
        if self.max_norm is not None and not self.max_norm > 0:
            raise ValueError(f"{field}.maxNorm must be above 0 or null, got {self.max_norm!r}")
        if self.norm_ratio is not None and not self.norm_ratio >= 1:
            raise ValueError(f"{field}.normRatio must be at least 1 or null, got {self.norm_ratio!r}")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise ValueError(f"{field}.minCosine must be -1..1 or null, got {self.min_cosine!r}")
        if (
            self.min_updates is None
            or not float(self.min_updates).is_integer()
            or not 2 <= self.min_updates <= 1000
        ):
            raise ValueError(f"{field}.minUpdates must be an integer 2..1000, got {self.min_updates!r}")

    def rule(self) -> ScreeningRule:
        return ScreeningRule(self.max_norm, self.norm_ratio, self.min_cosine, int(self.min_updates))

    def as_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "maxNorm": self.max_norm, "normRatio": self.norm_ratio,
                "minCosine": self.min_cosine, "minUpdates": int(self.min_updates)}  # fmt: skip


@dataclass(frozen=True)
class Privacy:
    """Client-level DP: each update clipped to clip_norm, Gaussian noise on the aggregate with the
    noise multiplier that spends target_epsilon over planned_rounds (at delta)."""

    target_epsilon: float
    delta: float
    planned_rounds: int
    clip_norm: float

    @staticmethod
    def from_json(body: Any) -> Privacy | None:
        if body is None:
            return None
        body = _object(body, "roundPolicy.privacy")
        field = "roundPolicy.privacy"
        missing = [k for k in ("targetEpsilon", "plannedRounds", "clipNorm") if k not in body]
        if missing:
            raise ValueError(f"{field}.{missing[0]} is required")
        unknown = sorted(
            set(body) - {"targetEpsilon", "delta", "plannedRounds", "clipNorm", "noiseMultiplier"}
        )
        if unknown:
            raise ValueError(f"{field}.{unknown[0]} is not a privacy setting")
        values = {
            k: _number(body, k, field, None) for k in ("targetEpsilon", "delta", "plannedRounds", "clipNorm")
        }
        delta = 1e-5 if values["delta"] is None else values["delta"]
        return Privacy(values["targetEpsilon"], delta, values["plannedRounds"], values["clipNorm"])

    def check(self, method: str) -> None:
        field = "roundPolicy.privacy"
        if self.target_epsilon is None or not 0 < self.target_epsilon <= EPSILON_MAX:
            raise ValueError(f"{field}.targetEpsilon must be above 0 and at most {EPSILON_MAX:g}, "
                             f"got {self.target_epsilon!r}")  # fmt: skip
        if not 0 < self.delta < 1:
            raise ValueError(f"{field}.delta must be between 0 and 1 (exclusive), got {self.delta!r}")
        rounds = self.planned_rounds
        if rounds is None or not float(rounds).is_integer() or not 1 <= rounds <= PLANNED_ROUNDS_MAX:
            raise ValueError(
                f"{field}.plannedRounds must be an integer 1..{PLANNED_ROUNDS_MAX}, got {rounds!r}"
            )
        if self.clip_norm is None or not self.clip_norm > 0:
            raise ValueError(f"{field}.clipNorm must be above 0, got {self.clip_norm!r}")
        if method != "fedavg":
            raise ValueError(
                f"{field} needs roundPolicy.aggregation.method fedavg (the noise is calibrated to the "
                f"mean of clipped updates), got {method}"
            )

    @property
    def noise_multiplier(self) -> float:
        from . import privacy

        return privacy.noise_multiplier(self.target_epsilon, self.delta, int(self.planned_rounds))

    def as_json(self) -> dict[str, Any]:
        return {"targetEpsilon": self.target_epsilon, "delta": self.delta,
                "plannedRounds": int(self.planned_rounds), "clipNorm": self.clip_norm,
                "noiseMultiplier": self.noise_multiplier}  # fmt: skip
