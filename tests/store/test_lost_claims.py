"""Attempts that die with their held claim uncommitted are counted once, whichever message
claims the task next (``workers.signals.claim_message``, ``workers.markers``).

Two coordinators stand for two worker processes on one Postgres store, marking on a real
Redis; a process "dies" by closing its held connections (Postgres rolls the claim back, as it
does when the process is killed; ``tests/integration/test_durability.py`` kills real ones).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from bench.store_cost import ListDispatcher
from flowq import Workflow
from flowq.coordinator import Claim, Coordinator, Dispatch
from flowq.store import Store, Tx
from tests.store.conftest import empty_postgres_store
from tests.store.test_fast_success import history
from workers.markers import Mark, Marks, RedisMarks
from workers.signals import claim_message

pytestmark = pytest.mark.integration


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    s = empty_postgres_store(postgres_url)
    yield s
    s.dispose()


@pytest.fixture
def marks(redis_url: str) -> Marks:
    return RedisMarks(redis_url, ttl=60)


def worker(store: Store) -> tuple[Coordinator, ListDispatcher]:
    sent = ListDispatcher()
    return Coordinator(Store(store.url), sent, hold=30), sent


def message(
    runtime: Any, d: Dispatch, *, msg: str | None = None, redelivered: bool = False
) -> Claim | None:
    """What a worker does with the message of ``d`` before the task body runs."""
    request = SimpleNamespace(
        hostname=f"w-{id(runtime)}",
        kwargs={"execution_id": d.execution_id, "task_id": d.task_id, "digest": d.digest},
        delivery_info={"redelivered": redelivered},
    )
    celery_id = msg or uuid.uuid4().hex
    return claim_message(runtime, request, (d.execution_id, d.task_id), celery_id)


def start(coordinator: Coordinator, sent: ListDispatcher, retries: int = 2) -> Dispatch:
    wf = Workflow.from_dict({"id": "lost", "tasks": [
        {"id": "a", "type": "python", "handler": "json:dumps", "retries": retries},
        {"id": "b", "type": "python", "handler": "json:dumps", "depends_on": ["a"]}]})  # fmt: skip
    coordinator.register(wf, replace=True)
    coordinator.start("lost")
    (d,) = sent.sent
    sent.sent.clear()
    return d


def task_a(store: Store, execution_id: str) -> tuple[str, int, list[tuple[str, str, str]]]:
    """Task ``a``'s state, attempts and history (from, to, reason)."""

    def read(tx: Tx) -> tuple[str, int]:
        row = tx.task(execution_id, "a")
        assert row is not None
        return str(row.state), int(row.attempts)

    steps = [(str(f), to, r or "") for task, f, to, r in history(store) if task == "a"]
    return (*store.read(read), steps)


def die(coordinator: Coordinator) -> None:
    """The worker process is gone: its open transactions are rolled back."""
    assert coordinator.holder is not None
    coordinator.holder.close()


