"""Route modules of the HTTP API and what they share: the client, error responses, checks."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, cast

from fastapi import Depends, Request

from flowq.api.schemas import ErrorBody
from flowq.client import Client
from flowq.errors import ValidationError

MAX_DEPTH = 64  # of JSON values in request bodies
ERROR_TEXT = {
    401: "FLOWQ_API_TOKEN is set and the request lacks `Authorization: Bearer <token>`",
    404: "unknown workflow, version or execution",
    409: "a definition id@version stored with another body, or an illegal state change",
    413: "the body is larger than the limit (FLOWQ_API_MAX_BODY, 1 MiB by default)",
    422: "malformed JSON, a wrong type or value, an invalid definition or vars",
    503: "the state store or the broker does not answer",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes (401 and 503 are always possible)."""
    wanted = sorted({401, 503, *codes})
    return {code: {"model": ErrorBody, "description": ERROR_TEXT[code]} for code in wanted}


def _client(request: Request) -> Client:
    return cast(Client, request.app.state.client)


ClientDep = Annotated[Client, Depends(_client)]


def invalid_json(exc: BaseException) -> str:
    """The problem line for a request body that is not JSON, from the parser's error."""
    if isinstance(exc, json.JSONDecodeError):
        return f"body: invalid JSON at character {exc.pos}: {exc.msg}"
    if isinstance(exc, RecursionError):
        return "body: invalid JSON: nested too deeply"
    return "body: invalid JSON: not UTF-8"


def check_json(value: Any, where: str) -> None:
    """Refuse NaN/Infinity (Python's JSON parser takes them, JSON has none) and deep nesting."""
    todo: list[tuple[Any, str, int]] = [(value, where, 0)]
    while todo:
        item, path, depth = todo.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValidationError(f"{path}: {item!r} is not a JSON number; send a finite number")
        if isinstance(item, Mapping | list) and depth >= MAX_DEPTH:
            raise ValidationError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, Mapping):
            todo.extend((v, f"{path}.{k}", depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            todo.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
