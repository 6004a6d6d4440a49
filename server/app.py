"""The aiohttp application: the middleware that measures requests and maps typed errors to
JSON answers, the services' start and stop, and the routes from server.http."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from aiohttp import web

from native import LauncherRefused
from runtime.admission import Admission, AgentQuota, HostBudget
from runtime.cgroups import detect_mode
from runtime.gpu import discover as discover_gpus
from runtime.pool import WarmPool, parse_profiles
from runtime.sandbox import SandboxManager
from runtime.supervisor import Supervisor

from .audit import AuditLog
from .auth import AgentRegistry
from .config import Settings
from .dashboard import install as install_dashboard
from .datasets import DatasetService
from .errors import StartupRefused, WonderCraftError
from .http import build_api
from .http.openapi import API_KEY
from .metrics import LoopLagMonitor, Metrics
from .sandboxes import SandboxService
from .services import SERVICES, Services
from .store import Store
from .telemetry import TelemetryService
from .training.jobs import resource_caps
from .training.runner import OUTPUT_LIMIT_BYTES, cycle_caps
from .training.service import TrainingService

log = logging.getLogger("wondercraft.http")

# Each operation caps its own body (openapi.DEFAULT_MAX_BODY_BYTES unless it says otherwise);
# this is aiohttp's outer bound for anything read through request.read().
CLIENT_MAX_SIZE = 16 * 1024 * 1024


def error_body(code: str, message: str, **details) -> dict:
    error = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def _route_label(request: web.Request) -> str:
    """The route template, not the raw path, so ids do not explode the label set."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler):
    metrics = request.app[SERVICES].metrics
    started = time.perf_counter()
    status = 500
    metrics.http_requests_in_flight.inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.http_requests_in_flight.dec()
        route = _route_label(request)
        metrics.http_requests.labels(request.method, route, str(status)).inc()
        metrics.http_request_duration.labels(request.method, route).observe(time.perf_counter() - started)
        log.debug("request", extra={"method": request.method, "route": route, "status": status})


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no endpoint at {request.path}; see /v1/openapi.json"
    if exc.status == 405:
        return (
            f"{request.method} is not allowed on {request.path}; allowed: {exc.headers.get('Allow', 'none')}"
        )
    if exc.text and not exc.text.startswith(str(exc.status)):
        return exc.text
    return exc.reason


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except WonderCraftError as exc:
        headers = dict(getattr(exc, "headers", {}))
        if getattr(exc, "retry_after_s", None) is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
        response = web.json_response(
            error_body(exc.code, exc.message, **exc.details), status=exc.status, headers=headers
        )
        if getattr(exc, "close_connection", False):
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_") if exc.reason else "http_error"
        return web.json_response(
            error_body(code, _http_error_message(request, exc)),
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")},
        )
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return web.json_response(
            error_body("internal_error", "internal error; see the service log"), status=500
        )


async def _start_services(app: web.Application) -> None:
    services = app[SERVICES]
    # First, before anything is made: the executor (ray: refuses a cluster without token auth).
    await services.petals.executor.start()
    services.loop_lag.start()
    await services.telemetry.start()
    # Start-up recovery: sweep what a crashed run left, then pick up its unfinished cycles.
    orphans = await services.runtime.start()
    if orphans["cgroups"] or orphans["netns"]:
        log.warning("start-up recovery removed orphans", extra={"orphans": orphans})
    await services.sandboxes.start()
    await services.datasets.start()
    await services.petals.start()
    if services.pool is not None:
        services.pool.start()  # refills in the background; READY never waits for a warm sandbox
    services.supervisor.start()


async def _begin_shutdown(app: web.Application) -> None:
    # Runs before aiohttp waits for open requests: end live streams so they can finish.
    app[SERVICES].telemetry.begin_shutdown()


async def _stop_services(app: web.Application) -> None:
    # Runs after every request has finished: nothing can be accepted after this final flush.
    services = app[SERVICES]
    await services.supervisor.stop()
    await services.petals.stop(services.settings.shutdown_grace_s)
    if services.pool is not None:
        await services.pool.close()
    await services.sandboxes.destroy_all()
    await services.runtime.close()
    await services.telemetry.stop()
    await services.loop_lag.stop()


