"""SQLAlchemy engines for the state store: SQLite (embedded) and Postgres (distributed)."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

# The sessions that run the per-task hot path (``Store.connect_raw``: held claims' Wires and
# the autocommit single statements) plan without sequential scans where an index serves, and
# without JIT. Each hot statement finds its rows by primary key, and a session keeps the
# generic plans of its prepared statements until the tables are analyzed again. Planned while
# a table is small and analyzed (a new deployment, autovacuum passing early; the bench's
# VACUUM ANALYZE before each case), such a plan scans the whole table instead of its index,
# for every task, as the table grows, until the next analyze (autovacuum's: once a tenth of
# the table changed, looked for once a minute; in the bench: not within a case):
# bench/RESULTS.md (2026-12-05) measured 100 x 20 at 3.55x plain Celery that way, not 1.4x.
# JIT is off because the cost that disables a scan is also past ``jit_above_cost``: a
# statement that must still scan (no index serves it) would be compiled each time it is
# planned. These statements never gain from JIT.
HOT_SESSION_OPTIONS = "-c enable_seqscan=off -c jit=off"

# How long a new Postgres connection may take (seconds) unless the URL, a libpq service file
# or PGCONNECT_TIMEOUT says otherwise: psycopg's own default is 130 s for a host that drops
# packets, and every retry of ``Store.transact`` would wait that long again.
CONNECT_TIMEOUT = 10


def connect_timeout(url: sa.URL) -> dict[str, Any]:
    """``connect_timeout`` for psycopg, unless the user set one (then libpq reads theirs)."""
    own = "connect_timeout" in url.query or "service" in url.query
    if own or os.environ.get("PGCONNECT_TIMEOUT", "").strip():
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT}


def hot_options(url: sa.URL) -> str:
    """libpq's ``options`` for a hot-path session: the URL's own, then ``HOT_SESSION_OPTIONS``."""
    own = url.query.get("options")
    if isinstance(own, tuple):  # given more than once: libpq would take the last one
        own = own[-1]
    return f"{own} {HOT_SESSION_OPTIONS}" if own else HOT_SESSION_OPTIONS


def create_engine(url: str) -> sa.Engine:
    """An engine tuned for flowq: SQLite in WAL mode with write transactions taken up front."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.drivername.lower() in ("postgresql", "postgresql+psycopg2"):
        # SQLAlchemy's default driver (psycopg2) is not flowq's: its URLs are libpq's, as ours
        parsed = parsed.set(drivername="postgresql+psycopg")
    # No pre-ping: a dead pooled connection fails the transaction, which Store.transact retries
    # on a fresh one; a ping per checkout would cost a round trip per transaction.
    # No server-side prepared statements on the general path (psycopg prepares a statement
    # run 5 times on a connection): each statement is planned with its parameters, against
    # the tables as they are now. A prepared statement would keep a generic plan made while
    # the tables were small and analyzed, a scan of the whole table, as the tables grow (see
    # HOT_SESSION_OPTIONS); the hot path keeps its plans, with those options instead. These
    # statements are a transition's own (a failure, a retry, a cancel) and the reconciler's,
    # not one per task: planning each costs little.
    connect_args: dict[str, Any] = {}
    if parsed.get_driver_name() == "psycopg":
        connect_args = {"prepare_threshold": None, **connect_timeout(parsed)}
    return sa.create_engine(parsed, pool_size=5, max_overflow=10, connect_args=connect_args)


def _sqlite_engine(url: str) -> sa.Engine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        folder = os.path.dirname(os.path.abspath(parsed.database))
        os.makedirs(folder, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Writers take the lock at BEGIN, so two writers never deadlock upgrading a read lock.
        if conn.get_execution_options().get("flowq_readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: sa.Engine) -> bool:
    """True for the embedded SQLite store."""
    return engine.dialect.name == "sqlite"
