"""Shared models defined explicitly (POST /v1/petals/models): a signature, version 0 and a round
policy; listed with the policy in force; deleted by the admin once no cycle is in flight (the
consensus history keeps every entry). Each change is announced to the round book as an event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..config import Settings
from ..errors import BadRequest, Conflict
from ..storage import cycles as cycle_rows
from ..storage.models import ModelInfo, ModelStore
from ..store import Store
from . import jobs, program_models, rounds
from .federation import AggregationChoice
from .policy import RoundPolicy


def default_policy(settings: Settings) -> RoundPolicy:
    return RoundPolicy(
        min_clients=settings.petals_min_clients,
        round_window_s=settings.petals_round_window_s,
        aggregation_threshold=settings.aggregation_threshold,
        round_deadline_s=settings.petals_round_deadline_s,
        allow_partial=settings.petals_allow_partial,
        aggregation=AggregationChoice(settings.aggregation_method),
    )


def policy_of(settings: Settings, info: ModelInfo) -> RoundPolicy:
    """The model's policy in force: what it was defined with over the service's defaults."""
    return default_policy(settings).updated(info.round_policy)


class ModelCatalog:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        models: ModelStore,
        post: Callable[[rounds.Event], None],
        audit=None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self._post = post
        self.audit = audit

    async def create(self, created_by: str | None, body: dict) -> dict:
        family, name = jobs.parse_model_type(body["modelType"])
        if family is None:
            raise BadRequest(
                f"{name!r} is no built-in family's model (family or family:name); a model with its own "
                "program is registered as multipart/form-data (parts spec, program, parameters, onnx)"
            )
        signature = jobs.model_signature(self.settings, family, body.get("modelConfig") or {})
        try:
            # Fixed when the model is defined: later changes of the service's defaults leave it be.
            policy = default_policy(self.settings).updated(body.get("roundPolicy")).as_json()
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        info, created = await asyncio.to_thread(self.models.ensure, name, signature, policy, created_by)
        if not created:
            raise Conflict(f"model {name!r} already exists", details={"model": self.view(info)})
        await self.announce(info, created_by)
        return self.view(info)

    async def create_with_program(self, created_by: str | None, upload, state_dir) -> dict:
        """A model with its own program (multipart): see program_models.register."""
        try:
            policy = default_policy(self.settings).updated(upload.spec.get("roundPolicy")).as_json()
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        info = await asyncio.to_thread(
            program_models.register, self.models, state_dir, self.settings, upload, policy, created_by
        )
        await self.announce(info, created_by)
        return self.view(info)

    async def announce(self, info: ModelInfo, created_by: str | None) -> None:
        policy = policy_of(self.settings, info)
        self._post(rounds.ModelAdded(info.name, info.current_version, policy))
        if self.audit is not None:
            body = {"signature": info.signature.as_dict() if info.signature else None, "version": 0,
                    "roundPolicy": policy.as_json(), "createdBy": created_by}  # fmt: skip
            if info.program is not None:
                body["program"] = program_models.public_view(info.program)
            await self.audit.append("model_created", info.name, body)

    def view(self, info: ModelInfo, viewer: str | None = None) -> dict:
        """The model as `viewer` (None: the admin) sees it: who defined it only for the admin or
        the author itself."""
        view = {
            "modelType": info.name,
            "signature": info.signature.as_dict() if info.signature else None,
            "currentVersion": info.current_version,
            "roundPolicy": policy_of(self.settings, info).as_json(),
            "createdBy": info.created_by if viewer is None or viewer == info.created_by else None,
        }
        if info.program is not None:
            view["program"] = program_models.public_view(info.program)
        return view

    async def list(self, viewer: str | None = None) -> dict:
        infos = await asyncio.to_thread(self.models.list_models)
        return {"models": [self.view(i, viewer) for i in infos], "count": len(infos)}

    async def delete(self, name: str, in_flight: int, aggregating: bool) -> dict:
        info = await asyncio.to_thread(self.models.require, name)
        active = await asyncio.to_thread(cycle_rows.count_active, self.store, name)
        if in_flight or active or aggregating:
            raise Conflict(
                f"model {name!r} has {max(in_flight, active)} cycles in flight or a round aggregating; "
                "delete it once they end"
            )
        await asyncio.to_thread(self.models.delete, name)
        self._post(rounds.ModelRemoved(name, time.monotonic()))
        if self.audit is not None:
            await self.audit.append("model_deleted", name, {"currentVersion": info.current_version})
        return {**self.view(info), "deleted": True}
