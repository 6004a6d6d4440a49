"""The aiohttp application: middleware that maps typed errors, and the routes."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from aiohttp import web

from runtime.cgroups import detect_mode

from . import VERSION
from .config import Settings
from .errors import WonderCraftError
from .store import Store

log = logging.getLogger("wondercraft.http")


@dataclass
class ServiceState:
    settings: Settings
    store: Store
    started_monotonic: float
    cgroup_mode: str


SERVICE = web.AppKey("service", ServiceState)


def error_body(code: str, message: str, **details) -> dict:
    error = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except WonderCraftError as exc:
        headers = {}
        if getattr(exc, "retry_after_s", None) is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
        return web.json_response(
            error_body(exc.code, exc.message, **exc.details), status=exc.status, headers=headers
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_") if exc.reason else "http_error"
        return web.json_response(
            error_body(
                code, exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
            ),
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")},
        )
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return web.json_response(
            error_body("internal_error", "internal error; see the service log"), status=500
        )


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response(
        {
            "status": "ok",
            "version": VERSION,
            "cgroupMode": service.cgroup_mode,
            "uptimeSeconds": round(time.monotonic() - service.started_monotonic, 3),
        }
    )


def create_app(settings: Settings, store: Store) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=16 * 1024 * 1024)
    app[SERVICE] = ServiceState(
        settings=settings, store=store, started_monotonic=time.monotonic(), cgroup_mode=detect_mode()
    )
    app.router.add_get("/healthz", healthz)
    return app


def dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"))
