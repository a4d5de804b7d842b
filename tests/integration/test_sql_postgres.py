"""The sql handler against a real Postgres at 127.0.0.1:5432 (database ``test``)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from flowq.context import TaskContext
from flowq.errors import PermanentError
from workers.handlers import sql

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DSN = "postgresql://postgres@127.0.0.1:5432/test"
CTX = TaskContext(vars={}, params={}, results={}, execution_id="e1", task_id="t1")
INJECTION = "'; DROP TABLE inventory; --"

pytestmark = pytest.mark.integration


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    try:
        admin = psycopg.connect(DSN, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError:
        if os.environ.get("CI") == "true":
            pytest.fail("Postgres not reachable at 127.0.0.1:5432")
        pytest.skip("Postgres not reachable at 127.0.0.1:5432")
    name = f"inventory_{uuid.uuid4().hex[:12]}"
    admin.execute(
        f"CREATE TABLE {name} (sku text PRIMARY KEY, qty integer NOT NULL, "
        "price numeric(10, 2), updated timestamptz, data bytea, meta jsonb)"
    )
    admin.execute(
        f"INSERT INTO {name} VALUES ('A1', 10, 19.99, '2024-01-02T03:04:05Z', "
        "'\\xdeadbeef', '{\"tags\": [\"x\"]}')"
    )
    monkeypatch.setenv("FLOWQ_CONN_SHOP", URL)
    try:
        yield name
    finally:
        admin.execute(f"DROP TABLE IF EXISTS {name}")
        admin.close()


def run(**spec: Any) -> Any:
    return sql.execute({"connection": "shop", **spec}, CTX)


def test_select_converts_postgres_types_to_json(table: str) -> None:
    result = run(query=f"SELECT sku, qty, price, updated, data, meta FROM {table}")
    assert result == {
        "rowcount": 1,
        "rows": [
            {
                "sku": "A1",
                "qty": 10,
                "price": 19.99,
                "updated": "2024-01-02T03:04:05+00:00",
                "data": "3q2+7w==",
                "meta": {"tags": ["x"]},
            }
        ],
    }
    json.dumps(result)


def test_update_commits_and_mismatch_rolls_back(table: str) -> None:
    reserve = f"UPDATE {table} SET qty = qty - :q WHERE sku = :sku AND qty >= :q"
    assert run(query=reserve, params={"q": 4, "sku": "A1"}, expect_rowcount=1) == {"rowcount": 1}
    with pytest.raises(PermanentError, match="expected rowcount 1, got 0; rolled back"):
        run(query=reserve, params={"q": 100, "sku": "A1"}, expect_rowcount=1)
    with pytest.raises(PermanentError, match="expected rowcount 0, got 1; rolled back"):
        run(query=reserve, params={"q": 1, "sku": "A1"}, expect_rowcount=0)
    assert run(query=f"SELECT qty FROM {table}")["rows"] == [{"qty": 6}]


def test_injection_string_is_stored_verbatim(table: str) -> None:
    insert = f"INSERT INTO {table} (sku, qty) VALUES (:sku, :q) RETURNING sku"
    assert run(query=insert, params={"sku": INJECTION, "q": 1}, expect_rowcount=1) == {
        "rowcount": 1,
        "rows": [{"sku": INJECTION}],
    }
    stored = run(query=f"SELECT qty FROM {table} WHERE sku = :sku", params={"sku": INJECTION})
    assert stored["rows"] == [{"qty": 1}]


def test_sql_errors_fail_permanently(table: str) -> None:
    with pytest.raises(PermanentError, match="UndefinedTable"):
        run(query="SELECT * FROM no_such_table_here")
    with pytest.raises(PermanentError, match="UniqueViolation"):
        run(query=f"INSERT INTO {table} (sku, qty) VALUES ('A1', 1)")
    with pytest.raises(PermanentError, match="InvalidTextRepresentation"):
        run(query=f"UPDATE {table} SET qty = CAST(:q AS integer)", params={"q": "many"})
