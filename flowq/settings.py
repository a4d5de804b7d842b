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

        settings = cls(
            broker_url=get("FLOWQ_BROKER_URL"),
            result_backend=get("FLOWQ_RESULT_BACKEND"),
            database_url=get("FLOWQ_DATABASE_URL") or DEFAULT_DATABASE_URL,
            file_root=get("FLOWQ_FILE_ROOT") or DEFAULT_FILE_ROOT,
            api_token=get("FLOWQ_API_TOKEN"),
        )
        check_database_url(settings.database_url, "FLOWQ_DATABASE_URL")
        if settings.broker_url is not None:
            check_broker_url(settings.broker_url, "FLOWQ_BROKER_URL")
        return settings

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


# The databases flowq keeps its state in, by SQLAlchemy dialect, and the drivers it ships with
STORE_DRIVERS = {"sqlite": ("", "pysqlite"), "postgresql": ("", "psycopg")}


def check_database_url(url: str, name: str) -> None:
    """Raise ``UsageError`` naming ``name`` unless ``url`` is a state store flowq can use
    (checked before anything connects, so nothing is half done)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    example = "sqlite:///flowq.db or postgresql+psycopg://user@127.0.0.1/flowq"
    try:
        dialect, _, driver = make_url(url).drivername.partition("+")
    except ArgumentError:
        raise UsageError(f"{name}: not a database URL: {url!r}; e.g. {example}") from None
    if driver not in STORE_DRIVERS.get(dialect, ()):
        raise UsageError(
            f"{name}: flowq keeps its state in SQLite or PostgreSQL (with psycopg), "
            f"not {dialect}{'+' + driver if driver else ''}; e.g. {example}"
        )


def check_broker_url(url: str, name: str) -> None:
    """Raise ``UsageError`` naming ``name`` unless ``url`` names a transport kombu knows."""
    from kombu.transport import TRANSPORT_ALIASES

    scheme, sep, _ = url.partition("://")
    transport = scheme.partition("+")[0]  # kombu's own reading of "sqla+postgresql://"
    if not sep or transport not in TRANSPORT_ALIASES:
        raise UsageError(
            f"{name}: not a broker URL kombu knows: {url!r}; e.g. redis://127.0.0.1:6379/0"
        )
