"""Commit batches (``flowq.store.held``): successes of tasks without successors, committed
together on a held claim's connection, their executions counted once per batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from bench.store_cost import ListDispatcher
from flowq import Workflow
from flowq.coordinator import Coordinator
from flowq.store import Store
from flowq.store.held import BATCH_MAX, HeldClaim, Holder
from flowq.store.statements import COMPLETED_REASON
from tests.store.test_fast_success import _setup, history, pending, rows, running, store
from tests.store.test_held import claim_of as held_claim_of
from tests.store.test_held import queued, wait_for, xmins

pytestmark = pytest.mark.integration
__all__ = ["store"]  # the fixture, shared with test_fast_success

Got = list[tuple[str, Any, BaseException | None]]


def claim_of(holder: Holder, task_id: str, *, leaf: bool = True) -> HeldClaim:
    """A held claim of ``task_id`` (by default of a task without successors)."""
    return held_claim_of(holder, task_id, leaf=leaf)[1]


def succeed_batched(holder: Holder, held: HeldClaim, got: Got) -> None:
    """The success of ``held``'s task (without successors) into its connection's batch; what
    the batch's end says lands in ``got``."""
    task_id = held.task_id
    holder.finish_batched(
        held,
        lambda tx, claiming: tx.send_succeed_leaf("e1", task_id, {"v": task_id}, claiming),
        lambda out, error: got.append((task_id, out, error)),
    )


@contextmanager
def batching(store: Store, batch: float = 30) -> Iterator[tuple[Holder, Got]]:
    """A holder whose commit batches wait ``batch`` seconds for more (30: only a claim or
    ``drain`` seals one), and the list its successes' ends land in; closed on the way out."""
    holder = Holder(store, hold=30, batch=batch)
    try:
        yield holder, []
    finally:
        holder.close()


def execution(store: Store) -> tuple[str, int]:
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT state, tasks_remaining FROM flowq_executions WHERE id = 'e1'")
        ).one()
    return str(row[0]), int(row[1])


def test_successes_in_a_batch_commit_together_and_count_their_execution_once(
    store: Store,
) -> None:
    tasks = ["a", "b", "c"]
    _setup(store, {t: queued() for t in tasks})
    with batching(store) as (holder, got):  # only a claim or drain seals it here
        for task_id in tasks:
            succeed_batched(holder, claim_of(holder, task_id), got)
        # nothing committed yet: the batch is open on the holder's connection
        assert [rows(store)[t][0] for t in tasks] == ["queued"] * 3
        assert execution(store) == ("running", 3)
        assert holder.drain(10)
        assert got == [(t, True, None) for t in tasks]
    assert [rows(store)[t] for t in tasks] == [("succeeded", 0, 0, {"v": t}) for t in tasks]
    assert execution(store) == ("completed", 0)
    assert history(store) == [
        ("a", "queued", "running", "attempt 1"),
        ("a", "running", "succeeded", None),
        ("b", "queued", "running", "attempt 1"),
        ("b", "running", "succeeded", None),
        ("c", "queued", "running", "attempt 1"),
        ("c", "running", "succeeded", None),
        (None, "running", "completed", COMPLETED_REASON),
    ]
    assert len(set(xmins(store).values())) == 1, "one transaction"
    with store.engine.connect() as conn:  # the execution ended when its last task did
        ended = conn.execute(
            sa.text(
                "SELECT (SELECT at FROM flowq_history WHERE task_id IS NULL), "
                "(SELECT finished_at FROM flowq_task_runs WHERE task_id = 'c'), "
                "(SELECT updated_at FROM flowq_executions)"
            )
        ).one()
    assert ended[0] == ended[1] == ended[2]


def test_a_batch_is_sealed_when_due_by_the_next_claim_or_the_timer(store: Store) -> None:
    _setup(store, {t: queued() for t in "abcd"})
    with batching(store, batch=0.2) as (holder, got):
        succeed_batched(holder, claim_of(holder, "a"), got)
        held_b = claim_of(holder, "b")  # young: b's claim joins the batch
        succeed_batched(holder, held_b, got)
        time.sleep(0.25)
        held_c = claim_of(holder, "c")  # due: sealed (committed) before c's claim
        wait_for(lambda: rows(store)["b"][0] == "succeeded")
        assert got == [("a", True, None), ("b", True, None)]
        assert rows(store)["c"][0] == "queued" and execution(store) == ("running", 2)
        succeed_batched(holder, held_c, got)
        started = time.monotonic()
        # no claim comes: the timer seals c's batch once it is due
        wait_for(lambda: rows(store)["c"][0] == "succeeded", timeout=5)
        assert time.monotonic() - started < 2
        assert execution(store) == ("running", 1)
    written = xmins(store)
    assert written[("a", "succeeded")] == written[("b", "succeeded")]
    assert written[("c", "succeeded")] != written[("b", "succeeded")]


