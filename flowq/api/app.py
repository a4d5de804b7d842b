"""The API app factory: routes, authentication, the body limit, and errors mapped to 4xx/5xx."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from kombu.exceptions import OperationalError as BrokerError
from prometheus_client import CollectorRegistry
from sqlalchemy import exc as sa_exc
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import flowq
from flowq.api.auth import BearerAuth
from flowq.api.metrics import StoreCollector
from flowq.api.routes import executions, invalid_json, service, workflows
from flowq.client import Client
from flowq.errors import Conflict, InvalidTransition, NotFound, ValidationError
from flowq.settings import Settings
from flowq.store.store import NO_TABLES, first_line, missing_tables
from flowq.ui import mount_ui

log = logging.getLogger("flowq.api")

DEFAULT_MAX_BODY = 1024 * 1024
MAX_BODY_VARIABLE = "FLOWQ_API_MAX_BODY"
# How long a request retries a lost state store (a Postgres restart) before its 503: a caller
# waiting on an answer is better told soon that the store is down (workers wait 60 s)
STORE_RETRY_SECONDS = 5.0

DESCRIPTION = """\
Register workflow definitions, start executions and watch or steer them (SPEC section 5).

Errors are JSON `{"detail": "<one line>"}`; 422 adds `"problems"` (one line each) and a
refused state change (409) adds the execution's current `"state"`. When `FLOWQ_API_TOKEN`
is set every path but `/healthz` needs `Authorization: Bearer <token>`.
"""


def max_body_from_env(env: Mapping[str, str] | None = None) -> int:
    """The body size limit in bytes: FLOWQ_API_MAX_BODY, else 1 MiB."""
    raw = (os.environ if env is None else env).get(MAX_BODY_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_MAX_BODY
    if not raw.isdigit() or int(raw) < 1:
        raise ValidationError(
            f"{MAX_BODY_VARIABLE}={raw!r}: expected a number of bytes, e.g. 1048576"
        )
    return int(raw)


class BodyLimit:
    """Answers 413 to a request body larger than ``limit`` bytes, before any route reads it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
        while True:  # read it all (at most limit + one chunk), then replay it
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(message, receive), send)
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, _replay(whole, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = (
            f"request body larger than {self.limit} bytes; send less "
            f"(the limit is {MAX_BODY_VARIABLE})"
        )
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


def _replay(first: Message, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return first
        return await receive()

    return replay


# -- errors ------------------------------------------------------------------------------------


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    body = {"detail": detail, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(body, status_code=status)


def _problem(err: Mapping[str, Any]) -> str:
    """One line for one pydantic/FastAPI error: ``query.limit: Input should be ...``."""
    loc = [str(part) for part in err.get("loc", ())]
    if err.get("type") == "json_invalid":
        reason = (err.get("ctx") or {}).get("error", "not JSON")
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        return f"body: invalid JSON{at}: {reason}"
    where = ".".join(loc) or "request"
    message = str(err.get("msg", "invalid"))
    value = err.get("input")
    if isinstance(value, bytes) and loc == ["body"]:
        return "body: not read as JSON; send it with `Content-Type: application/json`"
    if err.get("type") == "extra_forbidden":
        message = "unknown key"
    elif isinstance(value, str | int | float | bool) and err.get("type") != "missing":
        shown = repr(value)
        message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return f"{where}: {message}"


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, RequestValidationError):
        problems = [_problem(e) for e in exc.errors()]
    else:
        assert isinstance(exc, ValidationError)
        problems = exc.problems
    detail = problems[0] if len(problems) == 1 else f"{len(problems)} problems: {problems[0]} ..."
    return _error(422, detail, problems=problems)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method...) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI's "There was an error parsing the body": say what was wrong with it
        problem = invalid_json(exc.__cause__)
        return _error(422, problem, problems=[problem])
    headers = dict(exc.headers or {})
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such path: {request.url.path} (the API is described at /openapi.json)"
    if exc.status_code == 405:
        allowed = _allowed_methods(request, headers.get("Allow", ""))
        headers["Allow"] = ", ".join(allowed)
        detail = (
            f"{request.method} is not allowed on {request.url.path}; use {' or '.join(allowed)}"
        )
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


def _allowed_methods(request: Request, fallback: str) -> list[str]:
    """Every method the OpenAPI document lists for this path (Starlette names one route's)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods) or [m.strip() for m in fallback.split(",") if m.strip()]


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return _error(404, str(exc))


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    state = exc.current if isinstance(exc, InvalidTransition) else None
    return _error(409, str(exc), state=state)


async def _store_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("state store unavailable: %s", first_line(exc))
    return _error(503, f"state store unavailable: {first_line(exc)}; try again later")


async def _store_not_set_up(request: Request, exc: Exception) -> JSONResponse:
    if not missing_tables(exc):
        return await _bug(request, exc)
    log.error(NO_TABLES)
    return _error(503, NO_TABLES)


async def _store_refused(_: Request, exc: Exception) -> JSONResponse:
    return _error(422, f"the state store refused a value: {first_line(exc)}")


async def _broker_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("broker unavailable: %s", first_line(exc))
    return _error(503, f"broker unavailable: {first_line(exc)}; try again later")


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal error; the API log has the details")


def _install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ValidationError, _validation)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(InvalidTransition, _conflict)
    app.add_exception_handler(sa_exc.OperationalError, _store_down)
    app.add_exception_handler(sa_exc.InterfaceError, _store_down)
    app.add_exception_handler(sa_exc.DataError, _store_refused)
    app.add_exception_handler(sa_exc.ProgrammingError, _store_not_set_up)
    # the same from the hot path's own psycopg connections (flowq.store.hotpath)
    app.add_exception_handler(psycopg.OperationalError, _store_down)
    app.add_exception_handler(psycopg.InterfaceError, _store_down)
    app.add_exception_handler(psycopg.DataError, _store_refused)
    app.add_exception_handler(psycopg.errors.UndefinedTable, _store_not_set_up)
    app.add_exception_handler(BrokerError, _broker_down)
    app.add_exception_handler(Exception, _bug)


# -- the app -----------------------------------------------------------------------------------


def create_api(
    client: Client | None = None,
    settings: Settings | None = None,
    *,
    max_body: int | None = None,
) -> FastAPI:
    """The HTTP API over ``client`` (made from ``settings`` or the environment if not given).

    A client the app makes itself is closed when the app shuts down.
    """
    settings = settings or (client.settings if client is not None else Settings.from_env())
    limit = max_body if max_body is not None else max_body_from_env()
    owned = client is None
    api_client = (
        client if client is not None else Client(settings, store_retry_seconds=STORE_RETRY_SECONDS)
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            api_client.close()

    app = FastAPI(
        title="flowq",
        version=flowq.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.client = api_client
    app.state.registry = registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(api_client.store, api_client.coordinator.definitions.get))

    # Security() only documents the scheme in OpenAPI; BearerAuth enforces it, before any
    # body is read, so a request without the token learns nothing about its body.
    guarded = [Security(HTTPBearer(auto_error=False))] if settings.api_token else []
    app.include_router(workflows.router, dependencies=guarded)
    app.include_router(executions.router, dependencies=guarded)
    app.include_router(service.metrics, dependencies=guarded)
    app.include_router(service.health)
    _install_error_handlers(app)

    app.add_middleware(BodyLimit, limit=limit)
    if settings.api_token:
        app.add_middleware(BearerAuth, token=settings.api_token)
    mount_ui(app)  # the dashboard at /ui: its static files ahead of the auth, its data behind it
    return app
