"""Held claims (``flowq.store.held``): a claim and its task's success in one commit."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from flowq.store import Store, Tx, hotpath, utcnow
from flowq.store.held import HeldClaim, Holder
from flowq.store.hotpath import Claimed, Succeeded
from tests.store.test_fast_success import _setup, history, pending, rows, running, store

pytestmark = pytest.mark.integration
__all__ = ["store"]  # the fixture, shared with test_fast_success


def queued() -> dict[str, Any]:
    return {"state": "queued", "deps_total": 0, "deps_remaining": 0}


def claim(holder: Holder) -> tuple[Claimed, HeldClaim]:
    def fn(tx: Tx) -> Claimed | None:
        return tx.claim_queued("e1", "a", [], celery_id="c-1", worker="w1")

    got = holder.claim(fn, "e1", "a", utcnow(), "c-1", "w1")
    assert got is not None
    return got


def succeed(holder: Holder, held: HeldClaim, successors: list[str]) -> Succeeded | None:
    return holder.finish(
        held,
        lambda tx, commit, claiming: tx.succeed_fast(
            "e1", "a", successors, {"v": 1}, commit, claiming
        ),
    )


def xmins(store: Store) -> dict[tuple[str | None, str], int]:
    """The transaction that wrote each history row, by (task, to_state)."""
    with store.engine.connect() as conn:
        got = conn.execute(sa.text("SELECT task_id, to_state, xmin::text FROM flowq_history"))
        return {(r[0], r[1]): int(r[2]) for r in got}


def test_a_claim_held_is_committed_with_its_success(store: Store) -> None:
    _setup(store, {"a": queued(), "b": pending(1), "z": pending(1)})
    holder = Holder(store, hold=30)
    try:
        claimed, held = claim(holder)
        assert claimed.attempt == 1
        # nobody else sees the claim yet
        assert rows(store)["a"][0] == "queued"
        assert succeed(holder, held, ["b"]) == Succeeded(["b"], "running")
        assert not held.lost
    finally:
        holder.close()
    assert rows(store)["a"] == ("succeeded", 0, 0, {"v": 1})
    assert rows(store)["b"][0] == "queued"
    assert history(store) == [
        ("a", "queued", "running", "attempt 1"),
        ("a", "running", "succeeded", None),
        ("b", "pending", "queued", "a succeeded"),
    ]
    written = xmins(store)
    assert written[("a", "running")] == written[("a", "succeeded")], "one transaction"


def test_a_held_claim_locks_its_row_and_writes_it_once_with_its_success(store: Store) -> None:
    _setup(store, {"a": queued(), "b": pending(1), "z": pending(1)})
    holder = Holder(store, hold=30)
    try:
        claimed, held = claim(holder)
        assert claimed.attempt == 1
        # within the claim's transaction: no row updated or inserted yet
        written = held.conn.execute(
            "SELECT n_tup_upd + n_tup_ins FROM pg_stat_xact_user_tables "
            "WHERE relname IN ('flowq_task_runs', 'flowq_history')"
        ).fetchall()
        assert [r[0] for r in written] == [0, 0]
        locked = sa.text(
            "SELECT 1 FROM flowq_task_runs WHERE task_id = 'a' FOR NO KEY UPDATE NOWAIT"
        )
        # a second claimer cannot take the row
        with store.engine.connect() as other, pytest.raises(sa.exc.OperationalError, match="lock"):
            other.execute(locked)
        assert succeed(holder, held, ["b"]) == Succeeded(["b"], "running")
    finally:
        holder.close()
    assert rows(store)["a"] == ("succeeded", 0, 0, {"v": 1})
    assert history(store) == [
        ("a", "queued", "running", "attempt 1"),
        ("a", "running", "succeeded", None),
        ("b", "pending", "queued", "a succeeded"),
    ]


def test_a_claim_held_too_long_is_committed_by_the_timer(store: Store) -> None:
    _setup(store, {"a": queued(), "b": pending(1), "z": pending(1)})
    holder = Holder(store, hold=0.05)
    try:
        _, held = claim(holder)
        deadline = time.monotonic() + 10
        while rows(store)["a"][0] != "running":
            assert time.monotonic() < deadline, "the timer did not commit the claim"
            time.sleep(0.02)
        assert not held.open

        def started(tx: Tx) -> tuple[Any, Any, int]:
            row = tx.task("e1", "a")
            assert row is not None
            return row.started_at, row.celery_id, int(row.attempts)

        # written as of the claim, not of the timer's commit
        assert store.read(started) == (held.began, "c-1", 1)
        assert succeed(holder, held, ["b"]) == Succeeded(["b"], "running")
    finally:
        holder.close()
    written = xmins(store)
    assert written[("a", "running")] != written[("a", "succeeded")]
    assert rows(store)["a"][0] == "succeeded"
    with store.engine.connect() as conn:
        at = conn.execute(
            sa.text("SELECT at FROM flowq_history WHERE task_id = 'a' AND to_state = 'running'")
        ).scalar_one()
    assert at == held.began


def test_a_held_claim_dies_with_its_connection(store: Store) -> None:
    # the worker process dies before the commit: the task is queued again, no attempt counted
    _setup(store, {"a": queued(), "b": pending(1), "z": pending(1)})
    holder = Holder(store, hold=30)
    claim(holder)
    holder.close()

    def attempts(tx: Tx) -> tuple[str, int]:
        row = tx.task("e1", "a")
        assert row is not None
        return str(row.state), int(row.attempts)

    assert store.read(attempts) == ("queued", 0)
    assert history(store) == []


def test_a_handed_back_success_takes_the_held_claim_with_it(store: Store) -> None:
    # the last task after a failure: the coordinator must decide, so the statement undoes
    # itself, and the claim, still uncommitted, goes too (the coordinator claims again)
    _setup(store, {"a": queued(), "f": {**running(), "state": "failed"}}, remaining=1)
    holder = Holder(store, hold=30)
    try:
        _, held = claim(holder)
        assert succeed(holder, held, []) is None
        assert held.lost and not held.open
        # the connection is usable for the next claim: the same one
        assert not held.conn.broken
        store.transact(lambda tx: tx.cas_task("e1", "f", "failed", "queued"))
        got = holder.claim(
            lambda tx: tx.claim_queued("e1", "f", [], celery_id=None, worker=None),
            "e1",
            "f",
            utcnow(),
            None,
            None,
        )
        assert got is not None
        assert got[1].conn is held.conn
        got[1].commit()
    finally:
        holder.close()
    assert rows(store)["a"][0] == "queued"
    assert rows(store)["f"][0] == "running"


def claim_of(holder: Holder, task_id: str, *, leaf: bool = False) -> tuple[Claimed, HeldClaim]:
    got = holder.claim(
        lambda tx: tx.claim_queued("e1", task_id, [], celery_id=f"c-{task_id}", worker="w1"),
        "e1",
        task_id,
        utcnow(),
        f"c-{task_id}",
        "w1",
        leaf=leaf,
    )
    assert got is not None
    return got


def test_a_success_handed_off_commits_on_the_finisher_before_the_next_claim(store: Store) -> None:
    # the pool process goes on while the success commits; its next claim (same connection)
    # waits until the success handed off is over
    _setup(store, {"a": queued(), "b": pending(1), "c": queued()}, remaining=3)
    holder = Holder(store, hold=30)
    events: list[str] = []
    out: list[Succeeded | None] = []
    threads: set[int] = set()

    def end() -> None:
        threads.add(threading.get_ident())
        time.sleep(0.3)  # a slow commit: the next claim must not overtake it
        out.append(succeed(holder, held, ["b"]))
        events.append("a ended")

    try:
        _, held = claim(holder)
        holder.hand_off(held, end)
        events.append("handed off")
        _, next_held = claim_of(holder, "c")
        events.append("c claimed")
        assert events == ["handed off", "a ended", "c claimed"]
        assert threads and threading.get_ident() not in threads
        assert out == [Succeeded(["b"], "running")] and not held.lost
        next_held.commit()
    finally:
        holder.close()
    assert rows(store)["a"] == ("succeeded", 0, 0, {"v": 1})
    assert rows(store)["c"][0] == "running"
    written = xmins(store)
    assert written[("a", "running")] == written[("a", "succeeded")], "still one transaction"


def test_drain_and_close_wait_for_the_ends_handed_off(store: Store) -> None:
    _setup(store, {"a": queued(), "b": pending(1), "c": queued()}, remaining=3)
    holder = Holder(store, hold=30)
    assert holder.drain(0.01)  # nothing handed off: nothing to wait for
    _, held = claim(holder)

    def slow() -> None:
        time.sleep(0.3)
        succeed(holder, held, ["b"])

    holder.hand_off(held, slow)
    assert not holder.drain(0.01)
    assert holder.drain(10)
    assert rows(store)["a"][0] == "succeeded"
    # an end that fails is logged; what waits for it goes on
    _, held_c = claim_of(holder, "c")

    def broken() -> None:
        time.sleep(0.2)
        raise SystemExit("boom")  # not even this stops the finisher

    holder.hand_off(held_c, broken)
    later: list[str] = []
    holder.hand_off(held_c, lambda: later.append("ran"))  # an end after the failed one
    holder.close()  # drains first, then rolls back what is still open
    assert held_c.ended is not None and held_c.ended.is_set()
    assert later == ["ran"]
    assert rows(store)["c"][0] == "queued"


def succeed_later(
    holder: Holder, held: HeldClaim, task_id: str, got: list[tuple[Any, BaseException | None]]
) -> None:
    """A success without successors sent now and read later; what it did lands in ``got``."""
    holder.finish_later(
        held,
        lambda tx, claiming: tx.send_succeed_fast("e1", task_id, {"v": 2}, claiming),
        hotpath.succeeded_of,
        lambda out, error: got.append((out, error)),
    )


def wait_for(what: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_success_sent_for_later_commits_at_once_and_is_read_by_the_next_claim(
    store: Store,
) -> None:
    _setup(store, {"a": queued(), "c": queued()}, remaining=2)
    holder = Holder(store, hold=30)
    got: list[tuple[Any, BaseException | None]] = []
    try:
        _, held = claim(holder)
        succeed_later(holder, held, "a", got)
        assert got == [] and not held.open
        wait_for(lambda: rows(store)["a"][0] == "succeeded")  # committed, read by nobody
        assert got == []
        _, held_c = claim_of(holder, "c")  # its read passes through the success: then runs
        assert got == [(Succeeded([], "running"), None)]
        assert not held.lost
        held_c.commit()
    finally:
        holder.close()
    assert rows(store)["a"] == ("succeeded", 0, 0, {"v": 2})
    written = xmins(store)
    assert written[("a", "running")] == written[("a", "succeeded")], "one transaction"


def test_the_timer_reads_a_success_that_no_claim_passes_through(store: Store) -> None:
    _setup(store, {"a": queued()}, remaining=1)
    holder = Holder(store, hold=0.1)
    got: list[tuple[Any, BaseException | None]] = []
    try:
        _, held = claim(holder)
        succeed_later(holder, held, "a", got)
        wait_for(lambda: got != [], timeout=5)  # within about a hold
        assert got == [(Succeeded([], "completed"), None)]
    finally:
        holder.close()
    assert rows(store)["a"][0] == "succeeded"


def test_a_success_sent_for_later_and_handed_back_takes_its_claim_with_it(
    store: Store,
) -> None:
    # the last task after a failure: the statement undoes itself and the claim with it; what
    # follows learns it when the result is read (drain reads what is left)
    _setup(store, {"a": queued(), "f": {**running(), "state": "failed"}}, remaining=1)
    holder = Holder(store, hold=30)
    got: list[tuple[Any, BaseException | None]] = []
    try:
        _, held = claim(holder)
        succeed_later(holder, held, "a", got)
        assert holder.drain(10)
        assert got == [(None, None)]
        assert held.lost and not held.open
    finally:
        holder.close()
    assert rows(store)["a"][0] == "queued"
    assert history(store) == []


def test_a_success_sent_for_later_lost_with_its_connection_says_so(store: Store) -> None:
    _setup(store, {"a": queued(), "c": queued()}, remaining=2)
    holder = Holder(store, hold=30)
    got: list[tuple[Any, BaseException | None]] = []
    try:
        _, held = claim(holder)
        held.conn.conn.pgconn.finish()  # the connection is gone before the end is sent
        with pytest.raises(psycopg.OperationalError):
            succeed_later(holder, held, "a", got)
        assert held.lost and got == []
        # the next claim opens another connection, and closes the broken one
        _, held_c = claim_of(holder, "c")
        assert held_c.conn is not held.conn and held.conn.closed
        held_c.commit()
    finally:
        holder.close()
    assert rows(store)["a"][0] == "queued"
    assert rows(store)["c"][0] == "running"


def test_a_connection_given_up_on_is_closed_when_the_next_claim_replaces_it(
    store: Store,
) -> None:
    _setup(store, {"a": queued(), "c": queued()}, remaining=2)
    holder = Holder(store, hold=30)
    try:
        _, held = claim(holder)
        held.commit()
        held.conn._broken = True  # as after a deadlock: the session lives, the Wire is done
        assert not held.conn.closed
        _, held_c = claim_of(holder, "c")
        assert held_c.conn is not held.conn
        assert held.conn.closed  # not left open, its session with it, for the collector
        held_c.commit()
    finally:
        holder.close()
    assert rows(store)["a"][0] == "running"
    assert rows(store)["c"][0] == "running"
