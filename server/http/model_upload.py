"""Reading a multipart model registration: parts `spec` (JSON, checked against its schema),
`program`, `parameters` (streamed to a scratch file) and an optional `onnx`, all bounded by
PETALS_MODEL_UPLOAD_MAX_BYTES together and the program by PETALS_PROGRAM_MAX_BYTES."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from aiohttp import BodyPartReader, MultipartReader
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import BadRequest, PayloadTooLarge
from ..training.program_models import Upload
from .openapi import API_KEY, Call

PARTS = ("spec", "program", "parameters", "onnx")
MAX_SPEC_BYTES = 1 << 20
CHUNK_BYTES = 1 << 20


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, count: int) -> None:
        self.used += count
        if self.used > self.limit:
            raise PayloadTooLarge(f"the upload is over {self.limit} bytes (PETALS_MODEL_UPLOAD_MAX_BYTES)")


async def _read_bytes(
    part: BodyPartReader, budget: _Budget, limit: int, what: str, too_large=PayloadTooLarge
) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK_BYTES):
        budget.take(len(chunk))
        data += chunk
        if len(data) > limit:
            raise too_large(f"part {what} is over {limit} bytes")
    return bytes(data)


async def _read_to_file(part: BodyPartReader, budget: _Budget, path: Path) -> Path:
    with open(path, "wb") as handle:
        while chunk := await part.read_chunk(CHUNK_BYTES):
            budget.take(len(chunk))
            handle.write(chunk)
    return path


def _program_filename(name: str | None) -> str:
    """A single-file program keeps its own name when it is a plain `*.py`, else main.py."""
    base = PurePosixPath(name or "").name
    if base.endswith(".py") and base.replace("_", "a").replace("-", "a").replace(".", "a").isalnum():
        return base
    return "main.py"


async def _next_part(reader: MultipartReader):
    try:
        return await reader.next()
    except (
        ValueError,
        LookupError,
        AssertionError,
        HttpProcessingError,
    ) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"the body is not valid multipart/form-data ({type(exc).__name__})") from None


async def read(call: Call, scratch: Path) -> Upload:
    settings = call.services.settings
    budget = _Budget(settings.model_upload_max_bytes)
    declared = call.request.content_length
    if declared is not None and declared > budget.limit:
        raise PayloadTooLarge(f"the upload is {declared} bytes; at most {budget.limit} are accepted")
    try:
        reader = await call.request.multipart()
    except (AssertionError, ValueError) as exc:
        raise BadRequest(f"the body is not multipart/form-data: {exc}") from None
    found: dict = {}
    filename = None
    while (part := await _next_part(reader)) is not None:
        if not isinstance(part, BodyPartReader) or part.name not in PARTS:
            name = getattr(part, "name", None)
            raise BadRequest(f"unknown part {name!r}; the parts are {', '.join(PARTS)}")
        if part.name in found:
            raise BadRequest(f"part {part.name} is given twice")
        if part.name == "spec":
            # A spec this large breaks its schema's bounds: a 400, as any invalid spec.
            found["spec"] = await _read_bytes(part, budget, MAX_SPEC_BYTES, "spec", BadRequest)
        elif part.name == "program":
            filename = part.filename
            found["program"] = await _read_bytes(part, budget, settings.program_max_bytes, "program")
        elif part.name == "parameters":
            found["parameters"] = await _read_to_file(part, budget, scratch / "parameters.safetensors")
        else:
            found["onnx"] = await _read_bytes(part, budget, budget.limit, "onnx")
    missing = [name for name in ("spec", "program", "parameters") if name not in found]
    if missing:
        raise BadRequest(
            f"the upload lacks part(s) {', '.join(missing)}; it needs spec, program and parameters"
        )
    try:
        spec = json.loads(found["spec"])
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"part spec must be JSON: {exc}") from None
    call.request.app[API_KEY].check("ModelProgramSpec", spec)
    return Upload(spec, found["program"], _program_filename(filename), found["parameters"], found.get("onnx"))
