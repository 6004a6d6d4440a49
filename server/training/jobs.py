"""Checking a training job or a model definition before anything is stored: the model's name
and signature, the data batch item by item, the caps; and the job description the learn cycle
reads. Everything here is plain and blocking-free except check_batch (run it off the loop)."""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np

from rootfs import models

from ..config import Settings
from ..errors import BadRequest, Conflict
from ..sandboxes import caps_within_limits
from ..vocabulary import FAMILY_MODEL_NAME, MODEL_NAME, MODEL_NAME_RULE, ModelFamily
from .caps import LEARN_CYCLE_MEMORY_MB_MIN

DEFAULT_HIDDEN = (32,)
SINGLE_OUTPUT = (ModelFamily.LINEAR, ModelFamily.LOGISTIC)


def parse_model_type(model_type: str) -> tuple[ModelFamily | None, str]:
    """(family, shared model name): `mlp:digits` -> (mlp, "mlp:digits"); a model with its own
    program has no family: `digits-cnn` -> (None, "digits-cnn")."""
    if not MODEL_NAME.match(model_type):
        raise BadRequest(f"modelType must be {MODEL_NAME_RULE}, got {model_type[:80]!r}")
    family = FAMILY_MODEL_NAME.match(model_type)
    return (ModelFamily(family.group(1)) if family else None), model_type


def model_signature(settings: Settings, family: ModelFamily, config: dict) -> models.Signature:
    """A new model's signature from its modelConfig (an explicit definition)."""
    if "inputDim" not in config:
        raise BadRequest("modelConfig.inputDim is required to create a model")
    if family not in SINGLE_OUTPUT and "numClasses" not in config:
        raise BadRequest(f"modelConfig.numClasses is required for {family} models")
    return _signature(settings, family, config, int(config["inputDim"]), int(config.get("numClasses", 1)))


def job_signature(
    settings: Settings, family: ModelFamily, body: dict, existing: models.Signature | None
) -> models.Signature:
    """The signature a job implies: its modelConfig, else the model's, else its data's shape."""
    config = body.get("modelConfig") or {}
    items = body["dataBatch"]
    width = len(items[0]["x"])
    if existing is not None and not config:
        # The data's width is compared with the model's: a mismatch is a 409.
        return models.Signature(family, width, existing.num_classes, existing.hidden)
    if family in SINGLE_OUTPUT:
        num_classes = int(config.get("numClasses", 1))
    elif "numClasses" in config:
        num_classes = int(config["numClasses"])
    elif existing is not None:
        num_classes = existing.num_classes
    else:
        num_classes = int(max(item["y"] for item in items)) + 1
    if family == ModelFamily.MLP and "hidden" not in config and existing is not None:
        config = {**config, "hidden": list(existing.hidden)}
    return _signature(settings, family, config, int(config.get("inputDim", width)), num_classes)


def _signature(
    settings: Settings, family: ModelFamily, config: dict, input_dim: int, num_classes: int
) -> models.Signature:
    hidden: tuple[int, ...] = ()
    if family == ModelFamily.MLP:
        hidden = tuple(int(h) for h in config.get("hidden", DEFAULT_HIDDEN))
    elif config.get("hidden"):
        raise BadRequest(f"modelConfig.hidden applies to mlp models only, not {family}")
    if family not in SINGLE_OUTPUT and num_classes < 2:
        raise BadRequest(f"modelConfig.numClasses must be at least 2 for {family}, got {num_classes}")
    if family in SINGLE_OUTPUT and num_classes != 1:
        raise BadRequest(f"modelConfig.numClasses must be 1 for {family}, got {num_classes}")
    signature = models.Signature(str(family), input_dim, num_classes, hidden)
    sizes = signature.layer_sizes()
    parameters = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    if parameters > settings.petals_max_model_parameters:
        raise BadRequest(
            f"modelConfig describes {parameters} parameters, above PETALS_MAX_MODEL_PARAMETERS "
            f"({settings.petals_max_model_parameters})"
        )
    return signature


def check_same_signature(name: str, existing: models.Signature, wanted: models.Signature) -> None:
    differences = existing.differences(wanted)
    if differences:
        raise Conflict(
            f"model {name!r} already exists with another signature: " + "; ".join(differences),
            details={"signature": existing.as_dict()},
        )


