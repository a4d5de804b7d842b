"""Fixtures for engine tests: an embedded client on a fresh SQLite store, and on Postgres.

Both stores run every engine test: SQLite takes the generic statements, Postgres the
single-statement hot path (flowq.store.hotpath), and the two must behave alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flowq import Client, Settings, Workflow
from flowq.store import Store
from tests.conftest import fresh_postgres_database
from workers.app import CLAIM_HOLD_SECONDS

Run = Callable[..., dict[str, Any]]


@contextmanager
def _engine_database(prefix: str) -> Iterator[str]:
    with fresh_postgres_database(prefix) as url:
        store = Store(url)
        store.upgrade()
        store.dispose()
        yield url


@pytest.fixture(scope="session")
def engine_pg_url() -> Iterator[str]:
    """One Postgres database for the engine tests (their executions never collide)."""
    with _engine_database("flowq_engine") as url:
        yield url


@pytest.fixture(scope="session")
def engine_pg_unheld_url() -> Iterator[str]:
    """Another for the same tests without held claims (some count what a database holds)."""
    with _engine_database("flowq_engine_unheld") as url:
        yield url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.integration),
        pytest.param("postgres-unheld", marks=pytest.mark.integration),
    ]
)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    if request.param.startswith("postgres"):
        unheld = request.param == "postgres-unheld"
        url = request.getfixturevalue("engine_pg_unheld_url" if unheld else "engine_pg_url")
        # Postgres with the default held claims (flowq.store.held), and with every claim
        # committed by itself (FLOWQ_CLAIM_HOLD_SECONDS=0)
        hold = "0" if unheld else str(CLAIM_HOLD_SECONDS)
        request.getfixturevalue("monkeypatch").setenv("FLOWQ_CLAIM_HOLD_SECONDS", hold)
    else:
        url = f"sqlite:///{tmp_path / 'state.db'}"
    with Client(Settings(database_url=url)) as c:
        yield c


@pytest.fixture
def run(client: Client) -> Run:
    """Register a workflow given as a dict, run it to its end, return the status document."""

    def go(
        definition: dict[str, Any], vars: dict[str, Any] | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        wf = Workflow.from_dict(definition)
        client.register(wf, replace=True)
        eid = client.start(wf.id, vars or {})
        return client.wait(eid, timeout=timeout)

    return go


def py(task_id: str, fn: str = "noop", deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A python task calling tests.flows:<fn>."""
    return {
        "id": task_id,
        "type": "python",
        "handler": f"tests.flows:{fn}",
        "depends_on": list(deps),
        **extra,
    }