def admission_from(settings: Settings) -> Admission:
    """The host budget and agent quotas of these settings (0 in a per-agent cap: none)."""
    gpus = len(discover_gpus())
    host = HostBudget.from_host(
        memory_share=settings.sandbox_host_memory_share_percent / 100,
        service_reserve_mb=settings.sandbox_service_reserve_mb,
        cpu_overcommit=settings.sandbox_cpu_overcommit,
        gpus=gpus,
    )
    quota = AgentQuota(
        max_sandboxes=settings.sandbox_agent_max_sandboxes,
        memory_mb=settings.sandbox_agent_max_memory_mb or None,
        gpus=settings.sandbox_agent_max_gpus or None,
    )
    return Admission(host, quota)


def warm_pool_from(settings: Settings, runtime: SandboxManager, metrics: Metrics) -> WarmPool | None:
    """The warm pool WARM_POOL asks for, its sandboxes shaped as a job that asks for no caps
    (a job with other caps goes cold), or None: off, or cycles run on Ray nodes."""
    if settings.executor != "local":
        return None
    profiles = parse_profiles(
        settings.warm_pool, cycle_caps(resource_caps(settings, {})), settings.warm_pool_idle_s
    )
    if not any(profile.size for profile in profiles):
        return None
    lifetime_s = settings.warm_pool_idle_s + settings.sandbox_max_lifetime_s + 60
    return WarmPool(
        runtime, profiles, metrics=metrics, lifetime_s=lifetime_s, output_limit_bytes=OUTPUT_LIMIT_BYTES
    )


def create_app(settings: Settings, store: Store, admin_token: str | None = None) -> web.Application:
    metrics = Metrics()
    audit = AuditLog(store, metrics)
    state_dir = Path(store.path).resolve().parent
    try:
        runtime = SandboxManager(
            state_dir,
            rootfs_image=Path(settings.rootfs_image) if settings.rootfs_image else None,
            output_limit_bytes=settings.sandbox_output_limit_bytes,
            admission=admission_from(settings),
            uid_range=settings.sandbox_uid_range,
            service_reserve_bytes=settings.sandbox_service_reserve_mb << 20,
        )
    except (LauncherRefused, ValueError) as exc:
        # A dynamic launcher, or a uid range that holds host accounts: refused, named.
        raise StartupRefused(str(exc)) from None
    telemetry = TelemetryService(
        store,
        metrics,
        batch_size=settings.telemetry_batch_size,
        flush_interval_s=settings.telemetry_flush_interval_s,
        retention_days=settings.telemetry_retention_days,
    )
    pool = warm_pool_from(settings, runtime, metrics)
    petals = TrainingService(
        settings, store, state_dir, runtime, telemetry=telemetry, audit=audit, metrics=metrics, pool=pool
    )
    services = Services(
        settings=settings,
        store=store,
        metrics=metrics,
        audit=audit,
        agents=AgentRegistry(store, audit, admin_token),
        telemetry=telemetry,
        loop_lag=LoopLagMonitor(metrics),
        started_monotonic=time.monotonic(),
        cgroup_mode=detect_mode(),
        runtime=runtime,
        pool=pool,
        supervisor=Supervisor(runtime, settings.sandbox_cleanup_interval_s),
        sandboxes=SandboxService(
            settings, store, state_dir, runtime, audit=audit, metrics=metrics, petals=petals
        ),
        petals=petals,
        datasets=DatasetService(settings, store, state_dir, audit=audit, in_use=petals.dataset_in_use),
    )
    petals.preparer.datasets = services.datasets
    app = web.Application(middlewares=[metrics_middleware, error_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[SERVICES] = services
    api = build_api()
    app[API_KEY] = api
    api.install(app, services.agents.authenticate)
    install_dashboard(app)
    app.on_startup.append(_start_services)
    app.on_shutdown.append(_begin_shutdown)
    app.on_cleanup.append(_stop_services)
    return app


def dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"))
