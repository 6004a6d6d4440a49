"""The digits CNN through the service's API: registering it as a model with a program
(multipart/form-data, issue "Bring your own model") and the shards the federation trains on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.programs.digits_cnn.onnx_check import PROGRAM, digits_split

MODEL = "digits-cnn"
SPEC = {
    "modelType": MODEL,
    "entrypoint": PROGRAM.name,
    "hyperparameters": {},
}


def accepts_program_models() -> bool:
    """Whether this checkout's POST /v1/petals/models takes multipart/form-data, i.e. a model
    with its own program (the API document is built from the same declarations as the routes)."""
    from server.http import build_api

    operation = build_api().document["paths"]["/v1/petals/models"]["post"]
    return "multipart/form-data" in operation.get("requestBody", {}).get("content", {})


def registration(parameters: Path, graph: Path | None, **spec) -> tuple[bytes, str]:
    """(body, Content-Type) of a POST /v1/petals/models registering the CNN."""
    from urllib3 import encode_multipart_formdata

    fields = {
        "spec": ("spec.json", json.dumps({**SPEC, **spec}).encode(), "application/json"),
        "program": (PROGRAM.name, PROGRAM.read_bytes(), "text/x-python"),
        "parameters": ("parameters.safetensors", parameters.read_bytes(), "application/octet-stream"),
    }
    if graph is not None:
        fields["onnx"] = ("model.onnx", graph.read_bytes(), "application/octet-stream")
    return encode_multipart_formdata(fields)


def non_iid_shards(agents: int, seed: int = 1):
    """The hold-out set and one shard per agent: each class split among the agents in
    Dirichlet(0.5) proportions, so every shard is skewed towards a few digits."""
    holdout, (x, y) = digits_split()
    rng = np.random.default_rng(seed)
    shards: list[list[int]] = [[] for _ in range(agents)]
    for label in range(10):
        members = np.where(y == label)[0]
        rng.shuffle(members)
        cuts = (np.cumsum(rng.dirichlet([0.5] * agents)) * len(members)).astype(int)[:-1]
        for shard, part in zip(shards, np.split(members, cuts), strict=True):
            shard.extend(part)
    return holdout, [(x[s], y[s]) for s in map(np.array, shards)]


def npz_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, x=x.astype(np.float32), y=y.astype(np.int64))
    return buffer.getvalue()
