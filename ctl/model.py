"""`model ls|show|rollback|export|create` (also `models ...`): the shared models and their versions."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import click

from .client import EXIT_API, EXIT_NOT_FOUND, EXIT_USAGE, CtlError, json_object_file
from .context import Ctl, command
from .output import number, pairs, table, when

_VERSION_OPTION = click.option(
    "--version", "version", type=click.IntRange(min=0), help="A version (default: the current one)."
)


def _model_call(ctl: Ctl, name: str, method: str, path: str, body=None, **kwargs):
    """A call about the model NAME: a name the service cannot hold (its 400 on modelType) is
    "not found" (exit 5), the same as a well-formed name no model has."""
    try:
        return ctl.client.call(method, path, body, **kwargs)
    except CtlError as exc:
        if exc.status == 400 and "modelType" in exc.message:
            raise CtlError(f"no model named {name!r}: {exc.message}", EXIT_NOT_FOUND, 400) from None
        raise


@click.group()
def model() -> None:
    """Shared models: define, versions, parameters, predict, rollback, ONNX export."""


@command(model, "ls")
@click.argument("name", required=False)
def model_ls(ctl: Ctl, name: str | None) -> None:
    """NAME's versions, oldest first (* marks the current one); without NAME, every model."""
    if name is None:
        models = ctl.client.call("GET", "/v1/admin/status")["models"]
        ctl.out(models, lambda d: table([[m["modelType"], m["currentVersion"], m["versions"]] for m in d],
                                        ["MODEL", "CURRENT", "VERSIONS"]))  # fmt: skip
        return
    ctl.out(_model_call(ctl, name, "GET", "/v1/petals/model/versions", query={"modelType": name}), _versions)


def _versions(d: dict) -> None:
    rows = []
    for v in d["versions"]:
        metrics = v.get("metrics") or {}
        rows.append(
            [("*" if v["version"] == d["currentVersion"] else " ") + str(v["version"]), v.get("parentVersion"),
             (v.get("sha256") or "")[:16], len(v.get("participants") or []), v.get("aggregationMethod"),
             number(metrics.get("loss")), when((v.get("timestamp") or 0) * 1000)]
        )  # fmt: skip
    table(rows, ["VERSION", "PARENT", "SHA256", "CYCLES", "METHOD", "LOSS", "CREATED"])


@command(model, "show")
@click.argument("name")
@_VERSION_OPTION
def model_show(ctl: Ctl, name: str, version: int | None) -> None:
    """A version's signature, metadata and parameter shapes (--json: the values too)."""
    query = {"modelType": name, "version": version}
    ctl.out(_model_call(ctl, name, "GET", "/v1/petals/model/shared", query=query), _show)


def _show(d: dict) -> None:
    meta = d.get("metadata") or {}
    items = [
        ("model", d["modelType"]), ("version", f"{d['version']} (current {d['currentVersion']})"),
        ("signature", json.dumps(d.get("signature"), sort_keys=True)), ("sha256", meta.get("sha256")),
        ("parent", meta.get("parentVersion")), ("method", meta.get("aggregationMethod")),
        ("cycles", len(meta.get("participants") or [])),
        ("metrics", json.dumps(meta.get("metrics") or {}, sort_keys=True)),
    ]  # fmt: skip
    for tensor, value in sorted((d.get("parameters") or {}).items()):
        items.append((f"  {tensor}", "x".join(str(n) for n in value["shape"])))
    pairs(items)


@command(model, "rollback")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=0))
def model_rollback(ctl: Ctl, name: str, version: int) -> None:
    """Make VERSION of NAME the current one again."""
    data = _model_call(
        ctl, name, "POST", "/v1/petals/model/shared/rollback", {"modelType": name, "version": version}
    )
    ctl.out(
        data,
        lambda d: click.echo(f"{d['modelType']} is at version {d['currentVersion']} (sha256 {d['sha256']})"),
    )


