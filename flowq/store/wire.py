"""A held claim's connection, spoken to through libpq's pipeline mode directly (``psycopg.pq``).

A held claim (``flowq.store.held``) needs a connection in pipeline mode: its claim goes out with
a Flush, its success with the Sync that commits both. psycopg's ``Pipeline`` sends a statement
and its Flush or Sync in separate writes, each after a poll, and runs its generic adaptation
per statement: 4 sends and 8 polls per task, and most of the client's CPU per statement. Here a
statement leaves with its Flush or Sync in one write and its result is read after one poll;
only the hot path's fixed statements run here (``flowq.store.hotpath``), so parameters and
results are converted for the few types they use, in text format. bench/RESULTS.md has the
measurements.

A statement may also be read later (``Pending.deferred``, ``send_sync``): a success whose result
nothing waits for is sent with its commit and read with the next statement's (see
``flowq.store.held``). Each statement's error stays with it: a read that passes through a deferred
statement's result keeps that error for whoever reads the statement, and raises only the errors
of the statements it was asked to read.

The psycopg connection underneath is used for nothing else while its ``Wire`` lives.
"""

from __future__ import annotations

import hashlib
import json
import re
import select
import threading
from collections import deque, namedtuple
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg import errors, pq
from psycopg.types.json import Jsonb

from flowq.store.statements import GENERAL_PATH

# The parameters whose type the server cannot tell from where they stand (a select list, a
# UNION): they are declared; every other parameter is sent as ``unknown`` (as psycopg sends a
# str) and typed by its context.
_TIMESTAMPTZ, _TIMESTAMP, _JSONB = 1184, 1114, 3802
_DECLARED = {datetime: _TIMESTAMPTZ, Jsonb: _JSONB}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
_SYNC_DONE = pq.ExecStatus.PIPELINE_SYNC
_ERROR = pq.ExecStatus.FATAL_ERROR


class Statement(NamedTuple):
    """A statement prepared under ``name`` on each connection that runs it."""

    name: bytes
    text: bytes  # with $1, $2... where psycopg's text has %(name)s
    params: tuple[str, ...]  # the name of each $n


_statements: dict[str, Statement] = {}


def statement(sql: str) -> Statement:
    """The prepared form of a statement written with psycopg's ``%(name)s`` placeholders."""
    known = _statements.get(sql)
    if known is not None:
        return known
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text = _PLACEHOLDER.sub(number, sql)
    if "%" in text:
        raise ValueError("only %(name)s placeholders are supported on a Wire")
    # named by its text: the same name in every thread and process, whichever made it first
    name = b"flowq_" + hashlib.blake2b(sql.encode(), digest_size=10).hexdigest().encode()
    made = Statement(name, text.encode(), tuple(names))
    _statements[sql] = made
    return made


def _types(st: Statement, params: Mapping[str, Any]) -> list[int]:
    types = []
    for name in st.params:
        value = params[name]
        oid = _DECLARED.get(type(value), 0)
        if oid == _TIMESTAMPTZ and value.tzinfo is None:
            oid = _TIMESTAMP
        types.append(oid)
    return types


def _quoted(item: str) -> str:
    return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode(value: Any) -> bytes | None:
    """A parameter in Postgres's text format."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Jsonb):
        dumped = (value.dumps or json.dumps)(value.obj)
        return dumped if isinstance(dumped, bytes) else dumped.encode()
    if isinstance(value, datetime):
        return value.isoformat().encode()
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return ("{" + ",".join(_quoted(v) for v in value) + "}").encode()
    raise TypeError(f"a Wire does not send {type(value).__name__} parameters")


def text_array(raw: str) -> list[str | None]:
    """A one-dimensional array in Postgres's text output (``{a,"b c",NULL}``)."""
    if raw in ("{}", ""):
        return []
    out: list[str | None] = []
    i, body = 0, raw[1:-1]
    while i <= len(body):
        if i < len(body) and body[i] == '"':
            chars, i = [], i + 1
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chars.append(body[i])
                i += 1
            out.append("".join(chars))
            i += 2  # the closing quote and the comma
        else:
            end = body.find(",", i)
            end = len(body) if end < 0 else end
            item = body[i:end]
            out.append(None if item.upper() == "NULL" else item)
            i = end + 1
    return out


