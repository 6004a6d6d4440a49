"""The seed's petal-training endpoints: submit a training job, follow its cycle, read the
shared model (JSON or ONNX), predict with it; the admin registers hold-out sets and rolls back."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from aiohttp import web

from ..auth import act_as, ensure_visible, require_admin
from ..errors import Forbidden
from .model_upload import read as read_model_upload
from .openapi import Call, Param, Reply, RouteTable, json_reply
from .paging import PAGE_QUERY, page_answer, page_of, page_request
from .schemas import NON_NEGATIVE_INT, ref

ROUTES = RouteTable("petals", "Federated training: learn cycles, rounds, consensus and the shared model")

TRAIN_MAX_BODY_BYTES = 16 << 20
MODEL_QUERY = [
    Param("modelType", ref("ModelName"), "The shared model's name", required=True),
    Param("version", NON_NEGATIVE_INT, "A version (default: the current one)"),
]


@ROUTES.operation(
    "POST",
    "/v1/petals/models",
    summary="Define a shared model: its signature (version 0) and its round policy",
    description=(
        "Admin, or an agent the admin made a model author (modelAuthor). The round policy's fields "
        "left out take the service's defaults; the policy is shown with the model and in every proposal. "
        "As JSON, a built-in family's model (modelConfig); as multipart/form-data, a model with its own "
        "program: parts `spec` (JSON), `program` (.py, .tar.gz or .zip), `parameters` (.safetensors, "
        "version 0) and optionally `onnx` (its initializers named as the tensors). A bad part is a 400 "
        "and nothing is stored."
    ),
    access="agent",
    body=ref("ModelCreateRequest"),
    multipart=ref("ModelUpload"),
    replies=[Reply(201, "Defined", ref("Model"))],
    errors=[403, 409, 413],
)
async def create_model(call: Call) -> web.Response:
    caller = call.caller
    if not caller.is_admin and not call.services.agents.is_model_author(caller.agent_id):
        raise Forbidden(f"defining a model needs the admin token or a model author; {caller} is not one")
    petals = call.services.petals
    if call.body is not None:
        return json_reply(await petals.create_model(caller.agent_id, call.body), status=201)
    scratch = petals._work_dir.parent / "uploads"
    await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        upload = await read_model_upload(call, Path(folder))
        return json_reply(await petals.create_program_model(caller.agent_id, upload), status=201)


@ROUTES.operation(
    "GET",
    "/v1/petals/models",
    summary="The shared models, with their signatures and round policies, by name",
    access="agent",
    query=PAGE_QUERY,
    replies=[Reply(200, "A page of the models", ref("ModelList"))],
)
async def list_models(call: Call) -> web.Response:
    wanted = page_request(call.query, "models", (str,))
    models = (await call.services.petals.list_models(call.caller.agent_id))["models"]
    shown, next_cursor = page_of(models, lambda m: (m["modelType"],), wanted, "models", descending=False)
    return json_reply(page_answer("models", shown, next_cursor))


@ROUTES.operation(
    "DELETE",
    "/v1/petals/models/{modelType}",
    summary="Delete a shared model and its versions; its consensus history stays",
    access="admin",
    path_params=[Param("modelType", ref("ModelName"))],
    replies=[Reply(200, "Deleted", ref("Model"))],
    errors=[404, 409],
)
async def delete_model(call: Call) -> web.Response:
    require_admin(call.caller, "deleting a model")
    return json_reply(await call.services.petals.delete_model(call.path["modelType"]))


@ROUTES.operation(
    "POST",
    "/v1/petals/train",
    summary="Submit a training job; its learn cycle runs in a sandbox",
    description=(
        "The model must exist (POST /v1/petals/models; an unknown one is a 404 naming the closest "
        "name) unless the service runs with autoCreateModels, where the first job creates it. A job "
        "with another signature is a 409. Past the queue bound the answer is 429 with Retry-After."
    ),
    access="agent",
    body=ref("PetalTrainingRequest"),
    max_body_bytes=TRAIN_MAX_BODY_BYTES,
    replies=[Reply(202, "Queued", ref("TrainAccepted"))],
    errors=[403, 404, 409, 429],
)
async def train(call: Call) -> web.Response:
    agent_id = act_as(call.caller, call.body.get("agentId"))
    return json_reply(await call.services.petals.submit(agent_id, call.body), status=202)


@ROUTES.operation(
    "GET",
    "/v1/petals/status/{cycleId}",
    summary="A training cycle: progress while it runs, its result and resource record after",
    access="agent",
    path_params=[Param("cycleId", ref("CycleId"))],
    replies=[Reply(200, "The cycle", ref("CycleStatus"))],
)
async def cycle_status(call: Call) -> web.Response:
    cycle_id = call.path["cycleId"]
    petals = call.services.petals
    ensure_visible(call.caller, petals.owner_of(cycle_id) or "\0unknown", "cycle", cycle_id)
    return json_reply(petals.get(cycle_id))


def onnx_filename(model_name: str, version: int) -> str:
    """mlp:digits version 3 -> mlp-digits-v3.onnx (a model name holds only [A-Za-z0-9._:-])."""
    return f"{model_name.replace(':', '-')}-v{version}.onnx"


@ROUTES.operation(
    "GET",
    "/v1/petals/model/shared",
    summary="The shared model: parameters and metadata as JSON, or an ONNX model",
    access="agent",
    query=[*MODEL_QUERY, Param("format", {"enum": ["json", "onnx"], "default": "json"}, "json or onnx")],
    replies=[
        Reply(200, "The model", ref("SharedModel")),
        Reply(
            200, "The model", {"type": "string", "format": "binary"}, media_type="application/octet-stream"
        ),
    ],
    errors=[409],  # format=onnx of a model registered without a graph
)
async def shared_model(call: Call) -> web.StreamResponse:
    petals = call.services.petals
    name, version = call.query["modelType"], call.query.get("version")
    if call.query.get("format") == "onnx":
        if version is None:
            # Fixed first, so the file's name and its contents are of the same version.
            version = (await petals.shared.versions(name))["currentVersion"]
        body = await petals.shared.shared_model_onnx(name, version)
        return web.Response(body=body, content_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{onnx_filename(name, version)}"'})  # fmt: skip
    return json_reply(await petals.shared.shared_model(name, version, call.caller.agent_id))


@ROUTES.operation(
    "GET",
    "/v1/petals/model/versions",
    summary="The versions of a shared model with their metadata, oldest first",
    description="Each version's `metrics` are the participants' own training figures (`source: "
    "training`); held-out figures are at /v1/petals/model/shared/evaluation.",
    access="agent",
    query=[MODEL_QUERY[0], *PAGE_QUERY],
    replies=[Reply(200, "A page of the versions, oldest first", ref("ModelVersions"))],
)
async def model_versions(call: Call) -> web.Response:
    wanted = page_request(call.query, "versions", (int,))
    found = await call.services.petals.shared.versions(call.query["modelType"], call.caller.agent_id)
    shown, next_cursor = page_of(
        found["versions"], lambda v: (v["version"],), wanted, "versions", descending=False
    )
    return json_reply({**found, "versions": shown, "count": len(shown), "nextCursor": next_cursor})


@ROUTES.operation(
    "GET",
    "/v1/petals/model/shared/evaluation",
    summary="A version's loss and accuracy on the registered hold-out set",
    description=(
        "Held-out figures (`source: held-out`), computed through onnxruntime on the set registered "
        "with POST /v1/petals/validation, unlike a version's `metrics`, which are the participants' own "
        "training figures. 404 until a hold-out set is registered."
    ),
    access="agent",
    query=MODEL_QUERY,
    replies=[Reply(200, "The version's held-out figures", ref("ModelEvaluation"))],
    errors=[404],
)
async def model_evaluation(call: Call) -> web.Response:
    return json_reply(
        await call.services.petals.shared.evaluation(call.query["modelType"], call.query.get("version"))
    )


@ROUTES.operation(
    "POST",
    "/v1/petals/model/shared/predict",
    summary="Run the shared model through onnxruntime (CUDA where the host has a GPU)",
    access="agent",
    body=ref("PredictRequest"),
    max_body_bytes=TRAIN_MAX_BODY_BYTES,
    replies=[Reply(200, "Outputs, one row per input", ref("PredictResult"))],
    errors=[409],  # a model registered without a graph
)
async def predict(call: Call) -> web.Response:
    body = call.body
    return json_reply(
        await call.services.petals.shared.predict(body["modelType"], body["inputs"], body.get("version"))
    )


@ROUTES.operation(
    "POST",
    "/v1/petals/validation",
    summary="Register a hold-out set that validators evaluate candidates on",
    access="admin",
    body=ref("ValidationSetRequest"),
    max_body_bytes=TRAIN_MAX_BODY_BYTES,
    replies=[Reply(201, "Registered", ref("ValidationSetRegistered"))],
    errors=[409],
)
async def register_validation(call: Call) -> web.Response:
    require_admin(call.caller, "registering a hold-out set")
    body = call.body
    return json_reply(
        await call.services.petals.shared.register_holdout(body["modelType"], body["dataBatch"]), status=201
    )


@ROUTES.operation(
    "POST",
    "/v1/petals/model/shared/rollback",
    summary="Make an earlier version the current one",
    access="admin",
    body=ref("RollbackRequest"),
    replies=[Reply(200, "Rolled back", ref("RollbackResult"))],
    errors=[404],
)
async def rollback(call: Call) -> web.Response:
    require_admin(call.caller, "rolling back a model")
    return json_reply(await call.services.petals.rollback(call.body["modelType"], call.body["version"]))
