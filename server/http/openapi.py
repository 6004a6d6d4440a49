"""One declaration per endpoint builds its route, its request validation and its part of the
OpenAPI 3.1 document. Handlers get a `Call` whose caller is authenticated and whose path,
query and body already match the document; nothing reaches a handler unchecked."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import MultiMapping

from ..auth import Caller, require_admin
from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ..services import SERVICES, Services
from ..validation import SchemaValidator, describe, document_registry, parse_json, show
from .document import build_document

Access = Literal["open", "admin", "agent"]
DOCUMENT_URI = "urn:wondercraft:openapi"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Bodies above this are parsed and validated in a worker thread, off the event loop.
OFFLOAD_BODY_BYTES = 64 * 1024
_INTEGER = re.compile(r"^-?[0-9]{1,19}$")


@dataclass(frozen=True)
class Param:
    """A path or query parameter; query values are converted to the schema's type."""

    name: str
    schema: Mapping[str, Any]
    description: str = ""
    required: bool = False
    # Path parameters only: a regex the router matches, so /v1/sandbox/create is not
    # taken for DELETE /v1/sandbox/{sandboxId} (its 405 would then allow DELETE too).
    route_regex: str | None = None


@dataclass(frozen=True)
class Reply:
    """A documented success answer."""

    status: int
    description: str
    schema: Mapping[str, Any] | None = None
    media_type: str = "application/json"


@dataclass
class Call:
    """A validated request, as handlers see it."""

    request: web.Request
    caller: Caller | None  # None only for open operations
    path: dict[str, Any]
    query: dict[str, Any]
    body: Any

    @property
    def services(self) -> Services:
        return self.request.app[SERVICES]


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    description: str
    tag: str
    access: Access
    path_params: tuple[Param, ...]
    query: tuple[Param, ...]
    body: Mapping[str, Any] | None
    max_body_bytes: int
    raw_body: str | None
    replies: tuple[Reply, ...]
    errors: tuple[int, ...]
    multipart: Mapping[str, Any] | None = None  # the parts' schema, when the body may be multipart


