"""Shared by the store tests."""

from __future__ import annotations

import sqlalchemy as sa

from flowq.store import Store
from flowq.store import tables as t


def empty_postgres_store(url: str) -> Store:
    """A store on ``url`` with every flowq table dropped and made again (empty, current)."""
    s = Store(url)
    with s.engine.begin() as conn:
        for table in reversed(t.metadata.sorted_tables):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    s.upgrade()
    return s
