"""The ``sql`` task type: one parameterised statement in one committed transaction.

Result: ``{"rowcount": int, "rows": [{column: value}, ...]}``. The ``rows`` key is present only
for statements that return rows (``SELECT``, ``... RETURNING``; then ``rowcount`` is the number of
rows), and absent otherwise (then ``rowcount`` is the driver's count of affected rows, ``-1`` when
it cannot tell, e.g. DDL).

Values are made JSON-able: an integral ``Decimal`` becomes an int, any other finite one a float
(cast to text in SQL when every digit matters); NaN/infinity become the strings ``"NaN"``,
``"Infinity"``, ``"-Infinity"``; dates, times and datetimes ISO-8601 strings; intervals seconds
(float); bytes base64 strings; UUIDs and anything else unknown ``str(value)``.

Binds are SQLAlchemy ``text()`` binds: write ``CAST(:x AS int)`` rather than ``:x::int``, and
escape a colon that starts a word inside a literal as ``\\:`` (``'{"a"\\:1}'``).

Failures: a connection that cannot be opened or is lost, deadlocks, serialization failures and
a locked SQLite database are retried; every other SQL error and an ``expect_rowcount`` mismatch
fail at once, after rolling the transaction back.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import os
import threading
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from flowq.context import TaskContext
from flowq.errors import PermanentError, TaskError

ENV_PREFIX = "FLOWQ_CONN_"

# SQLSTATE classes and codes worth another attempt: connection exception, transaction rollback
# (serialization failure, deadlock), insufficient resources, lock not available, shutdowns.
_RETRYABLE_SQLSTATE_CLASSES = ("08", "40", "53")
_RETRYABLE_SQLSTATES = ("55P03", "57P01", "57P02", "57P03")

_engines: dict[str, tuple[str, Engine]] = {}
_engines_pid = os.getpid()
_engines_lock = threading.Lock()


class _RowcountMismatch(PermanentError):
    """``expect_rowcount`` did not match; raised inside the transaction so that it rolls back."""


def env_var(name: str) -> str:
    """The environment variable that holds connection ``name``'s URL."""
    return ENV_PREFIX + name.upper()


def connection_url(name: str) -> str | None:
    """The SQLAlchemy URL of connection ``name``, or None when it is not configured."""
    return os.environ.get(env_var(name)) or None


def engine(name: str) -> Engine:
    """This process's engine for connection ``name``; re-created after a fork or a URL change."""
    global _engines_pid
    url = connection_url(name)
    if url is None:
        raise PermanentError(f"sql connection {name!r} is not configured: set {env_var(name)}")
    with _engines_lock:
        if _engines_pid != os.getpid():
            for _, inherited in _engines.values():
                inherited.dispose(close=False)  # never touch the parent's sockets
            _engines.clear()
            _engines_pid = os.getpid()
        key = env_var(name)
        cached = _engines.get(key)
        if cached is not None and cached[0] == url:
            return cached[1]
        try:
            new = sqlalchemy.create_engine(url, pool_pre_ping=True)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
            raise PermanentError(
                f"sql connection {name!r}: {env_var(name)} is not a usable SQLAlchemy URL: "
                f"{_one_line(exc)}"
            ) from exc
        if cached is not None:
            cached[1].dispose()
        _engines[key] = (url, new)
        return new


def execute(spec: Mapping[str, Any], ctx: TaskContext) -> Any:
    """Run ``query`` with ``params`` bound on connection ``connection``; commit and return."""
    name, query, params, expect = _arguments(spec)
    where = f"sql connection {name!r}"
    db = engine(name)
    try:
        connection = db.connect()
    except sa_exc.SQLAlchemyError as exc:
        raise TaskError(f"{where}: cannot connect: {_one_line(exc)}") from exc
    try:
        with connection, connection.begin():
            result = connection.execute(sqlalchemy.text(query), params)
            outcome: dict[str, Any]
            if result.returns_rows:
                keys = list(result.keys())
                rows = [{k: to_json(v) for k, v in zip(keys, row, strict=True)} for row in result]
                outcome = {"rowcount": len(rows), "rows": rows}
            else:
                outcome = {"rowcount": result.rowcount}
            if expect is not None and outcome["rowcount"] != expect:
                raise _RowcountMismatch(
                    f"{where}: expected rowcount {expect}, got {outcome['rowcount']}; rolled back"
                )
    except _RowcountMismatch:
        raise
    except sa_exc.SQLAlchemyError as exc:
        if _is_transient(exc):
            raise TaskError(f"{where}: {_one_line(exc)}") from exc
        raise PermanentError(f"{where}: {_one_line(exc)}") from exc
    return outcome


def _arguments(spec: Mapping[str, Any]) -> tuple[str, str, dict[str, Any], int | None]:
    name, query, params = spec.get("connection"), spec.get("query"), spec.get("params")
    if not isinstance(name, str) or not name:
        raise PermanentError("sql task needs a 'connection' name")
    if not isinstance(query, str) or not query.strip():
        raise PermanentError(f"sql connection {name!r}: the task needs a 'query' string")
    if params is not None and not isinstance(params, Mapping):
        raise PermanentError(f"sql connection {name!r}: 'params' must be a mapping")
    expect = spec.get("expect_rowcount")
    if expect is not None and (isinstance(expect, bool) or not isinstance(expect, int)):
        raise PermanentError(f"sql connection {name!r}: 'expect_rowcount' must be an integer")
    return name, query, dict(params or {}), expect


def _is_transient(exc: sa_exc.SQLAlchemyError) -> bool:
    """True for failures another attempt may not meet: lost connections, deadlocks, locks."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.InterfaceError | sa_exc.DisconnectionError):
        return True
    if not isinstance(exc, sa_exc.OperationalError):
        return False
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str) and state:
        return state.startswith(_RETRYABLE_SQLSTATE_CLASSES) or state in _RETRYABLE_SQLSTATES
    message = str(orig).lower()
    return "database is locked" in message or "database is busy" in message


def to_json(value: Any) -> Any:
    """``value`` as a JSON-serialisable value (see the module docstring for the mapping)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float | Decimal):
        return _number(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def _number(value: float | Decimal) -> int | float | str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
        if value == value.to_integral_value():
            return int(value)
        return float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _one_line(exc: BaseException) -> str:
    """The driver's error class and message on one line, without SQLAlchemy's SQL echo."""
    orig = getattr(exc, "orig", None)
    source = orig if isinstance(orig, BaseException) else exc
    text = " ".join(str(source).split()).split(" [SQL:")[0].split(" (Background on this")[0]
    if source is orig:
        text = f"{type(orig).__name__}: {text}"
    text = text or type(source).__name__
    return text if len(text) <= 300 else text[:297] + "..."
