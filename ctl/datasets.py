"""`datasets ls|upload|rm`: training data kept by the service as files (.npz, .safetensors)."""

from __future__ import annotations

from pathlib import Path

import click

from .client import EXIT_USAGE, CtlError, quote
from .context import Ctl, command
from .output import human_bytes, table, when

PAGE_SIZE = 1000


@click.group()
def datasets() -> None:
    """Datasets: list, upload, remove."""


def all_pages(ctl: Ctl, path: str, key: str, query: dict) -> list[dict]:
    """Every item of a paged list, following nextCursor."""
    items: list[dict] = []
    cursor = None
    while True:
        page = ctl.client.call("GET", path, query={**query, "limit": PAGE_SIZE, "cursor": cursor})
        items += page[key]
        cursor = page.get("nextCursor")
        if not cursor:
            return items


@command(datasets, "ls")
@click.option("--agent", "agent_id", help="Only this agent's datasets (the admin's default: all).")
def datasets_ls(ctl: Ctl, agent_id: str | None) -> None:
    """Datasets, oldest first."""
    found = all_pages(ctl, "/v1/datasets", "datasets", {"agentId": agent_id})
    rows = [[d["datasetId"], d["name"], d["agentId"], d["format"], d["numRows"], human_bytes(d["sizeBytes"]),
             d["sha256"][:16], when(d.get("createdAt"))] for d in found]  # fmt: skip
    ctl.out({"datasets": found, "count": len(found)},
            lambda _: table(rows, ["DATASET", "NAME", "AGENT", "FORMAT", "ROWS", "SIZE", "SHA256", "CREATED"]))  # fmt: skip


def upload(ctl: Ctl, path: Path, name: str | None, agent_id: str | None) -> dict:
    """POST the file's bytes to /v1/datasets; the answer is the dataset (new or the same bytes')."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    query = {"name": name or path.name, "agentId": agent_id}
    return ctl.client.call(
        "POST", "/v1/datasets", query=query, payload=data, content_type="application/octet-stream"
    )


@command(datasets, "upload")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="The dataset's name (default: the file's name).")
@click.option("--agent", "agent_id", help="Whose dataset it is (the admin token must name one).")
def datasets_upload(ctl: Ctl, path: Path, name: str | None, agent_id: str | None) -> None:
    """Upload an .npz or .safetensors file; prints its datasetId."""
    d = upload(ctl, path, name, agent_id)
    ctl.out(d, lambda d: click.echo(f"{d['datasetId']}  {d['name']}: {d['numRows']} rows, {d['format']}, "
                                    f"{human_bytes(d['sizeBytes'])}, sha256 {d['sha256']}"))  # fmt: skip


@command(datasets, "rm")
@click.argument("dataset_id")
def datasets_rm(ctl: Ctl, dataset_id: str) -> None:
    """Delete a dataset (refused while a queued or running cycle uses it)."""
    d = ctl.client.call("DELETE", f"/v1/datasets/{quote(dataset_id)}")
    ctl.out(d, lambda d: click.echo(f"{d['datasetId']} ({d['name']}) deleted"))
