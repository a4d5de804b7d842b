"""The ``http`` task type: one HTTP request through a pooled, per-process ``requests.Session``.

Result: ``{"status": int, "headers": {name: value}, "body": <parsed JSON, or text>}``.

Choices where SPEC is silent:

- ``method`` defaults to ``GET``; header names in the result are lower-cased (HTTP/2 style), so
  templates can rely on ``results.x.headers['content-type']``.
- ``body`` is parsed as JSON when the response says ``application/json`` or ``*/*+json`` (and
  parses); otherwise it is the decoded text.
- ``request_timeout`` defaults to the task's ``timeout``, else 30 seconds (Ansible ``uri``'s
  default), so a dead server never holds a worker forever.
- a ``body`` that is not a string (a native template result) is sent as ``json.dumps(body)``.
- an invalid URL or too many redirects fail at once; other transport errors are retried.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from flowq.context import TaskContext
from flowq.errors import PermanentError, TaskError

DEFAULT_REQUEST_TIMEOUT = 30.0

_session: tuple[int, requests.Session] | None = None
_session_lock = threading.Lock()


def session() -> requests.Session:
    """This process's pooled session, created on first use and re-created after a fork."""
    global _session
    pid = os.getpid()
    with _session_lock:
        if _session is None or _session[0] != pid:
            _session = (pid, requests.Session())
        return _session[1]


def execute(spec: Mapping[str, Any], ctx: TaskContext) -> Any:
    """Send the request that ``spec`` describes and return status, headers and body."""
    method = str(spec.get("method") or "GET").upper()
    url = spec.get("url")
    if not isinstance(url, str) or not url:
        raise PermanentError("http task needs a 'url' string")
    where = f"{method} {_redact(url)}"
    if spec.get("json") is not None and spec.get("body") is not None:
        raise PermanentError(f"{where}: set either 'json' or 'body', not both")
    timeout = _timeout(spec, where)
    try:
        response = session().request(
            method,
            url,
            headers=_headers(spec.get("headers"), where),
            params=spec.get("params"),
            json=spec.get("json"),
            data=_body(spec.get("body")),
            timeout=timeout,
        )
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
        raise PermanentError(f"{where}: invalid URL: {_reason(exc)}") from exc
    except (requests.exceptions.InvalidSchema, requests.exceptions.TooManyRedirects) as exc:
        raise PermanentError(f"{where}: {_reason(exc)}") from exc
    except requests.exceptions.Timeout as exc:
        raise TaskError(f"{where}: no response within {timeout:g}s") from exc
    except requests.exceptions.RequestException as exc:
        raise TaskError(f"{where}: {_reason(exc)}") from exc
    _check_status(response, spec.get("expect_status"), where)
    return {
        "status": response.status_code,
        "headers": {name.lower(): value for name, value in response.headers.items()},
        "body": _parse_body(response),
    }


def _check_status(response: requests.Response, expect: Any, where: str) -> None:
    """Raise unless the status is expected: retryable for 5xx, permanent for anything else."""
    status = response.status_code
    if expect is None:
        if 200 <= status < 300:
            return
        wanted = "2xx"
    else:
        codes = _status_codes(expect, where)
        if status in codes:
            return
        wanted = ", ".join(str(code) for code in codes)
    message = f"{where}: {status} {response.reason or ''}".rstrip() + f" (expected {wanted})"
    if status >= 500:
        raise TaskError(message)
    raise PermanentError(message)


def _status_codes(expect: Any, where: str) -> list[int]:
    items = expect if isinstance(expect, list | tuple) else [expect]
    try:
        return [int(item) for item in items]
    except (TypeError, ValueError):
        raise PermanentError(f"{where}: 'expect_status' must be a list of integers") from None


def _headers(headers: Any, where: str) -> dict[str, str] | None:
    if headers is None:
        return None
    if not isinstance(headers, Mapping):
        raise PermanentError(f"{where}: 'headers' must be a mapping of name to value")
    return {str(name): str(value) for name, value in headers.items() if value is not None}


def _body(body: Any) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    return (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")


def _timeout(spec: Mapping[str, Any], where: str) -> float:
    value = spec.get("request_timeout")
    if value is None:
        value = spec.get("timeout") or DEFAULT_REQUEST_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise PermanentError(f"{where}: 'request_timeout' must be a number of seconds") from None
    if seconds <= 0:
        raise PermanentError(f"{where}: 'request_timeout' must be > 0, got {value}")
    return seconds


def _parse_body(response: requests.Response) -> Any:
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            return response.json()
        except ValueError:
            pass
    return response.text


def _reason(exc: BaseException) -> str:
    """The root cause of a transport error in a few words, e.g. ``Connection refused``."""
    root: BaseException = exc
    seen = {id(root)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    if isinstance(root, OSError) and root.strerror:
        return root.strerror
    text = " ".join(str(root).split()) or type(root).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _redact(url: str) -> str:
    """The URL without credentials and query string, fit for an error message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
