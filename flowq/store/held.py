"""Held claims (``FLOWQ_CLAIM_HOLD_SECONDS``, default 0.1 s): a short task's claim and success
in one commit.

A worker's claim and a task's success are one statement each (``flowq.store.hotpath``). Sent
on a connection in pipeline mode (a ``flowq.store.wire.Wire``: libpq's pipeline, driven
directly), statements between two Syncs form one implicit transaction,
committed by the Sync. A held claim goes out with a Flush (its result comes back, nothing is
committed) and only locks the task's row (``FOR NO KEY UPDATE``: no other claim, cancel or
end can move it meanwhile); the success goes out with the Sync and writes the claim and the
success as one row version, both transitions in the history. A short task thus costs one
commit and one row version instead of two of each, in the same two round trips.

A claim left open longer than ``hold`` seconds is written (as of when it was made) and
committed by a timer thread, so a running task shows as `running` within 1.5 x ``hold``; a
failure, a retry, or an end that needs the coordinator's transactional path does the same
first (``HeldClaim.commit``). If the process dies
before the commit, Postgres rolls the claim back and the task is `queued` again; the worker
marks each held claim outside the store (``workers.markers``) so that the next claim of the
task, from whichever message, records the lost attempt (``Coordinator.record_lost_claim``).

A worker hands a held claim's success to the holder's finisher thread (``hand_off``), so that
the commit's wait for its WAL flush overlaps with what the pool process does next (returning
the result, taking the next message). The next claim on the same connection waits for that
end first; ``drain`` (a pool process exiting, ``close``) waits for every end handed off.

A success that nothing waits for (a task without successors) needs no thread: ``finish_later``
sends its statement and the Sync that commits it at once, and reads the result later, passing
through it on the connection's next read (the next claim's, usually) or, on a connection left
idle, from the timer (within ``hold``). What follows the commit (a handed-back success taken
down the transactional path, the claim's mark dropped) runs then, on the thread that read it.

Commit batches (``batch`` > 0, ``FLOWQ_COMMIT_BATCH_SECONDS``): such a success goes out with no
Sync at all (``finish_batched``): it joins its connection's open transaction, a batch, which
the next claim on that connection also joins if it is for another task without successors.
A success there writes its task's row and history only; what the batch's successes take from
their executions' counts of tasks left (and an execution's completion, as of its last task's
end) is written once, just before the batch's Sync (``_seal``: the executions' rows locked
in id order, then counted), so no execution row stays locked while the batch waits for more.
The batch is sealed and committed by the first of: a claim that finds it ``batch`` seconds old
or full (``BATCH_MAX``), the success of a task that was its execution's last to end when it was
claimed (the claim reads the execution's count of tasks left: the execution's end waits for no
more), a claim that may not join it, any other commit on the connection (a
claim written by the timer or before a failure: ``commit``), or the timer once it is due on a
connection with no claim open. Its successes' ``then`` run once its Sync is read: each gets
True, or None when the batch was rolled back (a count handed back, as for ``finish_later``; an
error; the connection lost), and then takes the transactional end, its claim made again if it
went with the batch. A process that dies with a batch open loses it as it loses a held claim:
its tasks are `queued` again, their marks name the attempts, and they run again.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg

from flowq.store import hotpath
from flowq.store.store import Store, Tx, first_line
from flowq.store.wire import Pending, SyncSent, Wire

log = logging.getLogger("flowq.store")
T = TypeVar("T")
CLOSE_DRAIN_SECONDS = 30.0  # how long ``close`` waits for the ends handed off
# A commit batch is sealed once it holds this many successes (or is ``batch`` seconds old)
BATCH_MAX = 32


@dataclass(eq=False)
class HeldClaim:
    """A claim whose transaction is still open on its thread's pipeline connection."""

    conn: Wire
    execution_id: str
    task_id: str
    began: datetime  # the claim's time, for a re-claim after a rollback
    celery_id: str | None
    worker: str | None
    holder: Holder  # whose connection: its commit seals a commit batch first
    lock: threading.Lock = field(default_factory=threading.Lock)
    open: bool = True  # the claim is not committed yet (its row locked, not written)
    lost: bool = False  # rolled back with the end statement that was to commit it
    since: float = field(default_factory=time.monotonic)
    ended: threading.Event | None = None  # set once an end handed off (``hand_off``) is over
    last: bool = False  # its end ends the execution: its success joins no commit batch's wait

    @property
    def claiming(self) -> hotpath.Claiming:
        """What the claim's write sets (``hotpath.write_claim``, ``succeed_fast``)."""
        return hotpath.Claiming(self.began, self.celery_id, self.worker)

    def commit(self) -> None:
        """Write and commit the claim now if it is still open (the timer, a failure, a retry).

        On an error (the connection is gone) the claim is ``lost`` and the error raised.
        """
        # the connection's batch lock first: no timer may seal a batch between the claim's
        # write and the commit that checks how that batch ended
        with self.lock, self.conn.batching:
            if self.open:
                self.open = False
                try:
                    hotpath.write_claim(self.conn, self.execution_id, self.task_id, self.claiming)
                    sealed = self.holder.commit(self.conn)
                    # a commit batch rolled back took the claim's write with it
                    self.lost = sealed is not None and sealed.rolled_back()
                except BaseException:
                    self.lost = True
                    raise

    def settle(self) -> None:
        """``commit``, but a lost connection only marks the claim ``lost`` (it is logged)."""
        try:
            self.commit()
        except hotpath.CONNECTION_ERRORS as exc:
            log.warning("a held claim was lost with its connection: %s", exc)


