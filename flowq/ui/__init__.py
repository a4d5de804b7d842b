"""The web dashboard: static pages at ``/ui`` that drive the HTTP API from the browser.

The pages (``static/``: plain ES modules, no build step, nothing fetched from elsewhere) hold
no data: every execution, definition and history they show comes from the API, with the same
bearer token as any other client. So the files are served ahead of the API's authentication,
and the one route added here, the compiled plan as ``flowq plan`` prints it, sits behind it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi import Path as PathParam
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowq.client import Client
from flowq.compiler import compile_workflow

__all__ = ["PREFIX", "STATIC", "mount_ui"]

PREFIX = "/ui"
API_PREFIX = f"{PREFIX}/api/"
STATIC = Path(__file__).resolve().parent / "static"

# The pages load only their own files and talk only to their own origin: no CDN, offline.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag), so an upgrade shows at once
}


def mount_ui(app: FastAPI) -> None:
    """Serve the dashboard at ``/ui`` of an app made by ``create_api`` (a second call does nothing).

    Call it after the app's own middleware is added: the files are then answered first, and
    everything else, ``/ui/api/...`` included, still passes the API's authentication.
    """
    if getattr(app.state, "ui_mounted", False):
        return
    app.state.ui_mounted = True
    app.include_router(router)
    app.add_middleware(UiFiles)


class UiFiles:
    """Answers GET and HEAD for the dashboard's files; hands every other request to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.files = StaticFiles(directory=STATIC)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or not _is_file(path):
            await self.app(scope, receive, send)
            return
        response = await self._response(scope, path)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(HEADERS)
            await send(message)

        await response(scope, receive, send_with_headers)

    async def _response(self, scope: Scope, path: str) -> Response:
        if path == PREFIX:  # relative file names in index.html need the trailing slash
            return RedirectResponse(scope.get("root_path", "") + PREFIX + "/")
        name = path[len(PREFIX) + 1 :] or "index.html"
        try:
            return await self.files.get_response(os.path.normpath(name), scope)
        except HTTPException as exc:
            detail = f"no such file in the dashboard: {path} (the dashboard is at {PREFIX}/)"
            return JSONResponse({"detail": detail}, status_code=exc.status_code)


def _route_path(scope: Scope) -> str:
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def _is_file(path: str) -> bool:
    return path == PREFIX or (path.startswith(PREFIX + "/") and not path.startswith(API_PREFIX))


# -- what the pages need beyond SPEC section 5 ------------------------------------------------

router = APIRouter(include_in_schema=False)


@router.get(f"{API_PREFIX}workflows/{{workflow_id}}/plan")
def get_plan(
    request: Request,
    workflow_id: Annotated[str, PathParam(max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")],
    version: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    """The compiled Celery canvas of one definition: the text of ``flowq plan`` and its JSON."""
    client = cast(Client, request.app.state.client)
    plan = compile_workflow(client.definition(workflow_id, version))
    return {"text": plan.render(), "plan": plan.to_dict()}
