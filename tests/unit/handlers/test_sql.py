"""The sql handler against a real SQLite file database (and a closed Postgres port)."""

from __future__ import annotations

import json
import multiprocessing
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from flowq.context import TaskContext
from flowq.errors import PermanentError, TaskError
from workers.handlers import sql

CTX = TaskContext(vars={}, params={}, results={}, execution_id="e1", task_id="t1")
INJECTION = "'; DROP TABLE inventory; --"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE inventory (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL)")
        conn.executemany("INSERT INTO inventory VALUES (?, ?)", [("A1", 10), ("B2", 0)])
    monkeypatch.setenv("FLOWQ_CONN_SHOP", f"sqlite:///{path}")
    return path


def run(**spec: Any) -> Any:
    return sql.execute({"id": "t1", "type": "sql", "connection": "shop", **spec}, CTX)


def qty(db: Path, sku: str) -> int | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT qty FROM inventory WHERE sku = ?", (sku,)).fetchone()
    return None if row is None else int(row[0])


RESERVE = "UPDATE inventory SET qty = qty - :q WHERE sku = :sku AND qty >= :q"


def test_update_with_matching_rowcount_commits(db: Path) -> None:
    result = run(query=RESERVE, params={"q": 3, "sku": "A1"}, expect_rowcount=1)
    assert result == {"rowcount": 1}  # no "rows" key: an UPDATE returns no rows
    assert qty(db, "A1") == 7


def test_rowcount_mismatch_fails_permanently_and_rolls_back(db: Path) -> None:
    with pytest.raises(PermanentError) as raised:
        run(query="UPDATE inventory SET qty = qty - :q", params={"q": 1}, expect_rowcount=1)
    assert str(raised.value) == "sql connection 'shop': expected rowcount 1, got 2; rolled back"
    assert (qty(db, "A1"), qty(db, "B2")) == (10, 0)


def test_select_returns_rows_as_dicts(db: Path) -> None:
    result = run(query="SELECT sku, qty FROM inventory ORDER BY sku")
    assert result == {"rowcount": 2, "rows": [{"sku": "A1", "qty": 10}, {"sku": "B2", "qty": 0}]}


def test_select_without_matches_has_empty_rows(db: Path) -> None:
    assert run(query="SELECT sku FROM inventory WHERE qty > 100") == {"rowcount": 0, "rows": []}


def test_injection_string_is_bound_as_data(db: Path) -> None:
    result = run(
        query="INSERT INTO inventory (sku, qty) VALUES (:sku, :q)",
        params={"sku": INJECTION, "q": 5},
        expect_rowcount=1,
    )
    assert result == {"rowcount": 1}
    assert qty(db, INJECTION) == 5  # stored verbatim, and the table still exists
    assert qty(db, "A1") == 10


def test_bad_sql_fails_permanently_with_one_line(db: Path) -> None:
    with pytest.raises(PermanentError) as raised:
        run(query="SELEC nonsense")
    assert str(raised.value).startswith("sql connection 'shop': OperationalError: ")
    assert "syntax error" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_constraint_violation_fails_permanently(db: Path) -> None:
    with pytest.raises(PermanentError, match="IntegrityError"):
        run(query="INSERT INTO inventory (sku, qty) VALUES ('A1', 1)")


def test_missing_bind_fails_permanently(db: Path) -> None:
    with pytest.raises(PermanentError, match="bind parameter 'sku'"):
        run(query="SELECT * FROM inventory WHERE sku = :sku")


def test_two_statements_are_refused(db: Path) -> None:
    with pytest.raises(PermanentError):
        run(query="UPDATE inventory SET qty = 0; DROP TABLE inventory")
    assert qty(db, "A1") == 10


def test_unknown_connection_fails_permanently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWQ_CONN_SHOP", raising=False)
    assert sql.connection_url("shop") is None
    with pytest.raises(PermanentError) as raised:
        run(query="SELECT 1")
    assert str(raised.value) == "sql connection 'shop' is not configured: set FLOWQ_CONN_SHOP"


def test_connection_url_reads_the_upper_cased_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWQ_CONN_MY_DB", "sqlite://")
    assert sql.connection_url("my_db") == "sqlite://"


def test_unusable_url_fails_permanently_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWQ_CONN_SHOP", "nosuchdialect://user:s3cret@host/db")
    with pytest.raises(PermanentError) as raised:
        run(query="SELECT 1")
    assert "FLOWQ_CONN_SHOP is not a usable SQLAlchemy URL" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_closed_postgres_port_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("FLOWQ_CONN_SHOP", f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
    with pytest.raises(TaskError) as raised:
        run(query="SELECT 1")
    assert not isinstance(raised.value, PermanentError)
    assert str(raised.value).startswith("sql connection 'shop': cannot connect: ")
    assert "\n" not in str(raised.value)


def test_locked_database_is_retryable(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWQ_CONN_SHOP", f"sqlite:///{db}?timeout=0")
    locker = sqlite3.connect(db, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TaskError) as raised:
            run(query=RESERVE, params={"q": 1, "sku": "A1"})
        assert not isinstance(raised.value, PermanentError)
    finally:
        locker.rollback()
        locker.close()


def test_values_are_made_json_serialisable(db: Path) -> None:
    result = run(
        query="SELECT CAST(:d AS TEXT) AS d, :blob AS blob, :n AS n, 1.5 AS f",
        params={"d": "2024-01-02", "blob": b"\x00\xffhi", "n": None},
    )
    assert result["rows"] == [{"d": "2024-01-02", "blob": "AP9oaQ==", "n": None, "f": 1.5}]
    json.dumps(result)


def test_to_json_maps_driver_types() -> None:
    import datetime as dt
    import uuid
    from decimal import Decimal

    assert sql.to_json(Decimal("12.50")) == 12.5
    assert sql.to_json(Decimal("42")) == 42 and isinstance(sql.to_json(Decimal("42")), int)
    assert sql.to_json(Decimal("NaN")) == "NaN"
    assert sql.to_json(float("-inf")) == "-Infinity"
    assert sql.to_json(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == (
        "2024-01-02T03:04:05+00:00"
    )
    assert sql.to_json(dt.date(2024, 1, 2)) == "2024-01-02"
    assert sql.to_json(dt.timedelta(minutes=1, milliseconds=500)) == 60.5
    assert sql.to_json(memoryview(b"ab")) == "YWI="
    uid = uuid.UUID(int=1)
    assert sql.to_json({"k": [uid, Decimal("1")]}) == {"k": [str(uid), 1]}


def test_engine_is_cached_per_name_and_rebuilt_when_the_url_changes(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = sql.engine("shop")
    assert sql.engine("shop") is first
    assert sql.engine("SHOP") is first  # the same connection, whatever the case
    monkeypatch.setenv("FLOWQ_CONN_SHOP", f"sqlite:///{tmp_path / 'other.db'}")
    assert sql.engine("shop") is not first


def _child_engine_id(queue: Any) -> None:
    queue.put((id(sql.engine("shop")), run(query="SELECT count(*) AS n FROM inventory")))


def test_a_forked_process_gets_its_own_engine(db: Path) -> None:
    parent = id(sql.engine("shop"))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_engine_id, args=(queue,))
    child.start()
    child_engine, result = queue.get(timeout=10)
    child.join(10)
    assert child_engine != parent
    assert result == {"rowcount": 1, "rows": [{"n": 2}]}
    assert id(sql.engine("shop")) == parent