_INT, _BOOL, _TEXT = (20, 21, 23, 26), 16, (19, 25, 1043)
_JSON = (114, 3802)
_TEXT_ARRAY = (1009, 1015)


def decode(oid: int, raw: bytes) -> Any:
    """A result value in Postgres's text format, for the types the hot path reads."""
    if oid in _INT:
        return int(raw)
    if oid in _TEXT:
        return raw.decode()
    if oid in _JSON:
        return json.loads(raw)
    if oid in _TEXT_ARRAY:
        return text_array(raw.decode())
    if oid == _BOOL:
        return raw == b"t"
    raise TypeError(f"a Wire does not read values of type oid {oid}")


_row_types: dict[tuple[str, ...], Callable[..., Any]] = {}


def _row_type(fields: tuple[str, ...]) -> Callable[..., Any]:
    made = _row_types.get(fields)
    if made is None:
        made = _row_types[fields] = namedtuple("Row", fields, rename=True)
    return made


class Pending:
    """A statement sent on a ``Wire``; its rows once read (``fetchone``, ``fetchall``)."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire
        self.result: pq.abc.PGresult | None = None
        self.done = False
        self.deferred = False  # read later: a read passing through keeps its error here
        self.error: psycopg.Error | None = None  # the statement's, once read

    def rows(self) -> list[Any]:
        """Its rows as named tuples, reading its result first if it is not read yet; raise
        the statement's error."""
        if not self.done:
            self._wire.read_through(self)
        if self.error is not None:
            raise self.error
        res = self.result
        if res is None or res.status != pq.ExecStatus.TUPLES_OK:
            return []
        fields = tuple((res.fname(c) or b"").decode() for c in range(res.nfields))
        oids = [res.ftype(c) for c in range(res.nfields)]
        make = _row_type(fields)
        return [
            make(
                *(
                    None if (v := res.get_value(r, c)) is None else decode(oids[c], v)
                    for c in range(len(oids))
                )
            )
            for r in range(res.ntuples)
        ]

    def fetchone(self) -> Any:
        rows = self.rows()
        return rows[0] if rows else None

    def fetchall(self) -> list[Any]:
        return self.rows()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows())


class SyncSent:
    """Where a Sync was sent: its result ends the transaction before it."""

    def __init__(self) -> None:
        self.done = False  # its result is read


def ends_session(error: psycopg.Error) -> bool:
    """Whether a statement's error means starting on a new session: the server ending this
    one (57P01...) or a deadlock. A statement handing its case back to the general path
    (``GENERAL_PATH``, whose unknown class psycopg maps to ``OperationalError`` as well) leaves
    the session as it was: its transaction is rolled back at the Sync, like any error's."""
    return isinstance(error, psycopg.OperationalError) and error.sqlstate != GENERAL_PATH