def test_a_full_batch_is_sealed_at_once(store: Store) -> None:
    tasks = [f"t{i:02}" for i in range(BATCH_MAX + 1)]
    _setup(store, {t: queued() for t in tasks})
    with batching(store) as (holder, got):  # closing it drains: the last batch is committed
        for task_id in tasks:
            succeed_batched(holder, claim_of(holder, task_id), got)
        wait_for(lambda: rows(store)[tasks[BATCH_MAX - 1]][0] == "succeeded")
        assert rows(store)[tasks[BATCH_MAX]][0] == "queued"  # the next batch, still open
    assert execution(store) == ("completed", 0)
    assert sorted(t for t, out, _ in got if out) == tasks


def test_a_claim_that_may_not_join_seals_the_batch_first(store: Store) -> None:
    _setup(store, {"a": queued(), "b": queued()})
    with batching(store) as (holder, got):
        succeed_batched(holder, claim_of(holder, "a"), got)
        held_b = claim_of(holder, "b", leaf=False)  # a task with successors: its own commit
        wait_for(lambda: rows(store)["a"][0] == "succeeded")
        assert execution(store) == ("running", 1)
        held_b.commit()
    written = xmins(store)
    assert written[("a", "succeeded")] != written[("b", "running")]


def test_a_claim_committed_by_itself_takes_the_batch_with_it(store: Store) -> None:
    # a failure or the hold's timer commits the open claim: the batch it is in is sealed
    # and counted first, in the same commit
    _setup(store, {"a": queued(), "b": queued()})
    with batching(store) as (holder, got):
        succeed_batched(holder, claim_of(holder, "a"), got)
        held_b = claim_of(holder, "b")
        held_b.commit()
        assert not held_b.lost and not held_b.open
        assert rows(store)["a"][0] == "succeeded" and rows(store)["b"][0] == "running"
        assert execution(store) == ("running", 1)
        assert holder.drain(10) and got == [("a", True, None)]
    written = xmins(store)
    assert written[("a", "succeeded")] == written[("b", "running")]


def test_a_batch_handed_back_is_rolled_back_and_each_success_takes_the_long_way(
    store: Store,
) -> None:
    # b is the execution's last task but f failed: only the coordinator decides the end, so
    # the count hands the batch back, and each success learns that it was not recorded and
    # that its claim went too (the transactional end makes it again)
    _setup(store, {"a": queued(), "b": queued(), "f": {**running(), "state": "failed"}}, 2)
    with batching(store) as (holder, got):
        held_a = claim_of(holder, "a")
        succeed_batched(holder, held_a, got)
        held_b = claim_of(holder, "b")
        succeed_batched(holder, held_b, got)
        assert holder.drain(10)
        assert got == [("a", None, None), ("b", None, None)]
        assert held_a.lost and held_b.lost
    assert rows(store)["a"][0] == "queued" and rows(store)["b"][0] == "queued"
    assert execution(store) == ("running", 2)
    assert history(store) == []


def test_a_success_that_finds_its_task_moved_on_is_not_counted(store: Store) -> None:
    # a's claim was committed before its success (the hold's timer), then a was cancelled:
    # its success ends nothing and takes nothing from the execution's count; b's does
    _setup(store, {"a": queued(), "b": queued()})
    with batching(store) as (holder, got):
        held_a = claim_of(holder, "a")
        held_a.commit()
        with store.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE flowq_task_runs SET state = 'cancelled' WHERE task_id = 'a'")
            )
        succeed_batched(holder, held_a, got)
        succeed_batched(holder, claim_of(holder, "b"), got)
        assert holder.drain(10)
        assert got == [("a", None, None), ("b", True, None)]
        assert not held_a.lost
    assert rows(store)["a"][0] == "cancelled" and rows(store)["b"][0] == "succeeded"
    assert execution(store) == ("running", 1)


