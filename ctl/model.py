"""`model ls|show|rollback|export`: the shared models and their versions."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import click

from .client import EXIT_API, EXIT_NOT_FOUND, CtlError
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
    """Shared models: versions, parameters, rollback, ONNX export."""


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