class Wire:
    """A psycopg connection in libpq's pipeline mode, driven directly.

    Statements between two ``sync`` calls form one implicit transaction that the Sync commits
    (or, after an error, rolls back). Errors raise psycopg's exceptions: a lost connection
    ``psycopg.OperationalError`` (the Wire is then ``broken``), a statement's error its class.
    """

    autocommit = True  # for hotpath.observe: no transaction is open but the pipeline's

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET client_encoding TO 'UTF8'")  # what encode() and decode() speak
        self.conn = conn
        self.pgconn = conn.pgconn
        self._prepared: set[bytes] = set()
        # what was sent and is not read yet, in order: a statement (its Pending, and the name
        # it prepared first, if it did) or a Sync
        self._unread: deque[tuple[Pending | SyncSent, bytes | None]] = deque()
        self._broken = False
        # one call at a time, as psycopg's connection lock did: a connection's claims, their
        # timer and the finisher thread take turns, and libpq must never see two at once
        self._lock = threading.Lock()
        # flowq.store.held's: a commit batch's steps on this connection, one thread at a time
        # (held across round trips, unlike ``_lock``), and the last claim made on it
        self.batching = threading.RLock()
        self.current: Any = None
        self._readable = select.poll()
        self._readable.register(self.pgconn.socket, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(self.pgconn.socket, select.POLLIN | select.POLLOUT)
        self.pgconn.enter_pipeline_mode()

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def broken(self) -> bool:
        return self._broken or self.conn.broken or self.pgconn.status == pq.ConnStatus.BAD

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Pending:
        """Send a statement (not flushed yet); its result is read when asked for or at ``sync``."""
        st = statement(sql)
        params = params or {}
        encoded = [encode(params[name]) for name in st.params]
        prepared = None
        pending = Pending(self)
        with self._lock:
            try:
                if st.name not in self._prepared:
                    self.pgconn.send_prepare(st.name, st.text, _types(st, params))
                    self._prepared.add(st.name)
                    prepared = st.name
                self.pgconn.send_query_prepared(st.name, encoded)
            except psycopg.OperationalError:
                self._broken = True
                raise
            self._unread.append((pending, prepared))
        return pending

    def sync(self) -> SyncSent:
        """Commit what was sent since the last Sync (roll it back after an error), reading
        every result up to it; raise the first error among statements not deferred."""
        with self._lock:
            marker = self._send_sync()
            self._read(marker)
            return marker

    def send_sync(self) -> SyncSent:
        """Commit what was sent since the last Sync, reading nothing: the results wait for the
        next read (``Pending.deferred`` statements' errors stay with them)."""
        with self._lock:
            return self._send_sync()

    def read_sync(self, marker: SyncSent) -> None:
        """Read the results up to the Sync ``marker`` (sent before); raise the first error among
        statements not deferred."""
        with self._lock:
            if not marker.done:
                self._read(marker)

    def _send_sync(self) -> SyncSent:
        try:
            self.pgconn.pipeline_sync()  # the statements and the Sync leave in one write
            self._flush()
        except psycopg.OperationalError:
            self._broken = True
            raise
        marker = SyncSent()
        self._unread.append((marker, None))
        return marker

    def read_through(self, pending: Pending) -> None:
        """Read the results up to ``pending``'s, asking the server to send what it has; raise
        the first statement error among them."""
        with self._lock:
            if pending.done:  # read meanwhile, by a Sync on another thread
                return
            try:
                self.pgconn.send_flush_request()
                self._flush()
            except psycopg.OperationalError:
                self._broken = True
                raise
            self._read(pending)

    def _read(self, last: Pending | SyncSent) -> None:
        first_error: psycopg.Error | None = None
        while self._unread:
            pending, prepared = self._unread.popleft()
            if isinstance(pending, SyncSent):  # a Sync's result: the transaction is over
                res = self._next()
                if res is None or res.status != _SYNC_DONE:
                    self._broken = True
                    raise psycopg.OperationalError("the pipeline's results are out of order")
                pending.done = True
                if pending is last:
                    break
                continue
            seen = []
            if prepared is not None:  # the Prepare's own result comes first
                seen.append(self._result())
                if seen[0] is None or seen[0].status not in _OK:
                    self._prepared.discard(prepared)
            pending.result, pending.done = self._result(), True
            for res in (*seen, pending.result):
                if pending.error is None and res is not None and res.status == _ERROR:
                    pending.error = errors.error_from_result(res, encoding="utf-8")
            if pending.error is not None:
                self._broken = self._broken or ends_session(pending.error)
                if first_error is None and not pending.deferred:
                    first_error = pending.error
            if pending is last:
                break
        if first_error is not None:
            raise first_error

    def _result(self) -> pq.abc.PGresult | None:
        """The next statement's result (libpq ends each with a None)."""
        got = None
        while (res := self._next()) is not None:
            got = got or res
        return got

    def _next(self) -> pq.abc.PGresult | None:
        try:
            while self.pgconn.is_busy():
                self._readable.poll()
                self.pgconn.consume_input()
            return self.pgconn.get_result()
        except psycopg.OperationalError:
            self._broken = True
            raise

    def _flush(self) -> None:
        while self.pgconn.flush():  # 1: the socket took part of it; wait until it takes more
            self._writable.poll()
            self.pgconn.consume_input()
