"""Reading the shared model: its parameters and metadata as JSON, as an ONNX graph, its
versions, predictions through onnxruntime; and the hold-out set validators evaluate on."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import BadRequest, Conflict, NotFound
from ..onnx_export import OnnxRunner, to_onnx
from ..storage.models import ModelStore
from . import program_models
from .jobs import check_batch, check_rows


def _program_graph(info) -> bytes:
    """The model's registered ONNX graph; a 409 when it was registered without one."""
    path = info.program.get("onnxPath")
    if not path:
        raise Conflict(
            f"model {info.name!r} was registered without an onnx part: predict and ONNX export "
            "need its inference graph"
        )
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != info.program["onnxSha256"]:
        raise RuntimeError(f"ONNX graph {path} does not match its recorded sha256; refusing to use it")
    return data


# Probabilities are clipped this far from 0 and 1 before a log, so a confident mistake
# costs a large but finite loss.
LOG_EPSILON = 1e-7


def held_out_figures(family: str, outputs: np.ndarray, y: np.ndarray) -> dict:
    """Loss and accuracy of a model's outputs on a hold-out set: mean squared error for linear
    models (no accuracy), binary or categorical cross-entropy and accuracy for classifiers."""
    if family == "linear":
        return {"loss": float(np.mean((outputs[:, 0] - y) ** 2)), "accuracy": None, "lossKind": "mse"}
    if family == "logistic":
        p = np.clip(outputs[:, 0].astype(np.float64), LOG_EPSILON, 1 - LOG_EPSILON)
        target = (y >= 0.5).astype(np.float64)
        loss = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
        accuracy = np.mean((p >= 0.5) == (target == 1))
        return {"loss": float(loss), "accuracy": float(accuracy), "lossKind": "binary_cross_entropy"}
    labels = y.astype(np.int64)
    p = np.clip(outputs[np.arange(len(labels)), labels].astype(np.float64), LOG_EPSILON, 1.0)
    accuracy = np.mean(outputs.argmax(axis=1) == labels)
    return {"loss": float(-np.mean(np.log(p))), "accuracy": float(accuracy), "lossKind": "cross_entropy"}


def labelled(metadata: dict) -> dict:
    """A version's metadata with its metrics labelled by where they come from: the
    participants' own training data (held-out figures are the evaluation endpoint's)."""
    if not isinstance(metadata.get("metrics"), dict) or not metadata["metrics"]:
        return metadata
    return {**metadata, "metrics": {**metadata["metrics"], "source": "training"}}


def visible_metadata(metadata: dict, viewer: str | None) -> dict:
    """A version's metadata as `viewer` (None: the admin) may see it: another agent's id in the
    participants is left out, as everywhere else an agent reads."""
    if viewer is None or not metadata.get("participants"):
        return metadata
    participants = [
        p if p.get("agentId") == viewer else {k: v for k, v in p.items() if k != "agentId"}
        for p in metadata["participants"]
    ]
    return {**metadata, "participants": participants}