def test_a_batch_lost_with_its_connection_sends_each_success_the_long_way(store: Store) -> None:
    _setup(store, {"a": queued(), "b": queued(), "c": queued()})
    with batching(store) as (holder, got):
        held_a = claim_of(holder, "a")
        succeed_batched(holder, held_a, got)
        held_b = claim_of(holder, "b")
        held_b.conn.conn.pgconn.finish()  # the server or the network is gone
        with pytest.raises(psycopg.OperationalError):
            succeed_batched(holder, held_b, got)
        assert held_b.lost
        claim_of(holder, "c").commit()  # a new connection
        assert holder.drain(10)
        assert [(t, out) for t, out, _ in got] == [("a", None)]
        assert isinstance(got[0][2], psycopg.OperationalError)
        assert held_a.lost
    assert rows(store)["a"][0] == "queued" and rows(store)["c"][0] == "running"


def test_abandoning_a_claim_in_a_batch_commits_the_batch_and_releases_the_claim(
    store: Store,
) -> None:
    _setup(store, {"a": queued(), "b": queued()})
    with batching(store) as (holder, got):
        succeed_batched(holder, claim_of(holder, "a"), got)
        held_b = claim_of(holder, "b")
        holder.abandon(held_b)
        assert not held_b.open
        assert rows(store)["a"][0] == "succeeded" and rows(store)["b"][0] == "queued"
        with store.engine.connect() as other:  # b's row is free again
            other.execute(
                sa.text(
                    "SELECT 1 FROM flowq_task_runs WHERE task_id = 'b' FOR NO KEY UPDATE NOWAIT"
                )
            )
    assert execution(store) == ("running", 1)


@pytest.mark.parametrize("shared", [False, True], ids=["two-processes", "two-threads"])
def test_batches_of_two_connections_on_one_execution_count_it_exactly(
    store: Store, shared: bool
) -> None:
    # two pool processes' (or two threads') batches take turns on the execution's row; the
    # last one to count sees the other's tasks and completes the execution, once
    tasks = [f"t{i:02}" for i in range(40)]
    _setup(store, {t: queued() for t in tasks})
    one = Holder(store, hold=30, batch=0.005)
    holders = [one, one] if shared else [one, Holder(store, hold=30, batch=0.005)]
    got: Got = []
    errors: list[BaseException] = []

    def work(holder: Holder, mine: list[str]) -> None:
        try:
            for task_id in mine:
                succeed_batched(holder, claim_of(holder, task_id), got)
                time.sleep(0.001)
            holder.drain(10)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(h, tasks[i::2])) for i, h in enumerate(holders)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for holder in set(holders):
            holder.close()
    assert errors == []
    assert sorted(t for t, out, _ in got if out) == tasks
    assert execution(store) == ("completed", 0)
    ends = [h for h in history(store) if h[0] is None]
    assert ends == [(None, "running", "completed", COMPLETED_REASON)]
    assert history(store)[-1] == ends[0]


def test_a_claim_committed_with_a_batch_that_is_rolled_back_is_lost(store: Store) -> None:
    # a and c are the execution's last tasks to count while f failed: the count hands the
    # batch back, and b's claim, written in the same transaction, goes with it
    tasks = {"a": queued(), "c": queued(), "b": queued(), "f": {**running(), "state": "failed"}}
    _setup(store, tasks, remaining=2)
    with batching(store) as (holder, got):
        succeed_batched(holder, claim_of(holder, "a"), got)
        succeed_batched(holder, claim_of(holder, "c"), got)
        held_b = claim_of(holder, "b")
        held_b.commit()
        assert held_b.lost and not held_b.open
        assert holder.drain(10)
        assert got == [("a", None, None), ("c", None, None)]
    assert [rows(store)[t][0] for t in "acb"] == ["queued"] * 3
    assert history(store) == []


def test_a_success_with_successors_in_a_batch_rolled_back_is_not_taken_for_done(
    store: Store,
) -> None:
    # b joined a's batch (its claim said it had no successors) but ends with a successor, in
    # the batch's transaction: the count hands the batch back, b's statement goes with it
    tasks = {"a": queued(), "b": queued(), "z": pending(1), "f": {**running(), "state": "failed"}}
    _setup(store, tasks, remaining=2)
    with batching(store) as (holder, got):
        succeed_batched(holder, claim_of(holder, "a"), got)
        held_b = claim_of(holder, "b")
        done = holder.finish(
            held_b,
            lambda tx, commit, claiming: tx.succeed_fast(
                "e1", "b", ["z"], {"v": 1}, commit, claiming
            ),
        )
        assert done is None and held_b.lost
        assert holder.drain(10) and got == [("a", None, None)]
    assert [rows(store)[t][0] for t in "abz"] == ["queued", "queued", "pending"]
    assert history(store) == []


