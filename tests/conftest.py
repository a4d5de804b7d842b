"""Shared fixtures: services are real; a missing one skips on a laptop and fails under CI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get(
    "FLOWQ_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("FLOWQ_TEST_REDIS", "redis://127.0.0.1:6379")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (laptop) or fail (CI=true) when a service does not answer."""
    if _reachable(host, port):
        return
    message = f"{name} not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: integration tests must not be skipped)")
    pytest.skip(message)


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """Create an empty Postgres database; drop it on exit."""
    require_service("Postgres", "127.0.0.1", 5432)
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    # no pooling: a test may restart the server between creating and dropping the database
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh Postgres database for the store contract tests."""
    with fresh_postgres_database("flowq_store") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database of its own for this test session (others may run at the same time)."""
    require_service("Redis", "127.0.0.1", 6379)
    import redis

    token = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    for db in range(int(os.environ.get("FLOWQ_TEST_REDIS_DB", "11")), 16):
        conn = redis.Redis.from_url(f"{REDIS_URL}/{db}")
        # CI is the machine's only test session: a key left by a killed session must not block it
        if IN_CI or conn.set("flowq-test:owner", token, nx=True, ex=2 * 3600):
            conn.flushdb()
            conn.set("flowq-test:owner", token, ex=4 * 3600)
            yield f"{REDIS_URL}/{db}"
            if conn.get("flowq-test:owner") == token.encode():
                conn.flushdb()
            return
    pytest.fail("no free Redis database (11-15) for this test session: see key flowq-test:owner")


@contextmanager
def server_process(
    name: str, argv: list[str], env: dict[str, str], log: Path, probe: str, timeout: float = 30
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` as its own process group; yield it once GET ``probe`` answers 200.

    The process group is stopped (SIGTERM, then SIGKILL) when the block ends.
    """
    import httpx

    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"{name} exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{name} did not answer: {log.read_text()}"
            try:
                if httpx.get(probe, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
