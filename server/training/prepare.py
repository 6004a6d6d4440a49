"""A PetalTrainingRequest checked against its model before anything is stored: the model
(created here only with autoCreateModels), the request the cycle keeps, and its data: a JSON
dataBatch as arrays, or one of the agent's uploaded datasets (bound read-only at /data)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from rootfs import models

from ..config import Settings
from ..errors import BadRequest
from ..storage.models import ModelInfo, ModelStore, unknown_model
from ..vocabulary import ModelFamily
from . import jobs


@dataclass(frozen=True)
class PreparedJob:
    info: ModelInfo
    request: dict
    x: np.ndarray | None  # the dataBatch, None for a job on a dataset
    y: np.ndarray | None

    def __iter__(self):  # (info, request, x, y), as callers unpack it
        return iter((self.info, self.request, self.x, self.y))


def dataset_shape(dataset, family: ModelFamily) -> tuple[int, int]:
    """(rows, width) of a dataset a built-in family trains on: arrays x (rows, width) and y
    (rows,), as a dataBatch would give."""
    arrays = dataset.arrays
    x, y = arrays.get("x"), arrays.get("y")
    if x is None or y is None or len(x["shape"]) != 2 or len(y["shape"]) != 1:
        found = {name: a["shape"] for name, a in arrays.items()}
        raise BadRequest(
            f"a {family} model trains on a dataset with arrays x (rows x features) and y (rows); "
            f"dataset {dataset.dataset_id} holds {found}"
        )
    if x["shape"][0] != y["shape"][0] or x["shape"][0] < 1:
        raise BadRequest(f"dataset {dataset.dataset_id}: x and y must have the same positive number of rows")
    return int(x["shape"][0]), int(x["shape"][1])


class JobPreparer:
    def __init__(
        self,
        settings: Settings,
        models_: ModelStore,
        announce: Callable[[ModelInfo, str | None], Awaitable[None]],
        datasets=None,
    ) -> None:
        self.settings = settings
        self.models = models_
        self.announce = announce
        self.datasets = datasets  # the DatasetService, where jobs may name a datasetId

    async def prepare(self, body: dict, agent_id: str | None = None) -> PreparedJob:
        if ("dataBatch" in body) == ("datasetId" in body):
            raise BadRequest("a training job takes exactly one of dataBatch or datasetId")
        family, name = jobs.parse_model_type(body["modelType"])
        if family is None:
            return await self._prepare_program_job(name, body, agent_id)
        dataset = None
        if "datasetId" in body:
            dataset = await self._dataset(body, agent_id)
            rows, width = dataset_shape(dataset, family)
        else:
            jobs.check_shape(body)
            rows, width = len(body["dataBatch"]), len(body["dataBatch"][0]["x"])
        existing = await asyncio.to_thread(self.models.get, name)
        if existing is None and not self.settings.auto_create_models:
            raise await asyncio.to_thread(lambda: unknown_model(name, self.models.names()))
        signature = self._signature(family, body, existing.signature if existing else None, width)
        if existing is not None:
            jobs.check_same_signature(name, existing.signature, signature)
        request = jobs.job_request(self.settings, name, signature, body)
        request["numSamples"] = rows
        x = y = None
        if dataset is not None:
            request["datasetId"] = dataset.dataset_id
        else:
            x, y = await asyncio.to_thread(jobs.check_batch, signature, body["dataBatch"])
        if existing is not None:
            return PreparedJob(existing, request, x, y)
        # Only a request valid in every other respect may create the model.
        info, created = await asyncio.to_thread(self.models.ensure, name, signature)
        if created:
            await self.announce(info, None)
        return PreparedJob(info, request, x, y)

    async def _dataset(self, body: dict, agent_id: str | None):
        if self.datasets is None:
            raise BadRequest("datasetId needs the datasets service")
        # Another agent's dataset is not found, as if it did not exist.
        return await asyncio.to_thread(self.datasets.get, body["datasetId"], agent_id)

    async def _prepare_program_job(self, name: str, body: dict, agent_id: str | None) -> PreparedJob:
        """A job for a model with its own program: its data is a dataset (any arrays) or a
        dataBatch (rows of numbers of one width) written as batch.npz; the model's
        hyperparameters go to /job.json."""
        info = await asyncio.to_thread(self.models.get, name)
        if info is None or info.program is None:
            raise BadRequest(
                f"modelType {name!r} names no registered model; a built-in family's model is "
                "family or family:name, a model with its own program is registered first"
            )
        if body.get("modelConfig"):
            raise BadRequest(f"modelConfig applies to built-in families only, not to {name!r}")
        request = jobs.job_request(self.settings, name, None, body)
        # The job's own hyperparameters over the model's defaults.
        request["hyperparameters"] = {
            **(info.program.get("hyperparameters") or {}),
            **request["hyperparameters"],
        }
        if "datasetId" in body:
            dataset = await self._dataset(body, agent_id)
            request["datasetId"], request["numSamples"] = dataset.dataset_id, max(dataset.num_rows, 1)
            return PreparedJob(info, request, None, None)
        x, y = await asyncio.to_thread(jobs.check_rows, body["dataBatch"])
        return PreparedJob(info, request, x, y)

    def _signature(
        self, family: ModelFamily, body: dict, existing: models.Signature | None, width: int
    ) -> models.Signature:
        if "dataBatch" in body:
            return jobs.job_signature(self.settings, family, body, existing)
        config = body.get("modelConfig") or {}
        if existing is None and family not in jobs.SINGLE_OUTPUT and "numClasses" not in config:
            raise BadRequest(f"modelConfig.numClasses is required to create a {family} model from a dataset")
        # The same rules as a batch's, with the dataset's width and a label the config allows.
        labels = int(config.get("numClasses", existing.num_classes if existing else 1)) - 1
        stand_in = {**body, "dataBatch": [{"x": [0.0] * width, "y": max(labels, 0)}]}
        return jobs.job_signature(self.settings, family, stand_in, existing)