@command(model, "export")
@click.argument("name")
@click.option(
    "--onnx",
    "target",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the ONNX model.",
)
@_VERSION_OPTION
def model_export(ctl: Ctl, name: str, target: Path, version: int | None) -> None:
    """Write a version of NAME as an ONNX model to a file."""
    query = {"modelType": name, "version": version, "format": "onnx"}
    payload = _model_call(ctl, name, "GET", "/v1/petals/model/shared", query=query, raw=True)
    _write_atomically(target, payload)
    data = {"modelType": name, "version": version, "path": str(target), "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest()}  # fmt: skip
    ctl.out(data, lambda d: click.echo(f"wrote {d['path']} ({d['bytes']} bytes, sha256 {d['sha256']})"))


def _write_atomically(target: Path, payload: bytes) -> None:
    # Written beside the target and renamed, so a reader never sees half a model.
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.write_bytes(payload)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CtlError(f"cannot write {target}: {exc.strerror}", EXIT_API) from None


def _spec_file(path: Path) -> dict:
    return json_object_file(path, "modelType, modelConfig, roundPolicy")


def multipart(fields: dict[str, tuple[str | None, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578) of name -> (file name or None, media type, bytes),
    and its Content-Type."""
    boundary = f"wondercraft-{uuid.uuid4().hex}"
    parts = []
    for name, (filename, media_type, data) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {media_type}\r\n\r\n"
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None


_FILE = click.Path(dir_okay=False, path_type=Path)


@command(model, "create")
@click.argument("name", required=False)
@click.option("--spec", "spec_path", type=_FILE, help="A JSON spec: modelType, modelConfig, roundPolicy.")
@click.option("--input-dim", type=click.IntRange(1), help="modelConfig.inputDim")
@click.option("--classes", "num_classes", type=click.IntRange(1), help="modelConfig.numClasses")
@click.option("--hidden", help="modelConfig.hidden: layer widths, comma-separated (mlp), e.g. 32,16")
@click.option("--min-clients", type=click.IntRange(1), help="roundPolicy.minClients")
@click.option("--program", "program", type=_FILE, help="A learn program (.py, .tar.gz or .zip).")
@click.option("--parameters", "parameters", type=_FILE, help="Initial tensors (.safetensors).")
@click.option("--onnx", "onnx", type=_FILE, help="An inference graph (.onnx) for the tensors.")
def model_create(ctl: Ctl, name: str | None, spec_path: Path | None, input_dim: int | None,
                 num_classes: int | None, hidden: str | None, min_clients: int | None, program: Path | None,
                 parameters: Path | None, onnx: Path | None) -> None:  # fmt: skip
    """Define the shared model NAME (a stock family such as mlp:digits, or one with its own
    program): version 0 and its round policy. Options override the --spec file's fields."""
    spec = _spec_file(spec_path) if spec_path is not None else {}
    if name is not None:
        spec["modelType"] = name
    if "modelType" not in spec:
        raise CtlError(
            "name the model: wondercraft-ctl models create NAME (or modelType in --spec)", EXIT_USAGE
        )
    config = (
        spec.setdefault("modelConfig", {})
        if (input_dim or num_classes or hidden)
        else spec.get("modelConfig")
    )
    if input_dim is not None:
        config["inputDim"] = input_dim
    if num_classes is not None:
        config["numClasses"] = num_classes
    if hidden is not None:
        try:
            config["hidden"] = [int(width) for width in hidden.split(",") if width.strip()]
        except ValueError:
            raise CtlError(
                f"--hidden must be widths separated by commas, got {hidden!r}", EXIT_USAGE
            ) from None
    if min_clients is not None:
        spec.setdefault("roundPolicy", {})["minClients"] = min_clients
    files = {"program": program, "parameters": parameters, "onnx": onnx}
    if any(files.values()):
        fields = {"spec": (None, "application/json", json.dumps(spec).encode())}
        fields.update({part: (path.name, "application/octet-stream", _read(path))
                       for part, path in files.items() if path is not None})  # fmt: skip
        body, content_type = multipart(fields)
        data = ctl.client.call("POST", "/v1/petals/models", payload=body, content_type=content_type)
    else:
        data = ctl.client.call("POST", "/v1/petals/models", spec)
    ctl.out(data, lambda d: click.echo(f"{d['modelType']} defined at version {d['currentVersion']}: "
                                       f"{json.dumps(d.get('signature'), sort_keys=True)}"))  # fmt: skip


@command(model, "predict")
@click.argument("name")
@click.option("--inputs", "inputs", required=True,
              help='Rows of numbers as JSON, e.g. "[[1, 2], [0, 1]]" (or @FILE to read them from FILE).')  # fmt: skip
@_VERSION_OPTION
def model_predict(ctl: Ctl, name: str, inputs: str, version: int | None) -> None:
    """Run a version of NAME (default: the current one) on INPUTS; one row of outputs per input."""
    text = _read(Path(inputs[1:])).decode() if inputs.startswith("@") else inputs
    try:
        rows = json.loads(text)
    except ValueError as exc:
        raise CtlError(f"--inputs must be JSON rows of numbers: {exc}", EXIT_USAGE) from None
    body = {"modelType": name, "inputs": rows, **({} if version is None else {"version": version})}
    data = _model_call(ctl, name, "POST", "/v1/petals/model/shared/predict", body)
    ctl.out(data, lambda d: table([[i, " ".join(number(v) for v in row)] for i, row in enumerate(d["outputs"])],
                                  ["INPUT", f"OUTPUTS (version {d['version']}, {d['provider']})"]))  # fmt: skip
