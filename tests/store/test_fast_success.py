"""Postgres' single-statement success (``Tx.succeed_fast``) and when it hands back."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from flowq.store import Store, Tx, hotpath, utcnow
from flowq.store import tables as t
from flowq.store.hotpath import Succeeded
from tests.store.conftest import empty_postgres_store

pytestmark = pytest.mark.integration


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    s = empty_postgres_store(postgres_url)  # each test starts from empty tables
    yield s
    s.dispose()


def _setup(store: Store, tasks: dict[str, dict[str, Any]], remaining: int | None = None) -> None:
    """An execution ``e1`` running ``tasks`` (id -> state and counters)."""

    def body(tx: Tx) -> None:
        tx.insert_execution(
            {
                "id": "e1",
                "workflow_id": "wf",
                "version": 1,
                "digest": "d" * 64,
                "state": "running",
                "vars": {},
                "priority": 5,
                "idempotency_key": None,
                "tasks_total": len(tasks),
                "tasks_remaining": len(tasks) if remaining is None else remaining,
            }
        )
        tx.insert_tasks(
            [
                {"execution_id": "e1", "task_id": tid, "position": i, **row}
                for i, (tid, row) in enumerate(tasks.items())
            ]
        )

    store.transact(body)


def running() -> dict[str, Any]:
    return {"state": "running", "deps_total": 0, "deps_remaining": 0, "attempts": 1}


def pending(total: int, remaining: int | None = None, **more: int) -> dict[str, Any]:
    left = total if remaining is None else remaining
    return {"state": "pending", "deps_total": total, "deps_remaining": left, **more}


def succeed(store: Store, task_id: str, successors: list[str]) -> Succeeded | None:
    return store.transact(
        lambda tx: tx.succeed_fast("e1", task_id, successors, {"v": task_id}), single=True
    )


def rows(store: Store) -> dict[str, tuple[Any, ...]]:
    def body(tx: Tx) -> dict[str, tuple[Any, ...]]:
        return {
            r.task_id: (r.state, r.deps_remaining, r.deps_succeeded, r.result)
            for r in tx.tasks("e1")
        }

    return store.read(body)


def history(store: Store) -> list[tuple[str | None, str | None, str, str | None]]:
    with store.engine.connect() as conn:
        got = conn.execute(
            sa.select(
                t.history.c.task_id,
                t.history.c.from_state,
                t.history.c.to_state,
                t.history.c.reason,
            ).order_by(t.history.c.id)
        ).all()
    return [tuple(r) for r in got]  # type: ignore[misc]


def test_a_join_is_queued_by_its_last_upstream_success(store: Store) -> None:
    _setup(store, {"a": running(), "c": running(), "b": pending(2), "z": pending(1)})
    assert succeed(store, "a", ["b"]) == Succeeded([], "running")
    assert rows(store)["b"] == ("pending", 1, 1, None)
    assert succeed(store, "c", ["b"]) == Succeeded(["b"], "running")
    assert rows(store)["a"] == ("succeeded", 0, 0, {"v": "a"})
    assert rows(store)["b"] == ("queued", 0, 2, None)
    assert history(store) == [
        ("a", "running", "succeeded", None),
        ("c", "running", "succeeded", None),
        ("b", "pending", "queued", "c succeeded"),
    ]
    # a second success of the same task changes nothing
    assert succeed(store, "c", ["b"]) is None
    assert rows(store)["b"] == ("queued", 0, 2, None)


def test_a_last_task_after_a_failure_is_handed_back_with_nothing_written(store: Store) -> None:
    # the execution fails, not completes: the coordinator decides that
    _setup(store, {"a": running(), "f": {**running(), "state": "failed"}}, remaining=1)
    assert succeed(store, "a", []) is None
    assert rows(store)["a"] == ("running", 0, 0, None)
    assert history(store) == []


def test_a_last_task_of_a_paused_execution_is_handed_back(store: Store) -> None:
    _setup(store, {"a": running()}, remaining=1)
    store.transact(lambda tx: tx.cas_execution("e1", "running", "paused"))
    assert succeed(store, "a", []) is None
    assert rows(store)["a"] == ("running", 0, 0, None)


def test_a_successor_to_skip_is_handed_back_with_nothing_written(store: Store) -> None:
    # b's other upstream task was skipped: all_success makes b skipped, which Python decides
    _setup(store, {"a": running(), "b": pending(2, 1, deps_skipped=1), "z": pending(1)})
    assert succeed(store, "a", ["b"]) is None
    assert rows(store)["a"] == ("running", 0, 0, None)
    assert rows(store)["b"] == ("pending", 1, 0, None)
    assert history(store) == []


def test_concurrent_last_upstream_successes_queue_the_join_exactly_once(store: Store) -> None:
    ups = [f"u{i}" for i in range(8)]
    _setup(store, {**{u: running() for u in ups}, "j": pending(len(ups)), "z": pending(1)})
    barrier = threading.Barrier(len(ups))
    got: list[Succeeded | None] = []
    lock = threading.Lock()

    def end(u: str) -> None:
        barrier.wait()
        out = succeed(store, u, ["j"])
        with lock:
            got.append(out)

    threads = [threading.Thread(target=end, args=(u,)) for u in ups]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(g is not None for g in got)
    assert sorted(g.queued for g in got if g is not None) == [[]] * 7 + [["j"]]
    assert rows(store)["j"] == ("queued", 0, 8, None)


def test_the_last_success_completes_a_running_execution(store: Store) -> None:
    _setup(store, {"a": running(), "s": {**running(), "state": "skipped"}}, remaining=1)
    assert succeed(store, "a", []) == Succeeded([], "completed")
    assert history(store) == [
        ("a", "running", "succeeded", None),
        (None, "running", "completed", "every task succeeded or was skipped"),
    ]
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(t.executions).where(t.executions.c.id == "e1")).one()
    assert (row.state, row.tasks_remaining) == ("completed", 0)


def test_the_hot_path_reuses_a_cursor_and_keeps_no_closed_connection_alive(store: Store) -> None:
    _setup(store, {"a": pending(1)})
    conn = store.connect_raw()
    assert hotpath.queue_pending(conn, utcnow(), "e1", ["a"], "test") == ["a"]
    cursor = getattr(conn, hotpath._CURSOR)
    assert hotpath.queue_pending(conn, utcnow(), "e1", ["a"], "again") == []  # queued already
    assert getattr(conn, hotpath._CURSOR) is cursor
    gone = weakref.ref(conn)
    conn.close()
    del conn, cursor
    gc.collect()
    assert gone() is None