def test_close_rolls_back_a_batch_behind_an_open_claim_before_its_successes_go_on(
    store: Store,
) -> None:
    # a pool process exits while a task runs: its batch goes with the connection, and only
    # then do its successes take the transactional end, which needs their rows
    _setup(store, {"a": queued(), "b": queued()})
    holder = Holder(store, hold=30, batch=30)
    got: Got = []
    touched: list[int] = []

    def then(out: Any, error: BaseException | None) -> None:
        got.append(("a", out, error))
        with store.engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
            touched.append(
                conn.execute(
                    sa.text("UPDATE flowq_task_runs SET worker = 'next' WHERE task_id = 'a'")
                ).rowcount
            )

    held_a = claim_of(holder, "a")
    holder.finish_batched(
        held_a,
        lambda tx, claiming: tx.send_succeed_leaf("e1", "a", {"v": "a"}, claiming),
        then,
    )
    claim_of(holder, "b")  # joins the batch, and is still running at close
    started = time.monotonic()
    holder.close()
    assert time.monotonic() - started < 4
    assert [(t, out) for t, out, _ in got] == [("a", None)] and touched == [1]
    assert held_a.lost
    assert rows(store)["a"][0] == "queued" and rows(store)["b"][0] == "queued"


def test_a_claim_reads_its_executions_tasks_left(store: Store) -> None:
    _setup(store, {"a": queued(), "b": queued(), "c": running()}, remaining=3)
    with batching(store) as (holder, _):
        claimed, held = held_claim_of(holder, "a", leaf=True)
        assert claimed.remaining == 3  # a, b and c: each still to end
        holder.abandon(held)


def test_the_last_tasks_success_commits_its_batch_at_once(store: Store) -> None:
    # 30 s batches: only a claim, drain, or the execution's end seals one here
    _setup(store, {"a": queued(), "b": queued()}, remaining=2)
    with batching(store) as (holder, got):
        held_a = claim_of(holder, "a")
        succeed_batched(holder, held_a, got)
        time.sleep(0.2)
        assert rows(store)["a"][0] == "queued"  # a was not the last: its success waits
        held_b = claim_of(holder, "b")  # joins a's batch
        held_b.last = True  # as the coordinator sets it from ``remaining`` (tested below)
        started = time.monotonic()
        succeed_batched(holder, held_b, got)
        wait_for(lambda: execution(store) == ("completed", 0), timeout=5)
        assert time.monotonic() - started < 2
        assert holder.drain(10)  # the batch's outcome is read later (the next claim, the timer)
        assert got == [("a", True, None), ("b", True, None)]
    written = xmins(store)
    assert written[("a", "succeeded")] == written[("b", "succeeded")], "one batch"


def state_of(store: Store, execution_id: str) -> str | None:
    row = store.read(lambda tx: tx.execution(execution_id))
    return None if row is None else str(row.state)


def _coordinator(store: Store) -> tuple[Coordinator, ListDispatcher]:
    sent = ListDispatcher()
    return Coordinator(Store(store.url), sent, hold=30, batch=30), sent


def test_a_claim_knows_when_its_task_is_its_executions_last(store: Store) -> None:
    coordinator, sent = _coordinator(store)
    task: dict[str, Any] = {"type": "python", "handler": "json:dumps"}
    tasks = [
        {"id": "a", **task},
        {"id": "b", **task},
        {"id": "c", **task, "depends_on": ["a", "b"]},
    ]
    wf = Workflow.from_dict({"id": "lastly", "tasks": tasks})
    coordinator.register(wf, replace=True)
    try:
        eid = coordinator.start("lastly").execution_id
        roots = {d.task_id: d for d in sent.sent}
        sent.sent.clear()

        def claim(task_id: str, digest: str) -> Any:
            got = coordinator.claim(eid, task_id, celery_id=task_id, digest=digest, hold=True)
            assert got is not None and got.held
            return got

        a, b = claim("a", roots["a"].digest), claim("b", roots["b"].digest)
        assert not a.last and not b.last  # three tasks left, then still three
        for task_id in ("a", "b"):

            def end(task_id: str = task_id) -> None:
                coordinator.succeeded(eid, task_id, 1)

            assert coordinator.end_later(eid, task_id, end)
        assert coordinator.holder is not None and coordinator.holder.drain(10)
        (join,) = sent.sent
        c = claim("c", join.digest)
        assert c.last  # only c is left: its success ends the execution
        started = time.monotonic()
        assert coordinator.succeed_later(eid, "c", {"c": 3}, lambda: None)
        # into a batch that waits 30 s for more, yet committed at once
        wait_for(lambda: state_of(store, eid) == "completed", timeout=5)
        assert time.monotonic() - started < 2
    finally:
        coordinator.close()