@dataclass(eq=False)
class _Later:
    """An end sent with its commit and not read yet (``Holder.finish_later``)."""

    held: HeldClaim
    pending: Pending
    read: Callable[[Pending], Any]
    then: Callable[[Any, BaseException | None], None]
    claimed: bool  # the claim was open: the end statement wrote it
    since: float = field(default_factory=time.monotonic)

    @property
    def conn(self) -> Wire:
        return self.held.conn

    def finish(self, holder: Holder) -> None:
        holder._read_later(self)


@dataclass(eq=False)
class _Leaf:
    """A success of a task without successors, sent into a commit batch (``finish_batched``)."""

    held: HeldClaim
    pending: Pending
    then: Callable[[Any, BaseException | None], None]
    claimed: bool  # the claim was open: the success statement wrote it
    at: datetime  # when the task ended


@dataclass(eq=False)
class _Batch:
    """Successes sent on one connection and not committed yet: one transaction."""

    conn: Wire
    leaves: list[_Leaf] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Sealed:
    """A commit batch with its count statement and Sync sent (or lost with its connection):
    read it, then run each success's ``then`` (see the module)."""

    conn: Wire
    leaves: list[_Leaf]
    ended: list[bool] | None = None  # per leaf: its statement ended its task
    count: Pending | None = None  # the executions' counts (None: no leaf ended a task)
    sync: SyncSent | None = None  # the Sync that commits it
    error: BaseException | None = None  # the transaction is lost: every leaf takes the long way
    since: float = field(default_factory=time.monotonic)

    def rolled_back(self) -> bool:
        """Whether the batch's transaction was rolled back, as far as read: only sure once
        its Sync is read (``Holder.commit``'s wait)."""
        if self.error is not None:
            return True
        if self.count is None:
            return False
        try:
            return self.count.done and not hotpath.batch_counted(self.count)
        except psycopg.Error:
            return True

    def finish(self, holder: Holder) -> None:
        """Read whether the batch committed, then run each success's ``then``: with True for
        a success committed, else with None (and the error, if any): the caller then takes
        the transactional end, making a claim that went with the batch again."""
        error, committed = self.error, False
        if error is None:
            try:
                if self.sync is None:
                    raise psycopg.OperationalError("the commit batch's Sync was not sent")
                counted = self.count is None or hotpath.batch_counted(self.count)
                self.conn.read_sync(self.sync)
                committed = counted
            except BaseException as exc:  # a lost connection, or the count's own error
                error = exc
        if self.conn.broken and not self.conn.closed:
            holder._drop(self.conn)
        if not committed:
            log.info(
                "a commit batch of %d task successes was rolled back (%s); each takes the "
                "transactional end",
                len(self.leaves),
                "handed back or aborted" if error is None else first_line(error),
            )
        ended = self.ended if committed and self.ended is not None else [False] * len(self.leaves)
        for leaf, done in zip(self.leaves, ended, strict=True):
            leaf.held.lost = leaf.held.lost or (leaf.claimed and not done)
            try:
                leaf.then(True if done else None, error)
            except Exception:  # whatever it was, the successes after it still need their end
                log.exception("what follows a task's end failed")