class SharedModels:
    def __init__(self, models: ModelStore, audit=None) -> None:
        self.models = models
        self.audit = audit
        self.onnx = OnnxRunner()

    async def shared_model(self, model_name: str, version: int | None, viewer: str | None = None) -> dict:
        info = await asyncio.to_thread(self.models.require, model_name)
        version_info = await asyncio.to_thread(self.models.version, model_name, version)
        params = await asyncio.to_thread(self.models.load, version_info)
        return {
            "modelType": model_name,
            "version": version_info.version,
            "currentVersion": info.current_version,
            "signature": info.signature.as_dict() if info.signature else None,
            "metadata": labelled(visible_metadata(version_info.metadata, viewer)),
            "parameters": {
                name: {"shape": list(v.shape), "values": v.ravel().tolist()} for name, v in params.items()
            },
        }

    async def shared_model_onnx(self, model_name: str, version: int | None) -> bytes:
        info = await asyncio.to_thread(self.models.require, model_name)
        version_info = await asyncio.to_thread(self.models.version, model_name, version)
        params = await asyncio.to_thread(self.models.load, version_info)
        if info.program is not None:
            graph = await asyncio.to_thread(_program_graph, info)
            return await asyncio.to_thread(program_models.with_tensors, graph, params)
        return await asyncio.to_thread(to_onnx, info.signature, params, model_name, version_info.version)

    async def versions(self, model_name: str, viewer: str | None = None) -> dict:
        info = await asyncio.to_thread(self.models.require, model_name)
        versions = await asyncio.to_thread(self.models.versions, model_name)
        return {"modelType": model_name, "currentVersion": info.current_version,
                "holdoutRegistered": bool(info.holdout_path) and os.path.exists(info.holdout_path),
                "versions": [labelled(visible_metadata(v.metadata, viewer)) for v in versions]}  # fmt: skip

    async def predict(self, model_name: str, inputs: list, version: int | None = None) -> dict:
        info = await asyncio.to_thread(self.models.require, model_name)
        if info.program is not None:
            return await self._predict_program(info, inputs, version)
        width = info.signature.input_dim
        for index, row in enumerate(inputs):
            if len(row) != width:
                raise BadRequest(
                    f"inputs[{index}] must hold {width} numbers (the model's inputDim), got {len(row)}"
                )
        x = np.asarray(inputs, dtype=np.float64)
        if not np.isfinite(x).all() or np.abs(x).max(initial=0) > 3.0e38:
            raise BadRequest("inputs must be finite float32 numbers")
        version_info = await asyncio.to_thread(self.models.version, model_name, version)
        model = await self.shared_model_onnx(model_name, version_info.version)
        outputs = await asyncio.to_thread(self.onnx.run, version_info.sha256, model, x.astype(np.float32))
        return {"modelType": model_name, "version": version_info.version, "outputs": outputs.tolist(),
                "provider": self.onnx.provider}  # fmt: skip

    async def evaluation(self, model_name: str, version: int | None) -> dict:
        """A version's loss and accuracy on the registered hold-out set (not on training data)."""
        info = await asyncio.to_thread(self.models.require, model_name)
        if info.signature is None:
            raise Conflict(
                f"model {model_name!r} brings its own program: its held-out figures are its versions' "
                "validation metrics (GET /v1/petals/model/versions)"
            )
        holdout = await asyncio.to_thread(self.models.holdout, info)
        if holdout is None:
            raise NotFound(
                f"model {model_name!r} has no hold-out set; the admin registers one with POST /v1/petals/validation"
            )
        x, y = holdout
        version_info = await asyncio.to_thread(self.models.version, model_name, version)
        model = await self.shared_model_onnx(model_name, version_info.version)
        outputs = await asyncio.to_thread(self.onnx.run, version_info.sha256, model, x.astype(np.float32))
        figures = held_out_figures(info.signature.family, outputs, y)
        return {"modelType": model_name, "version": version_info.version, "source": "held-out",
                "samples": len(y), **figures}  # fmt: skip

    async def _predict_program(self, info, inputs: list, version: int | None) -> dict:
        """A program model's graph on `inputs` (its first input and output), the version's tensors
        in place of its initializers."""
        try:
            x = np.asarray(inputs, dtype=np.float32)
        except ValueError:
            raise BadRequest("inputs must be rows of numbers of one width") from None
        if not np.isfinite(x).all():
            raise BadRequest("inputs must be finite float32 numbers")
        version_info = await asyncio.to_thread(self.models.version, info.name, version)
        model = await self.shared_model_onnx(info.name, version_info.version)

        def run():
            session = self.onnx.session(version_info.sha256, model)
            feed = session.get_inputs()[0]
            shape = [d if isinstance(d, int) else -1 for d in feed.shape]
            if len(shape) != x.ndim or any(d not in (-1, g) for d, g in zip(shape, x.shape, strict=True)):
                raise BadRequest(
                    f"inputs have shape {list(x.shape)}; the graph's input {feed.name} is {feed.shape}"
                )
            return session.run([session.get_outputs()[0].name], {feed.name: x})[0]

        outputs = await asyncio.to_thread(run)
        return {"modelType": info.name, "version": version_info.version, "outputs": outputs.tolist(),
                "provider": self.onnx.provider}  # fmt: skip

    async def register_holdout(self, model_name: str, items: list) -> dict:
        info = await asyncio.to_thread(self.models.require, model_name)
        if info.program is not None:
            if not info.program.get("onnxPath") and not info.program.get("evaluateEntrypoint"):
                raise Conflict(
                    f"model {model_name!r} has neither an onnx graph nor an evaluateEntrypoint: "
                    "nothing could evaluate a hold-out set"
                )
            x, y = await asyncio.to_thread(check_rows, items)
        else:
            x, y = await asyncio.to_thread(check_batch, info.signature, items)
        await asyncio.to_thread(self.models.set_holdout, model_name, x, y)
        if self.audit is not None:
            await self.audit.append("holdout_registered", model_name, {"samples": len(items)})
        return {"modelType": model_name, "samples": len(items)}
