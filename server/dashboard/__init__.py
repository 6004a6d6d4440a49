"""The web dashboard at /dashboard: static pages that read the public /v1 API with the
signed-in token (admin or agent), plus the chart library from the build's node_modules.
It adds no API of its own, so it shows exactly what the token may see through /v1."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
# `npm ci` in web/ (make install) puts the pinned chart library here; it is never committed.
VENDOR_DIR = HERE / "web" / "node_modules" / "uplot" / "dist"
VENDOR_FILES = {"uPlot.esm.js": "text/javascript", "uPlot.min.css": "text/css"}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}

# No inline script or style anywhere, nothing from another origin, never framed.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _file_response(path: Path, content_type: str) -> web.StreamResponse:
    response = web.FileResponse(path, headers=SECURITY_HEADERS)
    response.content_type = content_type
    return response


async def index(request: web.Request) -> web.StreamResponse:
    return _file_response(STATIC_DIR / "index.html", "text/html")


async def redirect_to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard/")


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = (STATIC_DIR / name).resolve()
    # Only plain files directly under static/ with a known type: no traversal, no listing.
    if path.parent != STATIC_DIR or path.suffix not in STATIC_TYPES or not path.is_file():
        raise web.HTTPNotFound()
    return _file_response(path, STATIC_TYPES[path.suffix])


async def vendor_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in VENDOR_FILES:
        raise web.HTTPNotFound()
    path = VENDOR_DIR / name
    if not path.is_file():
        raise web.HTTPServiceUnavailable(
            text=f"the dashboard's chart library is not installed ({path}); run make install"
        )
    return _file_response(path, VENDOR_FILES[name])


def _same_origin(request: web.Request, origin: str) -> bool:
    return origin == f"{request.scheme}://{request.host}"


@web.middleware
async def origin_middleware(request: web.Request, handler):
    """A state-changing request that a browser sends from another page carries that page's
    Origin: refuse it. The API authenticates with a Bearer header, which a browser never adds
    on its own, so this is a second wall; clients that send no Origin (curl, ctl) pass."""
    origin = request.headers.get("Origin")
    if request.method in UNSAFE_METHODS and origin is not None and not _same_origin(request, origin):
        raise web.HTTPForbidden(
            text=f"{request.method} {request.path} from origin {origin[:100]!r} is refused; "
            "only the service's own origin may change state from a browser"
        )
    return await handler(request)


def install(app: web.Application) -> None:
    """Adds the /dashboard routes and the cross-origin check to `app`."""
    app.middlewares.append(origin_middleware)
    app.router.add_get("/dashboard", redirect_to_index)
    app.router.add_get("/dashboard/", index)
    app.router.add_get("/dashboard/static/{name}", static_file)
    app.router.add_get("/dashboard/vendor/{name}", vendor_file)
