"""GET /executions stays fast on a big store: every page is an index range, never a scan.

SQLite's planner has no statistics here, so its plans do not depend on the row count: the
plan checks run on a few thousand rows in the quick suite, and the slow test pages through
100,000 executions over HTTP.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from flowq import Client, Settings
from flowq.api import create_api
from flowq.store import tables as t
from tests.api.conftest import served

WORKFLOWS = ("orders", "billing", "reports", "etl", "mail")
STATES = ("completed", "failed", "running", "paused", "completed", "cancelled")


def fill(engine: sa.Engine, n: int) -> None:
    """Insert ``n`` execution rows with one executemany; every third shares a timestamp."""
    base = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "workflow_id": WORKFLOWS[i % len(WORKFLOWS)],
            "version": 1,
            "digest": "0" * 64,
            "state": STATES[i % len(STATES)],
            "vars": {},
            "priority": 5,
            "idempotency_key": None,
            "error": None,
            "tasks_total": 3,
            "tasks_remaining": 0,
            "created_at": base + timedelta(milliseconds=i // 3),
            "updated_at": base,
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(t.executions.insert(), rows)


@contextmanager
def big_api(path: Path, n: int) -> Iterator[tuple[httpx.Client, Client]]:
    with Client(Settings(database_url=f"sqlite:///{path / 'big.db'}")) as client:
        fill(client.store.engine, n)
        with served(create_api(client)) as url, httpx.Client(base_url=url, timeout=30) as http:
            yield http, client


@contextmanager
def listing_queries(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    """Capture the SQL that lists executions (SELECT ... FROM flowq_executions ... ORDER BY)."""
    seen: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if "FROM flowq_executions" in statement and "ORDER BY" in statement:
            seen.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)


def plan(engine: sa.Engine, statement: str, params: Any) -> list[str]:
    with engine.connect() as conn:
        return [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)]


def page_plan(http: httpx.Client, client: Client, **params: Any) -> list[str]:
    engine = client.store.engine
    with listing_queries(engine) as seen:
        response = http.get("/executions", params={"limit": 100, **params})
        assert response.status_code == 200, response.text
    assert len(seen) == 1, seen
    return plan(engine, *seen[0])


@pytest.fixture(scope="module")
def store_of_3000(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpx.Client, Client]]:
    with big_api(tmp_path_factory.mktemp("pages"), 3000) as served_api:
        yield served_api


def cursor_in_the_middle(http: httpx.Client, **params: Any) -> str:
    page = http.get("/executions", params={"limit": 200, **params}).json()
    return str(page["next"])


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "ix_flowq_executions_created"),
        ({"state": "failed"}, "ix_flowq_executions_state"),
        ({"workflow_id": "etl"}, "ix_flowq_executions_workflow"),
    ],
)
def test_the_first_page_reads_an_index_in_order(
    store_of_3000: tuple[httpx.Client, Client], filters: dict[str, str], index: str
) -> None:
    http, client = store_of_3000
    steps = page_plan(http, client, **filters)
    main = [s for s in steps if "flowq_executions" in s and "PRIMARY KEY" not in s]
    assert len(main) == 1 and f"USING INDEX {index}" in main[0], steps


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "ix_flowq_executions_created"),
        ({"state": "failed"}, "ix_flowq_executions_state"),
        ({"workflow_id": "etl"}, "ix_flowq_executions_workflow"),
    ],
)
def test_a_page_after_a_cursor_is_an_index_range(
    store_of_3000: tuple[httpx.Client, Client], filters: dict[str, str], index: str
) -> None:
    http, client = store_of_3000
    cursor = cursor_in_the_middle(http, **filters)
    steps = page_plan(http, client, cursor=cursor, **filters)
    main = [s for s in steps if "flowq_executions" in s and "PRIMARY KEY" not in s]
    assert len(main) == 1, steps
    assert main[0].startswith("SEARCH") and f"USING INDEX {index}" in main[0], steps
    assert "created_at<" in main[0], f"the cursor must bound the index range: {steps}"


@pytest.mark.slow
def test_paging_through_100000_executions(tmp_path: Path) -> None:
    with big_api(tmp_path, 100_000) as (http, _client):
        seen: list[str] = []
        slowest = 0.0
        params: dict[str, Any] = {"limit": 100}
        while True:
            started = time.perf_counter()
            response = http.get("/executions", params=params)
            slowest = max(slowest, time.perf_counter() - started)
            page = response.json()
            seen += [item["execution_id"] for item in page["items"]]
            if page["next"] is None:
                break
            params["cursor"] = page["next"]
        assert len(seen) == 100_000 and len(set(seen)) == 100_000, "each execution exactly once"
        # a sanity bound only (CI machines are loaded); the query-plan tests above are the
        # exact guard that every page is an index seek
        assert slowest < 1.0, f"slowest page took {slowest:.3f}s"

        filtered = http.get("/executions", params={"state": "paused", "workflow_id": "etl"})
        items = filtered.json()["items"]
        assert items and all(i["state"] == "paused" and i["workflow_id"] == "etl" for i in items)
