"""SQLAlchemy engines for the state store: SQLite (embedded) and Postgres (distributed)."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url


def create_engine(url: str) -> sa.Engine:
    """An engine tuned for flowq: SQLite in WAL mode with write transactions taken up front."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    # No pre-ping: a dead pooled connection fails the transaction, which Store.transact retries
    # on a fresh one; a ping per checkout would cost a round trip per transaction.
    return sa.create_engine(url, pool_size=5, max_overflow=10)


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
