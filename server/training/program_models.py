"""Models with their own program (POST /v1/petals/models as multipart): the spec, the program
(unpacked safely), version 0's tensors (.safetensors, float32) and an optional ONNX graph whose
initializers carry the tensors' names. Each part is content-hashed and immutable; a bad part is a
400 that stores nothing. With the graph, predictions run it through onnxruntime with a version's
tensors substituted for its initializers."""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import programs
from ..artifacts import tensors as tensor_files
from ..errors import BadRequest, Conflict
from ..storage.models import ModelInfo, ModelStore, write_atomically

MAX_PARAMETER_TENSORS = 10_000


@dataclass
class Upload:
    """The parts as received: spec parsed, files streamed to disk by the HTTP layer."""

    spec: dict
    program: bytes
    program_filename: str
    parameters: Path
    onnx: bytes | None = None


def entrypoint_argv(value) -> list[str]:
    """The command a spec's entrypoint names. A bare `train.py` (or `pkg/train.py`) is one of the
    program's own files, run by the sandbox's Python: `python /program/train.py`."""
    argv = shlex.split(value) if isinstance(value, str) else list(value)
    if not argv:
        raise BadRequest("spec.entrypoint must name a command")
    if argv[0].endswith(".py") and not argv[0].startswith("/"):
        if ".." in argv[0].split("/"):
            raise BadRequest("spec.entrypoint must name a file inside the program")
        argv = ["python", f"/program/{argv[0]}", *argv[1:]]
    return argv


def read_parameters(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    try:
        return tensor_files.read_tensors(
            path, max_bytes=max_bytes, dtype=np.float32, finite=True, max_tensors=MAX_PARAMETER_TENSORS
        )
    except tensor_files.BadTensorFile as exc:
        raise BadRequest(f"parameters: {exc.message}", details=exc.details) from None


def check_onnx(data: bytes, params: dict[str, np.ndarray]) -> None:
    """The graph loads, and every tensor is one of its initializers, of the same shape."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises its own types, and DecodeError for garbage
        raise BadRequest(f"onnx: not a valid ONNX model ({str(exc)[:200]})") from None
    initializers = {init.name: init for init in model.graph.initializer}
    for name, array in params.items():
        if name not in initializers:
            raise BadRequest(
                f"onnx: the graph has no initializer named {name!r}; its initializers must carry the "
                f"tensors' names (it has {sorted(initializers)[:20]})"
            )
        shape = tuple(numpy_helper.to_array(initializers[name]).shape)
        if shape != array.shape:
            raise BadRequest(
                f"onnx: initializer {name!r} has shape {list(shape)}, the tensor {list(array.shape)}"
            )


def with_tensors(data: bytes, params: dict[str, np.ndarray]) -> bytes:
    """The graph with `params` in place of its initializers of the same names."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string(data)
    for init in model.graph.initializer:
        if init.name in params:
            init.CopyFrom(numpy_helper.from_array(np.asarray(params[init.name], dtype=np.float32), init.name))
    return model.SerializeToString()


def register(
    models: ModelStore, state_dir: Path, settings, upload: Upload, policy: dict, created_by: str | None
) -> ModelInfo:
    """Blocking: checks every part, then stores them (program and graph under STATE/programs by
    sha256) and the model at version 0."""
    spec = upload.spec
    name = spec["modelType"]
    if models.get(name) is not None:
        raise Conflict(f"model {name!r} already exists")
    params = read_parameters(upload.parameters, settings.model_upload_max_bytes)
    if not params:
        raise BadRequest("parameters: the file holds no tensors")
    if upload.onnx is not None:
        check_onnx(upload.onnx, params)
    store = Path(state_dir) / "programs"
    program = programs.unpack_program(
        upload.program, store, programs.Limits.from_settings(settings), filename=upload.program_filename
    )
    record = {
        "programSha256": program.sha256,
        "programDir": str(program.root),
        "files": list(program.files)[:100],
        "entrypoint": entrypoint_argv(spec["entrypoint"]),
        "evaluateEntrypoint": entrypoint_argv(spec["evaluateEntrypoint"])
        if spec.get("evaluateEntrypoint")
        else None,
        "hyperparameters": spec.get("hyperparameters") or {},
        "warmProfile": spec.get("warmProfile") or "numpy",
        "onnxSha256": None,
    }
    if upload.onnx is not None:
        digest = hashlib.sha256(upload.onnx).hexdigest()
        path = store / "onnx" / f"{digest}.onnx"
        if not path.exists():
            write_atomically(path, upload.onnx)
        record["onnxSha256"], record["onnxPath"] = digest, str(path)
    return models.create_program_model(name, params, record, policy, created_by)


def public_view(program: dict) -> dict:
    """What the API shows of a model's program (no host paths)."""
    return {k: v for k, v in program.items() if k not in ("programDir", "onnxPath")}
