"""The reconciler's scan for claims that lost workers held, and republishing that never waits
on a locked row, on Postgres with a coordinator whose messages go to a list (no worker)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
import pytest

from bench.store_cost import ListDispatcher
from flowq import Workflow
from flowq.coordinator import Coordinator
from flowq.recovery import HeldClaims, RecoverySettings, reconcile
from flowq.store import Store, utcnow
from tests.conftest import fresh_postgres_database
from tests.engine.conftest import py

pytestmark = pytest.mark.integration

ROOTS = [f"r{i}" for i in range(5)]


@dataclass(frozen=True)
class Held:
    """A mark as ``workers.markers.Mark`` has it (the fields the reconciler reads)."""

    worker: str | None
    attempt: int | None
    started: datetime


@pytest.fixture
def queued() -> Iterator[tuple[Coordinator, ListDispatcher, str]]:
    """A running execution whose five root tasks are queued, their messages in a list."""
    with fresh_postgres_database("flowq_scan") as url:
        store = Store(url)
        store.upgrade()
        dispatcher = ListDispatcher()
        coordinator = Coordinator(store, dispatcher)
        coordinator.register(Workflow.from_dict({"id": "scan", "tasks": [py(r) for r in ROOTS]}))
        eid = coordinator.start("scan").execution_id
        dispatcher.sent.clear()
        try:
            yield coordinator, dispatcher, eid
        finally:
            coordinator.close()
            store.dispose()


def no_wait() -> RecoverySettings:
    """Every task counts as waiting past the lease; nothing as waiting past the republish."""
    return RecoverySettings(heartbeat=1, lease=0.0, redispatch_after=3600)


def test_the_scan_pages_through_the_queue_pass_after_pass(
    queued: tuple[Coordinator, ListDispatcher, str],
) -> None:
    coordinator, _, _ = queued
    asked: list[list[str]] = []

    def marks(keys: Sequence[tuple[str, str]]) -> list[Held | None]:
        asked.append(sorted(task for _, task in keys))
        return [None] * len(keys)

    held = HeldClaims(marks, page=2)
    for _ in range(4):
        reconcile(coordinator, no_wait(), held)
    assert [len(a) for a in asked] == [2, 2, 1, 2]  # the third pass ends the queue: start over
    assert sorted(task for page in asked[:3] for task in page) == ROOTS


def test_a_claim_held_by_a_lost_worker_is_republished_once(
    queued: tuple[Coordinator, ListDispatcher, str],
) -> None:
    coordinator, dispatcher, eid = queued
    coordinator.store.transact(lambda tx: tx.heartbeat("alive@host", 1))
    now = utcnow()
    marks = {
        "r0": Held("gone@host", 1, now),  # the next attempt, by a lost worker: republished
        "r1": Held("alive@host", 1, now),  # its worker beats: the claim may still be held
        "r2": Held("gone@host", 2, now),  # another attempt's mark (counted, or not its next)
        "r3": Held("gone@host", 1, now - timedelta(hours=1)),  # made before the dispatch
    }

    def lookup(keys: Sequence[tuple[str, str]]) -> list[Held | None]:
        return [marks.get(task) for _, task in keys]

    settings = RecoverySettings(heartbeat=1, lease=0.5, redispatch_after=3600)
    time.sleep(0.6)  # the tasks were dispatched over half a second ago
    coordinator.store.transact(lambda tx: tx.heartbeat("alive@host", 1))
    assert reconcile(coordinator, settings, HeldClaims(lookup)).redispatched == 1
    assert [(d.execution_id, d.task_id) for d in dispatcher.sent] == [(eid, "r0")]
    time.sleep(0.6)
    coordinator.store.transact(lambda tx: tx.heartbeat("alive@host", 1))
    assert reconcile(coordinator, settings, HeldClaims(lookup)).redispatched == 0  # once


def test_republishing_skips_a_row_a_held_claim_locks(
    queued: tuple[Coordinator, ListDispatcher, str],
) -> None:
    """A claim held open by a worker whose machine is gone keeps its row locked until
    Postgres drops the connection: republishing runs on the heartbeat thread and must not
    wait for it."""
    coordinator, dispatcher, eid = queued
    url = coordinator.store.engine.url.set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as holder:
        holder.execute(
            "SELECT 1 FROM flowq_task_runs WHERE execution_id = %s AND task_id = 'r0' "
            "FOR NO KEY UPDATE",
            (eid,),
        )  # left open, as a held claim is
        done = threading.Event()
        count: list[int] = []

        def republish() -> None:
            count.append(coordinator.redispatch([(eid, "r0"), (eid, "r1")]))
            done.set()

        threading.Thread(target=republish, daemon=True).start()
        assert done.wait(10), "republishing waited on the locked row"
        holder.rollback()
    assert count == [1]
    assert [d.task_id for d in dispatcher.sent] == ["r1"]
