"""Attempts that die with their held claim uncommitted are counted once, whichever message
claims the task next (``workers.signals.claim_message``, ``workers.markers``).

Two coordinators stand for two worker processes on one Postgres store, marking on a real
Redis; a process "dies" by closing its held connections (Postgres rolls the claim back, as it
does when the process is killed; ``tests/integration/test_durability.py`` kills real ones).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from flowq import Workflow
from flowq.coordinator import Claim, Coordinator, Dispatch
from flowq.store import Store, Tx
from tests.store.conftest import empty_postgres_store
from tests.store.test_fast_success import history
from workers.markers import Marks, RedisMarks
from workers.signals import claim_message

pytestmark = pytest.mark.integration


class Sent:
    """The messages a coordinator publishes, kept in a list."""

    def __init__(self) -> None:
        self.items: list[Dispatch] = []

    def send(self, items: Sequence[Dispatch]) -> None:
        self.items.extend(items)

    def revoke(self, celery_ids: Sequence[str]) -> None:
        """Nothing runs here, so nothing to stop."""


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    s = empty_postgres_store(postgres_url)
    yield s
    s.dispose()


@pytest.fixture
def marks(redis_url: str) -> Marks:
    return RedisMarks(redis_url, ttl=60)


def worker(store: Store) -> tuple[Coordinator, Sent]:
    sent = Sent()
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


def start(coordinator: Coordinator, sent: Sent, retries: int = 2) -> Dispatch:
    wf = Workflow.from_dict({"id": "lost", "tasks": [
        {"id": "a", "type": "python", "handler": "json:dumps", "retries": retries},
        {"id": "b", "type": "python", "handler": "json:dumps", "depends_on": ["a"]}]})  # fmt: skip
    coordinator.register(wf, replace=True)
    coordinator.start("lost")
    (d,) = sent.items
    sent.items.clear()
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
    assert "no attempts left (1 made)" in steps[-1][2]
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
