"""The services one app holds, reachable from handlers as `call.services`.
Services know nothing of HTTP; a new one (sandboxes, petals) becomes a field here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from runtime.pool import WarmPool
from runtime.sandbox import SandboxManager
from runtime.supervisor import Supervisor

from .audit import AuditLog
from .auth import AgentRegistry
from .config import Settings
from .metrics import LoopLagMonitor, Metrics
from .store import Store

if TYPE_CHECKING:
    # At run time server.telemetry imports server.http (its schemas), whose openapi module
    # imports this one: the annotation alone needs the name.
    from .datasets import DatasetService
    from .sandboxes import SandboxService
    from .telemetry import TelemetryService
    from .training.service import TrainingService


@dataclass
class Services:
    settings: Settings
    store: Store
    metrics: Metrics
    audit: AuditLog
    agents: AgentRegistry
    telemetry: TelemetryService
    loop_lag: LoopLagMonitor
    started_monotonic: float
    cgroup_mode: str
    runtime: SandboxManager
    pool: WarmPool | None  # pre-warmed learn-cycle sandboxes (WARM_POOL), None when off
    supervisor: Supervisor
    sandboxes: SandboxService
    petals: TrainingService
    datasets: DatasetService


SERVICES = web.AppKey("services", Services)