class Holder:
    """Each thread's pipeline connection, and the timer that commits claims held too long."""

    def __init__(self, store: Store, hold: float, batch: float = 0.0) -> None:
        self.store = store
        self.hold = hold
        self.batch = min(batch, hold)  # a commit batch's longest wait for more; 0: none
        self._local = threading.local()
        self._pid = os.getpid()
        self._open: dict[int, HeldClaim] = {}  # claims the timer may have to commit
        self._wake = threading.Lock()
        self._timer: threading.Thread | None = None
        self._inherited: list[Any] = []  # a parent process's connections: never used or closed
        self._conns: list[Wire] = []  # every thread's, for close()
        self._conns_lock = threading.Lock()
        # ends handed off, each with the event to set once it is over
        self._ends: queue.SimpleQueue[tuple[threading.Event, Callable[[], None]]] = (
            queue.SimpleQueue()
        )
        self._finisher: threading.Thread | None = None
        self._later: dict[int, _Later | _Sealed] = {}  # ends sent and not read yet
        # commit batches open, by connection (``id``); each connection's ``batching`` lock
        # orders the steps on it, this one only guards the map
        self._batches: dict[int, _Batch] = {}
        self._batches_lock = threading.Lock()
        self._tick = threading.Event()  # wakes the timer early: a commit batch to time

    def claim(
        self,
        fn: Callable[[Tx], T | None],
        execution_id: str,
        task_id: str,
        now: datetime,
        celery_id: str | None,
        worker: str | None,
        leaf: bool = False,
    ) -> tuple[T, HeldClaim] | None:
        """Run the claim ``fn`` of ``execution_id``/``task_id`` in a new implicit transaction
        and leave it open; ``fn``'s ``Tx.claim_queued`` only locks the row (``Tx.holding``).

        ``leaf``: the task has no successors, so its claim may join the connection's open
        commit batch (unless that batch is due); any other claim seals it first.
        None when ``fn`` claimed nothing (its empty transaction is ended at once).
        """
        before: HeldClaim | None = getattr(self._local, "held", None)
        if before is not None and before.ended is not None:  # its end is on the finisher
            before.ended.wait()  # the connection is the finisher's until that end is over
        conn = self._connection()
        if before is not None:  # one open claim per transaction: an earlier one is written now
            before.commit()
        tx = Tx(None, raw=conn, connect=self.store.sa_connect, now=now, holding=True)
        held = HeldClaim(conn, execution_id, task_id, now, celery_id, worker, self)
        with conn.batching:
            batch = self._batches.get(id(conn))
            if batch is not None and (not leaf or self._due(batch, time.monotonic())):
                self.commit(conn, wait=False)
            conn.current = held  # open: the timer leaves this connection alone
        self._local.held = held
        try:
            out = fn(tx)
        except BaseException:
            self._drop(conn)  # closing rolls back whatever the statement did
            raise
        finally:
            tx.close()
            self.collect(conn)  # the claim's read passed through earlier ends' results
        if out is None:  # nothing locked, nothing to write: end the transaction
            held.open = False
            self.commit(conn)
            return None
        self._schedule(held)
        return out, held

    @contextmanager
    def _ending(self, held: HeldClaim) -> Iterator[tuple[Tx, bool]]:
        """The held claim's connection for its end statement, under the claim's lock: a ``Tx``
        on it, and whether the claim is still open (its row locked, not written). The claim is
        not open afterwards; an error marks it ``lost`` if it was, and drops a connection that
        broke."""
        with held.lock:
            tx = Tx(None, raw=held.conn, connect=self.store.sa_connect)
            was_open = held.open
            try:
                yield tx, was_open
            except BaseException:
                held.lost = held.lost or was_open
                if held.conn.broken or held.conn.closed:
                    self._drop(held.conn)
                raise
            finally:
                held.open = False
                tx.close()

    def finish(
        self,
        held: HeldClaim,
        fn: Callable[[Tx, Callable[[], None], hotpath.Claiming | None], T | None],
    ) -> T | None:
        """Run the end statement ``fn`` on the held claim's connection, then commit both.

        ``fn`` gets the commit to send along with its statement and, while the claim is open,
        the claim to write with it (its row is locked, not written); it returns None when
        that statement was undone (handed back). The transaction is over afterwards; if the
        claim was still open and the statement was undone or failed, ``held.lost`` is set:
        the claim was rolled back with it.
        """

        sealed: list[_Sealed | None] = []

        def commit() -> None:
            sealed.append(self.commit(held.conn))

        with self._ending(held) as (tx, was_open):
            out = fn(tx, commit, held.claiming if was_open else None)
            if any(s is not None and s.rolled_back() for s in sealed):
                out = None  # a commit batch it went with was rolled back: so was the statement
            held.lost = held.lost or (was_open and out is None)
        self.collect(held.conn)
        return out

    def finish_later(
        self,
        held: HeldClaim,
        send: Callable[[Tx, hotpath.Claiming | None], Pending],
        read: Callable[[Pending], T | None],
        then: Callable[[T | None, BaseException | None], None],
    ) -> None:
        """``finish`` for an end nothing waits for: send its statement ``send`` and the commit
        now, read the result later (see the module).

        ``read`` turns the result into the end's outcome (None: the statement was undone);
        ``then`` gets that outcome, or the error that reading raised, on whichever thread reads
        it. As in ``finish``, ``held.lost`` is set by then if the claim went with the statement.
        An error sending raises here (the claim is ``lost`` if it was open).
        """
        with self._ending(held) as (tx, was_open):
            pending = send(tx, held.claiming if was_open else None)
            pending.deferred = True
            self.commit(held.conn, wait=False)
        later = _Later(held, pending, read, then, was_open)
        with self._wake:
            self._later[id(later)] = later

    def finish_batched(
        self,
        held: HeldClaim,
        send: Callable[[Tx, hotpath.Claiming | None], Pending],
        then: Callable[[Any, BaseException | None], None],
    ) -> None:
        """``finish_later`` for the success of a task without successors, into the
        connection's commit batch (see the module): ``send`` sends its statement
        (``hotpath.send_succeed_leaf``); no Sync goes with it. ``then`` gets True once the
        batch committed, or None (and the error, if any) when it did not: the caller then takes
        the transactional end, ``held.lost`` telling whether the claim went with the batch.
        The success of an execution's last task (``held.last``) commits the batch at once: the
        execution's end does not wait for more. An error sending raises here (the claim is
        ``lost`` if it was open).
        """
        opened = False
        with self._ending(held) as (tx, was_open), held.conn.batching:
            pending = send(tx, held.claiming if was_open else None)
            pending.deferred = True
            with self._batches_lock:
                batch = self._batches.get(id(held.conn))
                if batch is None:
                    batch = self._batches[id(held.conn)] = _Batch(held.conn)
                    opened = True
                batch.leaves.append(_Leaf(held, pending, then, was_open, tx.now))
            # full, late behind a long task, or the execution's end: nothing is worth its wait
            if held.last or self._due(batch, time.monotonic()):
                opened = False
                try:
                    self.commit(held.conn, wait=False)
                except psycopg.Error as exc:  # the batch, this success in it, learns it when read
                    log.warning("could not commit a batch: %s", first_line(exc))
        if opened:
            self._tick.set()  # the timer seals it if no claim comes in time

    def _due(self, batch: _Batch, now: float) -> bool:
        return len(batch.leaves) >= BATCH_MAX or batch.since + self.batch <= now

    @staticmethod
    def _idle(batch: _Batch) -> bool:
        """No claim is open on the batch's connection (its row locked, not written)."""
        current = batch.conn.current
        return current is None or not current.open

    def commit(self, conn: Wire, wait: bool = True) -> _Sealed | None:
        """Commit what is open on ``conn`` (a Sync), sealing its commit batch first, if one is
        open: every Sync on a held claim's connection goes through here. ``wait``: read the
        results up to the Sync (raising the first error of a statement not deferred). The
        batch sealed, if any."""
        with conn.batching:
            sealed = self._seal(conn)
            hotpath.observe(hotpath.SYNC, True)
            marker = None
            try:
                marker = conn.sync() if wait else conn.send_sync()
            except BaseException as exc:
                if sealed is not None and marker is None:
                    sealed.error = sealed.error or exc
                raise
            finally:
                if sealed is not None:  # to be read (its Sync set first: a reader needs it)
                    sealed.sync = marker
                    with self._wake:
                        self._later[id(sealed)] = sealed
            return sealed

    def _seal(self, conn: Wire) -> _Sealed | None:
        """Close ``conn``'s commit batch, if one is open: read what its successes did and send
        what they take from their executions' counts; the caller sends the Sync."""
        with self._batches_lock:
            batch = self._batches.pop(id(conn), None)
        if batch is None:
            return None
        sealed = _Sealed(conn, batch.leaves)
        try:
            ended = [hotpath.leaf_ended(leaf.pending) for leaf in batch.leaves]
            counts: dict[str, tuple[int, datetime]] = {}
            for leaf, done in zip(batch.leaves, ended, strict=True):
                if done:
                    n, at = counts.get(leaf.held.execution_id, (0, leaf.at))
                    counts[leaf.held.execution_id] = (n + 1, max(at, leaf.at))
            sealed.ended = ended
            if counts:
                sealed.count = hotpath.send_count_batch(conn, counts)
        except psycopg.Error as exc:  # the transaction is lost (a statement's error, the link)
            sealed.error = exc
        return sealed

    def _abort_batch(self, conn: Wire, error: BaseException) -> None:
        """``conn``'s commit batch, if one is open, went with its connection: its successes
        take the transactional end (when the ends are next collected)."""
        with self._batches_lock:
            batch = self._batches.pop(id(conn), None)
        conn.current = None
        if batch is not None:
            sealed = _Sealed(conn, batch.leaves, error=error)
            with self._wake:
                self._later[id(sealed)] = sealed

    def _seal_idle(self, now: float, everything: bool = False) -> None:
        """Commit the batches due (``everything``: all) on connections without an open claim
        (a claim's own commit seals the batch it is in)."""
        with self._batches_lock:
            batches = list(self._batches.values())
        for batch in batches:
            with batch.conn.batching:  # then check again: a claim may have come meanwhile
                if self._batches.get(id(batch.conn)) is not batch or not self._idle(batch):
                    continue
                if everything or self._due(batch, now):
                    try:
                        self.commit(batch.conn, wait=everything)
                    except Exception as exc:  # the batch's successes find out when read
                        log.warning("could not commit a batch: %s", first_line(exc))

    def collect(self, conn: Wire | None = None, sent_before: float | None = None) -> None:
        """Read the ends ``finish_later`` sent (on ``conn``; else on every connection) and run
        what follows them; only those sent before ``sent_before`` (``time.monotonic``), if
        given. Each end is read once, by whichever thread takes it first."""
        with self._wake:
            if not self._later:
                return
            taken = [
                later
                for later in self._later.values()
                if (conn is None or later.conn is conn)
                and (sent_before is None or later.since < sent_before)
            ]
            for later in taken:
                del self._later[id(later)]
        for later in taken:
            later.finish(self)

    def _read_later(self, later: _Later) -> None:
        held, out, error = later.held, None, None
        try:
            out = later.read(later.pending)
        except BaseException as exc:  # a lost connection, or an error of the statement's
            error = exc
        held.lost = held.lost or (later.claimed and out is None)
        if error is not None and held.conn.broken:
            self._drop(held.conn)
        try:
            later.then(out, error)
        except Exception:  # whatever it was, the ends after it still need reading
            log.exception("what follows a task's end failed")

    def hand_off(self, held: HeldClaim, end: Callable[[], None]) -> None:
        """Run ``end``, the held claim's end (its ``finish`` and whatever follows the commit),
        on the finisher thread; return at once.

        Until ``end`` is over, the next claim of this thread waits for it (it needs the
        connection) and ``drain`` waits for it; an error ``end`` raises is logged.
        """
        self._forked()
        held.ended = threading.Event()
        self._start_finisher()
        self._ends.put((held.ended, end))

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every end handed off in this process is over, and read the ends sent
        and not read yet; False if ``timeout`` passed."""
        if self._pid != os.getpid():
            return True
        over = True
        if self._finisher is not None:
            done = threading.Event()
            self._ends.put((done, lambda: None))  # the finisher takes ends in order
            over = done.wait(timeout)
        self._seal_idle(time.monotonic(), everything=True)
        self.collect()
        return over

    def _start_finisher(self) -> None:
        with self._wake:
            if self._finisher is None:
                self._finisher = threading.Thread(
                    target=self._finish_ends, name="flowq-task-ends", daemon=True
                )
                self._finisher.start()

    def _finish_ends(self) -> None:
        while True:
            over, end = self._ends.get()
            try:
                end()
            except BaseException:  # whatever it was, the ends after it still need the thread
                log.exception("a task's end on the finisher thread failed")
            finally:
                over.set()

    def abandon(self, held: HeldClaim) -> None:
        """Roll a claim that is still open back (its connection is closed; the next claim on
        this thread opens another)."""
        with held.lock:
            if held.open:
                held.open = False
                with self._batches_lock:
                    batched = id(held.conn) in self._batches
                if not batched:
                    self._drop(held.conn)
                    return
                try:  # commit the batch it is in: the claim only locked its row, now released
                    self.commit(held.conn)
                except hotpath.CONNECTION_ERRORS as exc:
                    log.warning("a commit batch was lost with its connection: %s", exc)
                    self._drop(held.conn)

    # -- connections -----------------------------------------------------------------------------
    def _forked(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's connections and threads are not ours
            self._inherited += [self._local, self._conns]
            self._local, self._conns = threading.local(), []
            self._open, self._timer, self._pid = {}, None, os.getpid()
            self._ends, self._finisher = queue.SimpleQueue(), None
            self._later, self._batches = {}, {}
            self._batches_lock, self._tick = threading.Lock(), threading.Event()

    def _connection(self) -> Wire:
        self._forked()
        conn: Wire | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:  # broken, not closed yet: close it, not leave it to the GC
                self._drop(conn)
            raw = self.store.connect_raw()
            try:
                conn = Wire(raw)  # in pipeline mode for the connection's life
            except BaseException:
                raw.close()
                raise
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _drop(self, conn: Wire) -> None:
        self._abort_batch(conn, psycopg.OperationalError("the connection was closed"))
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()

    def close(self) -> None:
        """Close every thread's connection (open claims on them are rolled back)."""
        if self._pid != os.getpid():
            return
        self.drain(CLOSE_DRAIN_SECONDS)
        with self._batches_lock:  # a batch with a claim still open goes with its connection
            batched = [batch.conn for batch in self._batches.values()]
        with self._wake:  # claims still open go with their connections: not the timer's
            for held in self._open.values():
                if held.open:
                    held.open, held.lost = False, True
            self._open.clear()
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        for conn in batched:  # rolled back with their connections, which hold no lock now
            self._abort_batch(conn, psycopg.OperationalError("the connection was closed"))
        self.collect()

    # -- the timer -------------------------------------------------------------------------------
    def _schedule(self, held: HeldClaim) -> None:
        with self._wake:
            self._open[id(held)] = held
            if self._timer is None:
                self._timer = threading.Thread(
                    target=self._commit_due, name="flowq-held-claims", daemon=True
                )
                self._timer.start()

    def _commit_due(self) -> None:
        """Every half ``hold``: commit the claims held for ``hold`` seconds or more (so a
        claim is committed between ``hold`` and 1.5 x ``hold`` after it was made, and the
        timer wakes at a fixed rate whatever the task rate), and read the ends sent half a
        ``hold`` ago or more that no other read passed through (``finish_later``). In
        between, while commit batches are open, it wakes when the oldest is due and commits
        those due on connections without an open claim."""
        rounds = time.monotonic() + self.hold / 2
        while True:
            self._tick.clear()
            now = time.monotonic()
            with self._batches_lock:  # a batch behind an open claim is that claim's to seal
                dues = [
                    b.since + self.batch if self._idle(b) else now + self.batch
                    for b in self._batches.values()
                ]
            wake = min([rounds, *dues])
            if wake > now:
                self._tick.wait(wake - now)
            now = time.monotonic()
            self._seal_idle(now)
            if now < rounds:
                continue
            rounds = now + self.hold / 2
            try:
                self.collect(sent_before=now - self.hold / 2)
            except Exception:
                log.exception("could not read the ends sent")
            with self._wake:
                due = [h for h in self._open.values() if not h.open or h.since + self.hold <= now]
                for held in due:
                    del self._open[id(held)]
            for held in due:
                try:
                    held.commit()
                except Exception as exc:  # its task's end finds out and takes the general path
                    log.warning("could not commit a held claim: %s", str(exc).splitlines()[0])
