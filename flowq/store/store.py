"""The state store: compare-and-set state changes over SQLAlchemy, on SQLite or Postgres."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flowq.store import hotpath
from flowq.store.engine import connect_timeout, create_engine, hot_options, is_sqlite
from flowq.store.migrate import upgrade
from flowq.store.tx import iso, utcnow
from flowq.store.tx_hot import HotPath
from flowq.store.upkeep import Upkeep

__all__ = ["Store", "Tx", "iso", "utcnow"]

log = logging.getLogger("flowq.store")
T = TypeVar("T")
HOT_IDLE = 5  # idle hot-path connections a Store keeps (one per thread that is using one)
FIRST_DELAY = 0.05  # seconds before the first retry of a transaction; doubled up to 2 s
STORE_RETRY_SECONDS = 60.0  # how long a transaction is retried on lost connections, by default


# A connection the server refused for good: retrying cannot make the database exist or the
# role authenticate (libpq gives no SQLSTATE for these, only the server's FATAL message)
_REFUSED_FOR_GOOD = ("does not exist", "authentication failed", "no pg_hba.conf entry")
STORE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, *hotpath.CONNECTION_ERRORS)
NO_TABLES = "the state store has no flowq tables: run `flowq db upgrade` first"


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own error under SQLAlchemy's wrapper (``exc`` itself when unwrapped)."""
    return getattr(exc, "orig", None) or exc


def first_line(exc: BaseException) -> str:
    """The first line of a database error (the driver's own, without SQLAlchemy's notes)."""
    lines = str(_driver_error(exc)).strip().splitlines()
    line = lines[0].rstrip(". ") if lines else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def refused_for_good(exc: BaseException) -> bool:
    """A connection error that retrying cannot cure (no such database or role, bad password)."""
    text = str(_driver_error(exc))
    return "FATAL:" in text and any(marker in text for marker in _REFUSED_FOR_GOOD)


def missing_tables(exc: BaseException) -> bool:
    """The store's database has no flowq tables (``flowq db upgrade`` was not run)."""
    return isinstance(_driver_error(exc), psycopg.errors.UndefinedTable)


def store_problem(exc: BaseException) -> str | None:
    """One line saying what is wrong with the state store, for a person to act on; None when
    ``exc`` is not about the store's availability or set-up."""
    if missing_tables(exc):
        return NO_TABLES
    if isinstance(exc, STORE_ERRORS):
        return f"state store unavailable: {first_line(exc)}"
    return None


class Tx(HotPath, Upkeep):
    """One database transaction: compare-and-set updates plus batched history rows, the
    per-task hot path, and the workers' records and scans."""


def _run(fn: Callable[[Tx], T], tx: Tx) -> T:
    try:
        return fn(tx)
    except hotpath.CONNECTION_ERRORS:
        # a hot-path statement's error on the raw connection: SQLAlchemy did not see it, so a
        # broken connection is taken out of the pool here (Store.transact then retries)
        if tx.postgres and tx.raw.broken and not tx.conn.invalidated:
            tx.conn.invalidate()
        raise


