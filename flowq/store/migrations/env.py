"""Alembic environment: runs on a connection passed in by flowq, or on the configured URL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from flowq.store.tables import metadata

config = context.config
target_metadata = metadata


def run() -> None:
    """Run migrations online."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run()
