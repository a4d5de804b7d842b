"""One contract suite for the state store, run on SQLite and on Postgres."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flowq.errors import Conflict, NotFound
from flowq.store import Store, Tx
from flowq.store import tables as t
from flowq.store.hotpath import Claimed, Meta
from flowq.store.migrate import is_current
from tests.store.conftest import empty_postgres_store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'state.db'}")
        s.upgrade()
    else:  # each test starts from empty tables
        s = empty_postgres_store(request.getfixturevalue("postgres_url"))
    yield s
    s.dispose()


def _execution(tx: Tx, eid: str = "e1", key: str | None = None) -> None:
    tx.insert_execution(
        {
            "id": eid,
            "workflow_id": "wf",
            "version": 1,
            "digest": "d" * 64,
            "state": "created",
            "vars": {"n": 1},
            "priority": 5,
            "idempotency_key": key,
            "tasks_total": 2,
            "tasks_remaining": 2,
        }
    )
    tx.insert_tasks(
        [
            {
                "execution_id": eid,
                "task_id": "a",
                "position": 0,
                "state": "pending",
                "deps_total": 0,
                "deps_remaining": 0,
            },
            {
                "execution_id": eid,
                "task_id": "b",
                "position": 1,
                "state": "pending",
                "deps_total": 2,
                "deps_remaining": 2,
            },
        ]
    )


def test_upgrade_is_idempotent_and_current(store: Store) -> None:
    store.upgrade()
    assert is_current(store.engine)
    names = set(sa.inspect(store.engine).get_table_names())
    assert {"flowq_definitions", "flowq_executions", "flowq_task_runs", "flowq_history"} <= names


def test_definitions_are_immutable_per_version_unless_replaced(store: Store) -> None:
    body = {"id": "wf", "version": 1, "tasks": []}
    assert store.transact(lambda tx: tx.put_definition("wf", 1, "a" * 64, None, body, False))
    assert not store.transact(lambda tx: tx.put_definition("wf", 1, "a" * 64, None, body, False))
    with pytest.raises(Conflict, match="already registered with a different definition"):
        store.transact(lambda tx: tx.put_definition("wf", 1, "b" * 64, None, body, False))
    assert store.transact(lambda tx: tx.put_definition("wf", 1, "b" * 64, None, body, True))
    store.transact(lambda tx: tx.put_definition("wf", 2, "c" * 64, None, body, False))
    assert store.read(lambda tx: tx.definition_digest("wf", None)) == (2, "c" * 64)
    assert store.read(lambda tx: tx.definition_digest("wf", 1)) == (1, "b" * 64)
    assert store.read(lambda tx: tx.definition_body("c" * 64)) == body
    with pytest.raises(NotFound, match="workflow nope is not registered"):
        store.read(lambda tx: tx.definition_digest("nope", None))


def test_execution_compare_and_set_and_history(store: Store) -> None:
    store.transact(_execution)
    assert store.transact(lambda tx: tx.cas_execution("e1", "created", "running", "go"))
    # a stale writer that still believes the execution is `created` loses
    assert not store.transact(lambda tx: tx.cas_execution("e1", "created", "cancelled"))
    assert store.read(lambda tx: tx.execution("e1")).state == "running"
    hist = store.read(lambda tx: list(tx.conn.execute(sa.select(t.history))))
    assert [(h.from_state, h.to_state, h.reason) for h in hist] == [("created", "running", "go")]
    with pytest.raises(NotFound, match="execution nope not found"):
        store.read(lambda tx: tx.execution("nope"))


def test_task_cas_can_require_execution_state(store: Store) -> None:
    store.transact(_execution)
    store.transact(lambda tx: tx.cas_task("e1", "a", "pending", "queued"))
    # the execution is still `created`: a claim that requires `running` must not happen
    assert not store.transact(
        lambda tx: tx.cas_task("e1", "a", "queued", "running", require_execution="running")
    )
    store.transact(lambda tx: tx.cas_execution("e1", "created", "running"))
    assert store.transact(
        lambda tx: tx.cas_task(
            "e1", "a", "queued", "running", require_execution="running", attempts=1
        )
    )
    assert store.transact(
        lambda tx: tx.cas_task("e1", "a", "running", "succeeded", result={"x": [1, "two"]})
    )
    # a duplicate or late message cannot record a second result or move the state back
    assert not store.transact(lambda tx: tx.cas_task("e1", "a", "running", "failed"))
    row = store.read(lambda tx: tx.task("e1", "a"))
    assert row is not None and (row.state, row.attempts, row.result) == (
        "succeeded",
        1,
        {"x": [1, "two"]},
    )
    assert store.read(lambda tx: tx.results("e1", ["a", "b"])) == {"a": {"x": [1, "two"]}}


def test_dependency_counters(store: Store) -> None:
    store.transact(_execution)
    first = store.transact(lambda tx: tx.count_upstream_end("e1", "b", "succeeded"))
    second = store.transact(lambda tx: tx.count_upstream_end("e1", "b", "skipped"))
    assert first is not None and second is not None
    assert (first.deps_remaining, first.deps_succeeded) == (1, 1)
    assert (
        second.deps_remaining,
        second.deps_succeeded,
        second.deps_skipped,
        second.deps_failed,
        second.state,
    ) == (0, 1, 1, 0, "pending")
    assert store.transact(lambda tx: tx.settle_count("e1", 2)) == (0, "created")


def _history(store: Store, eid: str = "e1") -> list[tuple[str | None, str | None, str, str | None]]:
    rows = store.read(
        lambda tx: tx.conn.execute(
            sa.select(t.history.c.task_id, t.history.c.from_state, t.history.c.to_state)
            .add_columns(t.history.c.reason)
            .where(t.history.c.execution_id == eid)
            .order_by(t.history.c.id)
        ).all()
    )
    return [tuple(r) for r in rows]


def test_hot_path_claim_end_and_queue_agree_on_both_stores(store: Store) -> None:
    store.transact(_execution)
    store.transact(lambda tx: tx.cas_execution("e1", "created", "running"))
    store.transact(lambda tx: tx.cas_task("e1", "a", "pending", "queued"))
    # only a queued task of a running execution is claimed, in one call, with its results
    got = store.transact(
        lambda tx: tx.claim_queued("e1", "a", ["b"], celery_id="c-1", worker="w1"), single=True
    )
    assert got == Claimed(1, {}, remaining=2)  # a and b are still to end
    assert store.transact(
        lambda tx: tx.claim_queued("e1", "a", [], celery_id="c-2", worker="w1"), single=True
    ) is None  # fmt: skip
    row = store.read(lambda tx: tx.task("e1", "a"))
    assert row is not None
    assert (row.state, row.attempts, row.celery_id, row.worker) == ("running", 1, "c-1", "w1")
    # the end counts against each successor and the execution, in the same call
    ended = store.transact(
        lambda tx: tx.end_task("e1", "a", "succeeded", None, ["b"], result={"x": [1, "two"]})
    )
    assert ended is not None
    assert (ended.remaining, ended.execution_state) == (1, "running")
    assert [(c.task_id, c.state, c.deps_remaining, c.deps_succeeded) for c in ended.successors] == [
        ("b", "pending", 1, 1)
    ]
    # a second end of the same task changes nothing
    assert store.transact(lambda tx: tx.end_task("e1", "a", "failed", "x", ["b"])) is None
    row = store.read(lambda tx: tx.task("e1", "b"))
    assert row is not None and (row.deps_remaining, row.deps_failed) == (1, 0)
    assert store.transact(lambda tx: tx.queue_pending("e1", ["b", "a"], "a succeeded")) == ["b"]
    assert store.transact(lambda tx: tx.queue_pending("e1", ["b"], "again")) == []
    got = store.transact(
        lambda tx: tx.claim_queued("e1", "b", ["a"], celery_id="c-3", worker="w2", with_meta=True),
        single=True,
    )
    # with_meta: the execution's fixed fields come with the claim
    assert got is not None and got.meta == Meta("d" * 64, 1, 5, {"n": 1})
    got = Claimed(got.attempt, got.results, remaining=got.remaining)
    assert got == Claimed(1, {"a": {"x": [1, "two"]}}, remaining=1)  # only b is left
    ended = store.transact(lambda tx: tx.end_task("e1", "b", "failed", "boom", [], error="boom"))
    assert ended is not None and (ended.remaining, ended.successors) == (0, [])
    row = store.read(lambda tx: tx.task("e1", "b"))
    assert row is not None and (row.state, row.error, row.result) == ("failed", "boom", None)
    assert _history(store)[-6:] == [
        ("a", "pending", "queued", None),
        ("a", "queued", "running", "attempt 1"),
        ("a", "running", "succeeded", None),
        ("b", "pending", "queued", "a succeeded"),
        ("b", "queued", "running", "attempt 1"),
        ("b", "running", "failed", "boom"),
    ]


def test_hot_path_claim_refuses_a_paused_execution(store: Store) -> None:
    store.transact(_execution)
    store.transact(lambda tx: tx.cas_execution("e1", "created", "paused"))
    store.transact(lambda tx: tx.cas_task("e1", "a", "pending", "queued"))
    claim = store.transact(
        lambda tx: tx.claim_queued("e1", "a", [], celery_id=None, worker=None), single=True
    )
    assert claim is None
    row = store.read(lambda tx: tx.task("e1", "a"))
    assert row is not None and (row.state, row.attempts) == ("queued", 0)


def test_idempotency_key_is_unique_per_workflow(store: Store) -> None:
    store.transact(lambda tx: _execution(tx, "e1", key="k"))
    assert store.read(lambda tx: tx.find_idempotent("wf", "k")) == "e1"
    with pytest.raises(sa_exc.IntegrityError):
        store.transact(lambda tx: _execution(tx, "e2", key="k"))


def test_concurrent_compare_and_set_has_exactly_one_winner(store: Store) -> None:
    store.transact(_execution)
    store.transact(lambda tx: tx.cas_execution("e1", "created", "running"))
    store.transact(lambda tx: tx.cas_task("e1", "a", "pending", "queued"))
    barrier = threading.Barrier(8)
    wins: list[bool] = []
    lock = threading.Lock()

    def claim() -> None:
        barrier.wait()
        ok = store.transact(lambda tx: tx.cas_task("e1", "a", "queued", "running"))
        with lock:
            wins.append(ok)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(wins) == [False] * 7 + [True]
    hist = store.read(
        lambda tx: list(tx.conn.execute(sa.select(t.history).where(t.history.c.task_id == "a")))
    )
    assert [(h.from_state, h.to_state) for h in hist] == [
        ("pending", "queued"),
        ("queued", "running"),
    ]


def test_concurrent_fan_in_counts_reach_zero_exactly_once(store: Store) -> None:
    store.transact(_execution)
    zero: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def end(state: str) -> None:
        barrier.wait()
        row = store.transact(lambda tx: tx.count_upstream_end("e1", "b", state))
        assert row is not None
        with lock:
            zero.append(row.deps_remaining)

    threads = [threading.Thread(target=end, args=(s,)) for s in ("succeeded", "failed")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(zero) == [0, 1]


def test_head_constant_matches_the_migration_scripts() -> None:
    from flowq.store.migrate import HEAD, script_head

    assert script_head() == HEAD