class Store:
    """Durable state of workflows: one engine, transactions retried on transient errors."""

    def __init__(self, url: str, *, retry_seconds: float = STORE_RETRY_SECONDS) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.retry_seconds = retry_seconds
        # Postgres: autocommit psycopg connections for single-statement calls (the per-task
        # hot path), kept idle here (at most HOT_IDLE) between calls: no SQLAlchemy pool
        # checkout or per-call plumbing
        self._hot: list[hotpath.Raw] = []
        self._hot_lock = threading.Lock()
        self._hot_pid = os.getpid()
        self._inherited: list[hotpath.Raw] = []  # a parent process's, kept open, never used

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite store."""
        return is_sqlite(self.engine)

    def upgrade(self) -> None:
        """Create or migrate the tables."""
        upgrade(self.engine)

    def dispose(self) -> None:
        """Drop pooled connections (after fork, or when done)."""
        self.engine.dispose()
        self._drop_hot()

    def forget_connections(self) -> None:
        """In a forked child: leave the parent's connections alone and open new ones."""
        self.engine.dispose(close=False)
        with self._hot_lock:
            self._inherited += self._hot  # closing them would end the parent's sessions
            self._hot = []
            self._hot_pid = os.getpid()

    def connect_raw(self) -> hotpath.Raw:
        """A new psycopg connection to the store for the hot path, in autocommit mode, with
        ``HOT_SESSION_OPTIONS`` (Postgres only)."""
        url = self.engine.url.set(drivername="postgresql")
        return psycopg.connect(
            url.render_as_string(hide_password=False),
            autocommit=True,
            options=hot_options(url),
            **connect_timeout(url),
        )

    def sa_connect(self) -> sa.Connection:
        """A pooled SQLAlchemy connection in autocommit mode, for a ``Tx`` opened without one."""
        return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _hot_checkout(self) -> hotpath.Raw:
        if self._hot_pid != os.getpid():
            self.forget_connections()  # forked without calling it: the same thing
        with self._hot_lock:
            conn = self._hot.pop() if self._hot else None
        if conn is None or conn.closed:
            conn = self.connect_raw()
        return conn

    def _hot_checkin(self, conn: hotpath.Raw) -> None:
        if not (conn.closed or conn.broken) and self._hot_pid == os.getpid():
            with self._hot_lock:
                if len(self._hot) < HOT_IDLE:
                    self._hot.append(conn)
                    return
        conn.close()

    def _drop_hot(self) -> None:
        with self._hot_lock:
            idle, self._hot = self._hot, []
        if self._hot_pid == os.getpid():
            for conn in idle:
                conn.close()

    def transact(
        self,
        fn: Callable[[Tx], T],
        *,
        readonly: bool = False,
        single: bool = False,
        now: datetime | None = None,
    ) -> T:
        """Run ``fn`` in one transaction; retry it whole on lost connections and deadlocks.

        ``single``: ``fn`` writes with one statement at most (reads before it are fine), so on
        Postgres it runs in autocommit mode, which saves the BEGIN and COMMIT round trips: the
        statement is its own transaction. SQLite still wraps ``fn`` in a transaction.

        ``now``: the time the transitions are recorded at (default: when each try begins).
        """
        deadline = time.monotonic() + self.retry_seconds
        delay = FIRST_DELAY
        while True:
            try:
                at = now or utcnow()
                if single and not self.is_sqlite:
                    return self._single(fn, at)
                conn = self.engine.connect()
                if readonly:
                    conn = conn.execution_options(flowq_readonly=True)
                with conn, conn.begin():
                    tx = Tx(conn, now=at)
                    out = _run(fn, tx)
                    tx.flush()
                return out
            except STORE_ERRORS as exc:  # psycopg's: from a hot-path statement on a raw connection
                if time.monotonic() + delay > deadline or refused_for_good(exc):
                    raise
                # said once a call; a worker's calls in an outage still say it every few seconds
                log.log(
                    logging.WARNING if delay == FIRST_DELAY else logging.DEBUG,
                    "state store unavailable (%s); retrying for up to %.0fs",
                    first_line(exc),
                    deadline - time.monotonic(),
                )
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    def _single(self, fn: Callable[[Tx], T], now: datetime) -> T:
        """Postgres autocommit: hot-path statements on one of the store's idle psycopg
        connections; anything else on a pooled SQLAlchemy connection, opened only if ``fn``
        asks for one."""

        raw = self._hot_checkout()
        tx = Tx(None, raw=raw, connect=self.sa_connect, now=now)
        try:
            out = fn(tx)
            if tx.has_pending_history:
                raise RuntimeError("a single-statement call left history unwritten")
            return out
        finally:
            tx.close()
            self._hot_checkin(raw)  # a broken one is closed, not kept

    def read(self, fn: Callable[[Tx], T]) -> T:
        """Run a read-only ``fn``."""
        return self.transact(fn, readonly=True)