def check_batch(signature: models.Signature, items: list) -> tuple[np.ndarray, np.ndarray]:
    """The data batch as arrays; the first bad item is named. Blocking: thousands of items
    take tens of milliseconds."""
    if not items:
        raise BadRequest("dataBatch must hold at least one item")
    xs = np.empty((len(items), signature.input_dim), dtype=np.float32)
    ys = np.empty(len(items), dtype=np.float32)
    for index, item in enumerate(items):
        x, y = item.get("x"), item.get("y")
        if not isinstance(x, list) or len(x) != signature.input_dim:
            got = len(x) if isinstance(x, list) else type(x).__name__
            raise BadRequest(
                f"dataBatch[{index}].x must be a list of {signature.input_dim} numbers, got {got}"
            )
        row = np.asarray(x, dtype=np.float64) if all(is_number(v) for v in x) else None
        if row is None or not np.isfinite(row).all() or np.abs(row).max(initial=0) > 3.0e38:
            raise BadRequest(f"dataBatch[{index}].x must hold finite float32 numbers")
        if not is_number(y) or not math.isfinite(float(y)):
            raise BadRequest(f"dataBatch[{index}].y must be a finite number, got {y!r}")
        label = float(y)
        if signature.family == ModelFamily.LOGISTIC and label not in (0.0, 1.0):
            raise BadRequest(f"dataBatch[{index}].y must be 0 or 1 for logistic models, got {y!r}")
        if signature.family not in SINGLE_OUTPUT and (
            not label.is_integer() or not 0 <= label < signature.num_classes
        ):
            raise BadRequest(
                f"dataBatch[{index}].y must be a class label 0..{signature.num_classes - 1}, got {y!r}"
            )
        xs[index] = row
        ys[index] = label
    return xs, ys


def check_shape(body: dict) -> None:
    """What must hold before the signature can be worked out."""
    items = body["dataBatch"]
    if not items:
        raise BadRequest("dataBatch must hold at least one item")
    first = items[0] if isinstance(items[0], dict) else {}
    if not isinstance(first.get("x"), list):
        raise BadRequest("dataBatch[0].x must be a list of numbers")


def check_rows(items: list) -> tuple[np.ndarray, np.ndarray]:
    """A dataBatch for a model with its own program: rows of finite numbers of one width, and
    a number per row; the first bad item is named."""
    if not items:
        raise BadRequest("dataBatch must hold at least one item")
    width = len(items[0].get("x") or [])
    xs = np.empty((len(items), width), dtype=np.float32)
    ys = np.empty(len(items), dtype=np.float32)
    for index, item in enumerate(items):
        x, y = item.get("x"), item.get("y")
        if not isinstance(x, list) or len(x) != width or not all(is_number(v) for v in x):
            raise BadRequest(f"dataBatch[{index}].x must be a list of {width} numbers, as dataBatch[0].x")
        row = np.asarray(x, dtype=np.float64)
        if not np.isfinite(row).all() or np.abs(row).max(initial=0) > 3.0e38:
            raise BadRequest(f"dataBatch[{index}].x must hold finite float32 numbers")
        if not is_number(y) or not math.isfinite(float(y)):
            raise BadRequest(f"dataBatch[{index}].y must be a finite number, got {y!r}")
        xs[index], ys[index] = row, float(y)
    return xs, ys


def job_request(
    settings: Settings, name: str, signature: models.Signature | None, body: dict
) -> dict[str, Any]:
    """The cycle's request (staging.job_description makes /job.json of it); caps checked against
    the host."""
    params = body.get("trainingParams") or {}
    return {
        "modelType": name,
        **({"signature": signature.as_dict()} if signature is not None else {}),
        "learningRate": params.get("learningRate", settings.default_learning_rate),
        "batchSize": params.get("batchSize", settings.default_batch_size),
        "epochs": params.get("epochs", settings.default_epochs),
        "seed": body.get("seed", secrets.randbits(31)),
        "resourceCaps": resource_caps(settings, body.get("resourceCaps") or {}),
        "numSamples": len(body.get("dataBatch") or ()),  # a dataset's rows are set by its caller
        "hyperparameters": dict(body.get("hyperparameters") or {}),
    }


def resource_caps(settings: Settings, caps: dict) -> dict[str, Any]:
    """A job's resourceCaps with the defaults filled in, checked against the host's limits. With
    `{}` these are the caps of a job that asks for none (the warm pool's profiles have them)."""
    granted = caps_within_limits(settings, caps)
    memory_mb = caps.get("memory", settings.sandbox_default_memory_mb)
    if memory_mb < LEARN_CYCLE_MEMORY_MB_MIN:
        raise BadRequest(
            f"resourceCaps.memory is {memory_mb} MB, too little for a learn cycle's Python to start; "
            f"the smallest that works is {LEARN_CYCLE_MEMORY_MB_MIN} MB"
        )
    return {
        "cpu": caps.get("cpu", settings.sandbox_default_cpu_cores),
        "memory": memory_mb,
        # The storage cap bounds what the program may write, /out included.
        "storage": granted.storage_mb,
        "pids": granted.pids,
        "gpu": granted.gpu_count,
    }


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_or_none(value: Any) -> float | None:
    if is_number(value) and math.isfinite(float(value)):
        return float(value)
    return None
