"""Configuration from the environment (SPEC section 4), as a typed value object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from flowq.errors import UsageError

DEFAULT_DATABASE_URL = "sqlite:///flowq.db"
DEFAULT_FILE_ROOT = "./flowq-files"
EMBEDDED_BROKER_URL = "memory://"


@dataclass(frozen=True)
class Settings:
    """Where flowq finds its broker, result backend, state store and files."""

    broker_url: str | None = None
    result_backend: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    file_root: str = DEFAULT_FILE_ROOT
    api_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the FLOWQ_* variables; unset or empty means the default."""
        e = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = e.get(name, "").strip()
            return value or None

        return cls(
            broker_url=get("FLOWQ_BROKER_URL"),
            result_backend=get("FLOWQ_RESULT_BACKEND"),
            database_url=get("FLOWQ_DATABASE_URL") or DEFAULT_DATABASE_URL,
            file_root=get("FLOWQ_FILE_ROOT") or DEFAULT_FILE_ROOT,
            api_token=get("FLOWQ_API_TOKEN"),
        )

    def check(self, *, database: bool = True, broker: bool = True) -> None:
        """Raise ``UsageError``, naming the variable, for a state store or broker URL flowq
        cannot use (before anything connects, so nothing is half done); a command checks the
        ones it uses."""
        if database:
            check_database_url(self.database_url, "FLOWQ_DATABASE_URL")
        if broker and self.broker_url is not None:
            check_broker_url(self.broker_url, "FLOWQ_BROKER_URL")

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: Celery runs in-process."""
        return self.broker_url is None or self.broker_url.startswith("memory://")

    @property
    def effective_broker_url(self) -> str:
        """The broker Celery connects to."""
        return self.broker_url or EMBEDDED_BROKER_URL

    @property
    def effective_result_backend(self) -> str | None:
        """The result backend: explicit, else derived from a Redis broker, else none."""
        if self.result_backend:
            return self.result_backend
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None


# The databases flowq keeps its state in, by SQLAlchemy dialect, and the drivers it accepts
# (psycopg2's URLs are read as psycopg's: flowq.store.engine)
STORE_DRIVERS = {"sqlite": ("", "pysqlite"), "postgresql": ("", "psycopg", "psycopg2")}
DATABASE_EXAMPLE = "sqlite:///flowq.db or postgresql+psycopg://user@127.0.0.1/flowq"


def check_database_url(url: str, name: str) -> None:
    """Raise ``UsageError`` naming ``name`` unless ``url`` is a state store flowq can use
    (the message never shows the URL's password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        dialect, _, driver = make_url(url).drivername.lower().partition("+")
    except ArgumentError:
        raise UsageError(f"{name}: not a database URL; e.g. {DATABASE_EXAMPLE}") from None
    if driver not in STORE_DRIVERS.get(dialect, ()):
        raise UsageError(
            f"{name}: flowq keeps its state in SQLite or PostgreSQL (with psycopg), "
            f"not {dialect}{'+' + driver if driver else ''}; e.g. {DATABASE_EXAMPLE}"
        )


def check_broker_url(url: str, name: str) -> None:
    """Raise ``UsageError`` naming ``name`` unless ``url`` names a transport kombu knows
    (the message shows the scheme only: the rest may hold a password)."""
    from kombu.transport import TRANSPORT_ALIASES

    scheme, sep, _ = url.partition("://")
    transport = scheme.partition("+")[0].lower()  # kombu's reading of "sqla+postgresql://"
    if not sep:
        raise UsageError(f"{name}: not a broker URL (no scheme://); e.g. redis://127.0.0.1:6379/0")
    if transport not in TRANSPORT_ALIASES:
        raise UsageError(
            f"{name}: kombu knows no broker transport {transport!r}; e.g. redis://127.0.0.1:6379/0"
        )
