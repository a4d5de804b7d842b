"""Bearer-token authentication (FLOWQ_API_TOKEN): an ASGI middleware in front of every route."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# Reachable without a token: load balancers and orchestrators probe it.
OPEN_PATHS = frozenset({"/healthz"})
UNAUTHORIZED = "missing or invalid bearer token"


def token_matches(header: str | None, token: bytes) -> bool:
    """True if an Authorization header carries ``Bearer <token>``; compared in constant time."""
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Header values arrive latin-1 decoded: encoding them back gives the bytes that were sent.
    return hmac.compare_digest(credentials.strip().encode("latin-1"), token)


class BearerAuth:
    """Answers 401, revealing nothing, unless the request carries the configured token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if token_matches(Headers(scope=scope).get("authorization"), self.token):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": UNAUTHORIZED}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)
