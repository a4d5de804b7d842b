"""Alembic migrations run from code: `flowq db upgrade` and the embedded store's first use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
HEAD = "0003"  # the newest revision in migrations/versions (a test keeps the two equal)


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at flowq's migrations and the given database."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at; None before the first upgrade."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: sa.Engine) -> None:
    """Create or migrate the state tables to the newest revision."""
    if current_revision(engine) == HEAD:
        return  # nothing to do: skip importing and running Alembic
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def is_current(engine: sa.Engine) -> bool:
    """True when the database is at the newest revision."""
    return current_revision(engine) == HEAD


def script_head() -> str | None:
    """The newest revision according to Alembic's own reading of the scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