@dataclass
class RouteTable:
    """The operations of one area of the API (agents, telemetry, sandboxes...)."""

    tag: str
    description: str
    operations: list[Operation] = field(default_factory=list)

    def operation(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        access: Access,
        replies: Sequence[Reply],
        description: str = "",
        path_params: Sequence[Param] = (),
        query: Sequence[Param] = (),
        body: Mapping[str, Any] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        raw_body: str | None = None,
        errors: Sequence[int] = (),
        operation_id: str | None = None,
        multipart: Mapping[str, Any] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Declares `handler` as METHOD PATH. `errors` lists the error statuses the handler itself
        raises; those from authentication and validation are added automatically. `raw_body`
        (a media type) declares a body that is not JSON: only its Content-Type is checked here,
        and the handler streams it from `call.request.content`, bounding it itself. `multipart`
        (the parts' schema) lets the body be multipart/form-data instead of JSON: then `call.body`
        is None and the handler reads the parts itself (aiohttp's multipart reader), bounding them."""
        if raw_body is not None and body is not None:
            raise ValueError(f"{method} {path}: a body is either JSON (body) or raw (raw_body), not both")

        def declare(handler: Handler) -> Handler:
            named = set(re.findall(r"{(\w+)}", path))
            if named != {p.name for p in path_params}:
                raise ValueError(f"{method} {path}: path parameters {sorted(named)} must all be declared")
            self.operations.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    handler=handler,
                    operation_id=operation_id or handler.__name__,
                    summary=summary,
                    description=description,
                    tag=self.tag,
                    access=access,
                    path_params=tuple(path_params),
                    query=tuple(query),
                    body=body,
                    max_body_bytes=max_body_bytes,
                    raw_body=raw_body,
                    replies=tuple(replies),
                    errors=tuple(errors),
                    multipart=multipart,
                )
            )
            return handler

        return declare


def _absolute_refs(schema: Any) -> Any:
    """A copy whose local `#/...` refs point into the document, for standalone validators."""
    if isinstance(schema, Mapping):
        return {
            k: (
                f"{DOCUMENT_URI}{v}"
                if k == "$ref" and isinstance(v, str) and v.startswith("#")
                else _absolute_refs(v)
            )
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_absolute_refs(v) for v in schema]
    return schema


class Api:
    """The assembled API: the OpenAPI document and the aiohttp routes, from the same tables."""

    def __init__(
        self,
        tables: Sequence[RouteTable],
        *,
        components: Mapping[str, Mapping[str, Any]],
        title: str,
        version: str,
        description: str,
    ) -> None:
        self.operations = [op for table in tables for op in table.operations]
        seen: set[tuple[str, str]] = set()
        for op in self.operations:
            if (op.method, op.path) in seen:
                raise ValueError(f"{op.method} {op.path} is declared twice")
            seen.add((op.method, op.path))
        self.document = build_document(self.operations, tables, components, title, version, description)
        self.document_bytes = json.dumps(self.document, separators=(",", ":")).encode()
        registry = document_registry(self.document, DOCUMENT_URI)
        self._resolver = registry.resolver()
        self._registry = registry
        self._component_validators: dict[str, SchemaValidator] = {}
        self._param_validators: dict[int, SchemaValidator] = {}
        self._param_schemas: dict[int, Mapping[str, Any]] = {}  # resolved once, not per request
        self._body_validators: dict[int, SchemaValidator] = {}
        for op in self.operations:
            for param in (*op.path_params, *op.query):
                self._param_validators[id(param)] = SchemaValidator(
                    _absolute_refs(param.schema), registry, document=self.document, document_uri=DOCUMENT_URI
                )
                self._param_schemas[id(param)] = self._resolved(param.schema)
            if op.body is not None:
                self._body_validators[id(op)] = SchemaValidator(
                    _absolute_refs(op.body), registry, document=self.document, document_uri=DOCUMENT_URI
                )

    def check(self, component: str, document: Any) -> None:
        """`document` against the named component schema (a BadRequest naming what is wrong)."""
        validator = self._component_validators.get(component)
        if validator is None:
            validator = SchemaValidator(
                {"$ref": f"{DOCUMENT_URI}#/components/schemas/{component}"}, self._registry,
                document=self.document, document_uri=DOCUMENT_URI,
            )  # fmt: skip
            self._component_validators[component] = validator
        validator.check(document)

    # ---- serving ----

    def install(self, app: web.Application, authenticate: Callable[[str | None], Caller]) -> None:
        for op in self.operations:
            route = op.path
            for param in op.path_params:
                if param.route_regex:
                    route = route.replace(f"{{{param.name}}}", f"{{{param.name}:{param.route_regex}}}")
            app.router.add_route(op.method, route, self._endpoint(op, authenticate), name=op.operation_id)

    def _endpoint(self, op: Operation, authenticate: Callable[[str | None], Caller]):
        async def endpoint(request: web.Request) -> web.StreamResponse:
            caller = None
            if op.access != "open":
                caller = authenticate(request.headers.get("Authorization"))
                if op.access == "admin":
                    require_admin(caller, f"{op.method} {op.path}")
            path = {p.name: self._convert(p, request.match_info[p.name], "path") for p in op.path_params}
            query = self._query(op, request.query)
            multipart = op.multipart is not None and request.content_type == "multipart/form-data"
            body = await self._body(op, request) if op.body is not None and not multipart else None
            if op.raw_body is not None:
                self._check_raw_media(op, request)
            return await op.handler(Call(request=request, caller=caller, path=path, query=query, body=body))

        endpoint.__name__ = op.operation_id
        return endpoint

    def _resolved(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            schema = self._resolver.lookup(_absolute_refs(schema)["$ref"]).contents
        return schema

    def _convert(self, param: Param, raw: str, location: str) -> Any:
        schema = self._param_schemas[id(param)]
        kind = schema.get("type")
        value: Any = raw

        def wrong() -> BadRequest:
            message = f"{param.name} must be {describe(schema)}, got {show(raw)}"
            return BadRequest(
                f"{location} parameter {message}",
                details={"errors": [{"field": param.name, "message": message}]},
            )

        if kind == "integer":
            if not _INTEGER.match(raw):
                raise wrong()
            value = int(raw)
        elif kind == "number":
            try:
                value = float(raw)
            except ValueError:
                raise wrong() from None
            if not math.isfinite(value):
                raise wrong()
        elif kind == "boolean":
            if raw not in ("true", "false"):
                raise wrong()
            value = raw == "true"
        problems = self._param_validators[id(param)].problems(value, whole=param.name)
        if problems:
            raise BadRequest(f"{location} parameter {problems[0]['message']}", details={"errors": problems})
        return value

    def _query(self, op: Operation, given: MultiMapping[str]) -> dict[str, Any]:
        declared = {p.name: p for p in op.query}
        unknown = sorted({name for name in given if name not in declared})
        if unknown:
            allowed = ", ".join(declared) or "none"
            raise BadRequest(
                f"unknown query parameter(s) {', '.join(show(n) for n in unknown[:5])}; allowed: {allowed}"
            )
        values: dict[str, Any] = {}
        for name, param in declared.items():
            raw = given.getall(name, [])
            if len(raw) > 1:
                raise BadRequest(f"query parameter {name} was given {len(raw)} times; give it at most once")
            if raw:
                values[name] = self._convert(param, raw[0], "query")
            elif param.required:
                raise BadRequest(f"query parameter {name} is required")
            elif "default" in param.schema:
                values[name] = param.schema["default"]
        return values

    @staticmethod
    def _check_raw_media(op: Operation, request: web.Request) -> None:
        if "Content-Type" in request.headers and request.content_type != op.raw_body:
            raise UnsupportedMediaType(
                f"Content-Type must be {op.raw_body}, got {show(request.content_type)}"
            )

    async def _body(self, op: Operation, request: web.Request) -> Any:
        limit = op.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise PayloadTooLarge(
                f"request body is {declared} bytes; {op.method} {op.path} accepts at most {limit}"
            )
        if "Content-Type" in request.headers:
            media = request.content_type
            if media != "application/json" and not media.endswith("+json"):
                raise UnsupportedMediaType(f"Content-Type must be application/json, got {show(media)}")
        raw = bytearray()
        # Read in pieces and stop at the limit: a body without Content-Length (chunked) must
        # not be buffered whole before its size is known.
        while chunk := await request.content.readany():
            if len(raw) + len(chunk) > limit:
                raise PayloadTooLarge(
                    f"request body is over {limit} bytes, the limit for {op.method} {op.path}"
                )
            raw += chunk
        if not raw.strip():
            raise BadRequest("request body is required: a JSON object")
        if len(raw) > OFFLOAD_BODY_BYTES:
            # Parsing and validating a large body takes long enough to stall other requests.
            return await asyncio.to_thread(self._parse_and_check, op, bytes(raw))
        return self._parse_and_check(op, bytes(raw))

    def _parse_and_check(self, op: Operation, raw: bytes) -> Any:
        document = parse_json(raw)
        self._body_validators[id(op)].check(document)
        return document


API_KEY = web.AppKey("api", Api)


def json_reply(data: Any, status: int = 200) -> web.Response:
    # orjson: a status poll's answer is encoded ~10x faster than by the json module; it
    # writes a NaN as null, so the answer is always valid JSON.
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )
