"""The hot path's generic plans find their rows by index, whatever the tables' statistics say.

A hot-path session keeps its prepared statements' generic plans. Planned right after the
tables were analyzed small (a new deployment, autovacuum passing early), they would scan whole
tables, and go on doing so for every task as the tables grow (``flowq.store.engine``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench import shapes
from bench.store_cost import ListDispatcher, Meter, drive
from flowq import Workflow
from flowq.coordinator import Coordinator
from flowq.store import Store
from flowq.store import statements as S
from flowq.store.engine import HOT_SESSION_OPTIONS, hot_options
from flowq.store.wire import statement
from tests.conftest import fresh_postgres_database

HOT = {
    "claim, first of an execution": S.CLAIMS[True][1],
    "claim": S.CLAIMS[False][2],
    "held claim": S.CLAIM_LOCKS[False][1],
    "held claim written": S.CLAIM_WRITE,
    "task end": S.END_TASK[2],
    "queue pending": S.QUEUE_PENDING[1],
    "success": S.END_FAST[0][1],
    "held claim's success": S.END_FAST[1][2],
    "start": S.START[1],
}
SETTINGS = ("statement_timeout", "enable_seqscan", "jit")


@pytest.fixture(scope="module")
def analyzed_small() -> Iterator[Store]:
    """A store whose tables hold one small execution of each shape, then were analyzed."""
    with fresh_postgres_database("flowq_plans") as url:
        store = Store(url)
        store.upgrade()
        dispatcher = ListDispatcher()
        coordinator = Coordinator(store, dispatcher, hold=0.1)
        for definition in (shapes.fan_in_def(3), shapes.chain_def(3)):
            wf = Workflow.from_dict(definition)
            coordinator.register(wf)
            meter = Meter(store.engine)
            drive(coordinator, dispatcher.sent, meter, wf.id)
            meter.close()
        coordinator.close()
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
        try:
            yield store
        finally:
            store.dispose()


def generic_plan(conn: psycopg.Connection[Any], sql: str) -> str:
    """The generic plan of a hot-path statement, as its session would cache it."""
    st = statement(sql)
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(b"PREPARE hot AS " + st.text)
    try:
        nulls = ", ".join(["NULL"] * len(st.params))
        rows = conn.execute(f"EXPLAIN EXECUTE hot({nulls})").fetchall()
    finally:
        conn.execute("DEALLOCATE hot")
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize("name", list(HOT))
def test_hot_statements_find_rows_by_index(analyzed_small: Store, name: str) -> None:
    with analyzed_small.connect_raw() as conn:
        plan = generic_plan(conn, HOT[name])
    assert "Seq Scan" not in plan, f"{name} scans a table:\n{plan}"
    assert "JIT" not in plan


def test_without_the_sessions_options_the_same_plans_scan_tables(analyzed_small: Store) -> None:
    """What the options prevent: a plain session plans a success as a scan of flowq_executions."""
    url = analyzed_small.engine.url.set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        plan = generic_plan(conn, HOT["success"])
    assert "Seq Scan on flowq_executions" in plan, plan


def test_a_urls_own_session_options_are_kept() -> None:
    own = make_url("postgresql+psycopg://u@h/db?options=-c%20statement_timeout%3D5000")
    assert hot_options(own) == f"-c statement_timeout=5000 {HOT_SESSION_OPTIONS}"
    assert hot_options(make_url("postgresql+psycopg://u@h/db")) == HOT_SESSION_OPTIONS


def test_hot_sessions_get_both_options(analyzed_small: Store) -> None:
    url = analyzed_small.engine.url.update_query_dict({"options": "-c statement_timeout=5000"})
    store = Store(url.render_as_string(hide_password=False))
    try:
        with store.connect_raw() as conn:
            got = [conn.execute(f"SHOW {name}").fetchone()[0] for name in SETTINGS]
        assert got == ["5s", "off", "off"]
        with store.engine.connect() as conn:  # the general path plans as the server says
            assert conn.exec_driver_sql("SHOW enable_seqscan").scalar() == "on"
    finally:
        store.dispose()


def test_the_general_path_keeps_no_prepared_statements(analyzed_small: Store) -> None:
    """A statement the general path runs again and again is planned each time, with its
    parameters, never kept as a generic plan made while the tables were small."""
    with analyzed_small.engine.connect() as conn:
        for _ in range(10):  # psycopg would prepare it at the fifth
            conn.execute(
                sa.text("SELECT state FROM flowq_task_runs WHERE execution_id = :e"), {"e": "x"}
            )
        kept = conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar()
    assert kept == 0
