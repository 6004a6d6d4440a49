"""Datasets as files: upload an .npz or .safetensors as the raw request body (streamed, never
buffered whole), list, show and delete. An agent sees its own datasets only."""

from __future__ import annotations

from aiohttp import web

from ..auth import act_as, agent_filter
from .openapi import Call, Param, Reply, RouteTable, json_reply
from .paging import CREATED_KEY, PAGE_QUERY, page_answer, page_of, page_request
from .schemas import AGENT_ID, DATASET_NAME, ref

ROUTES = RouteTable("datasets", "Training data uploaded as .npz or .safetensors files")

DATASET_ID = Param("datasetId", ref("DatasetId"), route_regex=r"ds-[^/]*")
READ_CHUNK_BYTES = 1 << 20


def _owner_filter(call: Call) -> str | None:
    """Whose datasets the caller may see: all (admin) or its own."""
    return None if call.caller.is_admin else call.caller.agent_id


@ROUTES.operation(
    "POST",
    "/v1/datasets",
    summary="Upload a dataset file (.npz or .safetensors) as the raw body",
    description=(
        "The body is the file's bytes (`Content-Type: application/octet-stream`), at most "
        "PETALS_DATASET_MAX_BYTES; an agent's datasets together at most PETALS_DATASET_QUOTA_BYTES "
        "(413 beyond either). An .npz is read as `np.load(allow_pickle=False)` would: object arrays "
        "are refused. Every array needs the same first dimension (the examples). A corrupt, truncated "
        "or refused file is 400 and nothing is stored. The same bytes uploaded again by the same "
        "agent answer 200 with the dataset already stored."
    ),
    access="agent",
    query=[
        Param("name", DATASET_NAME, "A label for the dataset", required=True),
        Param("agentId", AGENT_ID, "The owner; required with the admin token, else the caller"),
    ],
    raw_body="application/octet-stream",
    replies=[
        Reply(201, "Stored", ref("Dataset")),
        Reply(200, "The agent had uploaded these bytes before: that dataset", ref("Dataset")),
    ],
    errors=[403],
)
async def upload_dataset(call: Call) -> web.Response:
    agent_id = act_as(call.caller, call.query.get("agentId"))
    dataset, created = await call.services.datasets.upload(
        agent_id,
        call.query["name"],
        call.request.content.iter_chunked(READ_CHUNK_BYTES),
        declared_bytes=call.request.content_length,
    )
    return json_reply(dataset.to_json(), status=201 if created else 200)


@ROUTES.operation(
    "GET",
    "/v1/datasets",
    summary="List datasets (an agent's own; the admin's all, or one agent's)",
    access="agent",
    query=[
        Param("agentId", AGENT_ID, "Only this agent's datasets (an agent may name only itself)"),
        *PAGE_QUERY,
    ],
    replies=[Reply(200, "Datasets, oldest first", ref("DatasetList"))],
    errors=[403],
)
async def list_datasets(call: Call) -> web.Response:
    owner = agent_filter(call.caller, call.query.get("agentId"))
    wanted = page_request(call.query, "datasets", CREATED_KEY)
    shown, next_cursor = page_of(
        call.services.datasets.list(owner), lambda d: (d.created_at, d.dataset_id), wanted, "datasets",
        descending=False,
    )  # fmt: skip
    return json_reply(page_answer("datasets", [d.to_json() for d in shown], next_cursor))


@ROUTES.operation(
    "GET",
    "/v1/datasets/{datasetId}",
    summary="One dataset",
    access="agent",
    path_params=[DATASET_ID],
    replies=[Reply(200, "The dataset", ref("Dataset"))],
)
async def show_dataset(call: Call) -> web.Response:
    return json_reply(call.services.datasets.get(call.path["datasetId"], _owner_filter(call)).to_json())


@ROUTES.operation(
    "DELETE",
    "/v1/datasets/{datasetId}",
    summary="Delete a dataset",
    description="409 while a queued or running training cycle uses it.",
    access="agent",
    path_params=[DATASET_ID],
    replies=[Reply(200, "Deleted; the answer is the dataset as it was", ref("Dataset"))],
    errors=[409],
)
async def delete_dataset(call: Call) -> web.Response:
    dataset = await call.services.datasets.delete(call.path["datasetId"], _owner_filter(call))
    return json_reply(dataset.to_json())