def test_a_duplicate_message_counts_the_attempt_that_died_holding(
    store: Store, marks: Marks
) -> None:
    # the crashed message is not redelivered yet; a republished duplicate (another message
    # id) reaches another worker first: its claim gets the dead attempt's number, and its mark
    # swap returns the dead attempt's mark
    a, sent = worker(store)
    b, _ = worker(store)
    d = start(a, sent)
    first = message(SimpleNamespace(coordinator=a, marks=marks), d)
    assert first is not None and first.held and first.attempt == 1
    die(a)
    assert task_a(store, d.execution_id)[:2] == ("queued", 0)
    second = message(SimpleNamespace(coordinator=b, marks=marks), d)
    assert second is not None and second.attempt == 2
    assert not second.held  # claimed again and committed: the store shows it
    assert task_a(store, d.execution_id)[:2] == ("running", 2)
    assert b.succeeded(d.execution_id, "a", {"ok": True})
    state, attempts, steps = task_a(store, d.execution_id)
    assert (state, attempts) == ("succeeded", 2)
    assert [(f, t) for f, t, _ in steps] == [
        ("pending", "queued"),
        ("queued", "running"),
        ("running", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    assert "lost during attempt 1, before its claim was committed" in steps[2][2]
    b.close()


def test_the_redelivered_message_counts_it_before_its_claim(store: Store, marks: Marks) -> None:
    a, sent = worker(store)
    b, _ = worker(store)
    d = start(a, sent)
    assert message(SimpleNamespace(coordinator=a, marks=marks), d, msg="m-1") is not None
    die(a)
    again = message(SimpleNamespace(coordinator=b, marks=marks), d, msg="m-1", redelivered=True)
    assert again is not None and not again.held and again.attempt == 2
    assert task_a(store, d.execution_id)[:2] == ("running", 2)
    b.close()


def test_the_last_attempt_dying_holding_fails_the_task(store: Store, marks: Marks) -> None:
    a, sent = worker(store)
    b, _ = worker(store)
    d = start(a, sent, retries=0)
    assert message(SimpleNamespace(coordinator=a, marks=marks), d) is not None
    die(a)
    assert message(SimpleNamespace(coordinator=b, marks=marks), d) is None
    state, attempts, steps = task_a(store, d.execution_id)
    assert (state, attempts) == ("failed", 1)
    assert steps[-1][2].startswith("WorkerLostError: worker process lost during attempt 1")
    assert steps[-1][2].endswith("no attempts left (1 made)")
    b.close()


@pytest.mark.parametrize("redelivered", [True, False], ids=["redelivered", "duplicate"])
def test_an_attempt_counted_already_is_not_counted_again(
    store: Store, marks: Marks, redelivered: bool
) -> None:
    # the claim was committed (by the timer) before the process died, and recovery requeued
    # the task: the mark left behind names attempt 1, the next claim is attempt 2 (the
    # redelivered message reads the mark before its claim, a duplicate swaps it after)
    a, sent = worker(store)
    b, _ = worker(store)
    d = start(a, sent)
    assert message(SimpleNamespace(coordinator=a, marks=marks), d, msg="m-1") is not None
    a.commit_held(d.execution_id, "a")
    die(a)
    assert b.recover_lost(d.execution_id, "a", "worker gone (test)")
    claim = message(SimpleNamespace(coordinator=b, marks=marks), d, redelivered=redelivered)
    assert claim is not None and claim.attempt == 2 and claim.held is not redelivered
    assert b.succeeded(d.execution_id, "a", {"ok": True})
    state, attempts, steps = task_a(store, d.execution_id)
    assert (state, attempts) == ("succeeded", 2)
    assert not [s for s in steps if "before its claim" in s[2]]
    b.close()


def test_a_succeeded_tasks_mark_goes_with_the_next_mark_written(redis_url: str) -> None:
    import redis

    from workers.markers import MAX_LATER, PREFIX

    marks = RedisMarks(redis_url, ttl=60)
    server = redis.Redis.from_url(redis_url)
    now = datetime.now(UTC)
    assert marks.swap("e", "a", Mark("m-a", now, "w", 1)) == (True, None)
    marks.clear("e", "a", later=True)
    assert server.exists(f"{PREFIX}e:a")  # left for the next SET
    written, before = marks.swap("e", "b", Mark("m-b", now, "w", 1))
    assert written and before is None
    assert not server.exists(f"{PREFIX}e:a") and server.exists(f"{PREFIX}e:b")
    marks.clear("e", "b")  # after a failure or a retry: at once
    assert not server.exists(f"{PREFIX}e:b")
    for i in range(MAX_LATER):  # a process that claims nothing more keeps only so many
        marks.swap("e", f"t{i}", Mark("m", now, "w", 1))
    for i in range(MAX_LATER):
        marks.clear("e", f"t{i}", later=True)
    assert not server.keys(f"{PREFIX}e:t*")


def test_marks_outlive_a_dropped_connection_and_a_refused_command(redis_url: str) -> None:
    import redis

    marks = RedisMarks(redis_url, ttl=60)
    server = redis.Redis.from_url(redis_url)
    now = datetime.now(UTC)
    assert marks.swap("e", "a", Mark("m-1", now, "w", 1)) == (True, None)
    (client_id,) = marks._call(("CLIENT", "ID"))
    server.client_kill_filter(_id=client_id)  # the server closes the marks' connection
    written, before = marks.swap("e", "a", Mark("m-2", now, "w", 2))
    assert written and before is not None and before.attempt == 1  # connected again
    with pytest.raises(redis.ResponseError):  # refused: the connection is made afresh
        marks._call(("DEL", "k"), ("NO-SUCH-COMMAND",), ("GET", "k"))
    got = marks.get("e", "a")
    assert got is not None and (got.celery_id, got.attempt) == ("m-2", 2)


def test_a_cancel_waiting_on_a_held_claim_cancels_the_task_it_became(
    store: Store, marks: Marks
) -> None:
    # the cancel reads the task `queued` (its claim is held, uncommitted), then waits on the
    # row lock while the claim commits: it must cancel the `running` task and revoke its
    # message, not skip it
    import threading
    import time

    a, sent = worker(store)
    d = start(a, sent)
    claim = message(SimpleNamespace(coordinator=a, marks=marks), d, msg="m-1")
    assert claim is not None and claim.held
    revoked: list[str] = []
    sent.revoke = revoked.extend  # type: ignore[method-assign]
    cancel = threading.Thread(target=a.cancel, args=(d.execution_id,))
    cancel.start()
    time.sleep(0.5)  # the cancel is waiting on the task's row lock
    assert cancel.is_alive()
    a.commit_held(d.execution_id, "a")
    cancel.join(10)
    assert task_a(store, d.execution_id)[:2] == ("cancelled", 1)
    assert revoked == ["m-1"]
    a.close()


def test_a_held_success_ended_later_commits_and_dispatches_on_the_finisher(
    store: Store, marks: Marks
) -> None:
    import threading

    a, sent = worker(store)
    d = start(a, sent)
    claim = message(SimpleNamespace(coordinator=a, marks=marks), d)
    assert claim is not None and claim.held
    ran_on: list[int] = []

    def end() -> None:
        ran_on.append(threading.get_ident())
        assert a.succeeded(d.execution_id, "a", {"ok": True})

    assert a.end_later(d.execution_id, "a", end)
    assert a.holder is not None and a.holder.drain(10)
    assert ran_on and ran_on[0] != threading.get_ident()
    state, attempts, steps = task_a(store, d.execution_id)
    assert (state, attempts) == ("succeeded", 1)
    assert [(f, t) for f, t, _ in steps][-2:] == [("queued", "running"), ("running", "succeeded")]
    assert [x.task_id for x in sent.sent] == ["b"]  # published by the finisher, after the commit
    # a claim not held (a redelivered message's) ends in the caller: nothing is handed off
    b, _ = worker(store)
    again = message(SimpleNamespace(coordinator=b, marks=marks), sent.sent[0], redelivered=True)
    assert again is not None and not again.held
    assert not b.end_later(d.execution_id, "b", lambda: None)
    a.close()
    b.close()


def test_a_held_success_without_successors_is_sent_at_once_and_read_later(
    store: Store, marks: Marks
) -> None:
    a, sent = worker(store)
    d = start(a, sent)
    runtime = SimpleNamespace(coordinator=a, marks=marks)
    claim = message(runtime, d)
    assert claim is not None and claim.held
    # "a" has a successor to dispatch after its commit: not for later
    assert not a.succeed_later(d.execution_id, "a", {"ok": True}, lambda: None)
    assert a.end_later(d.execution_id, "a", lambda: a.succeeded(d.execution_id, "a", 1))
    assert a.holder is not None and a.holder.drain(10)
    (db,) = sent.sent
    claim_b = message(runtime, db)
    assert claim_b is not None and claim_b.held
    followed: list[str] = []
    assert a.succeed_later(d.execution_id, "b", {"b": 2}, lambda: followed.append("then"))
    assert followed == []  # sent, not read
    assert a.holder.drain(10)
    assert followed == ["then"]
    row = store.read(lambda tx: tx.execution(d.execution_id))
    assert row is not None and row.state == "completed"
    steps = [(task, f, to) for task, f, to, _ in history(store)]
    assert steps[-3:] == [
        ("b", "queued", "running"),
        ("b", "running", "succeeded"),
        (None, "running", "completed"),
    ]
    a.close()
