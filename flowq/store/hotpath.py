"""The per-task hot path on Postgres: a claim, a task's end, queueing successors.

Each is a single statement (its text in ``flowq.store.statements``) that does what the generic
``Tx`` methods do in several, so a claim is one round trip and a task's end one or two. The
statements are fixed text sent straight to the psycopg connection under SQLAlchemy's (psycopg
prepares them once per connection), or to a held claim's ``flowq.store.wire.Wire``: no SQL is
built, compiled or wrapped in SQLAlchemy result objects per task. SQLite (embedded) uses the
generic methods; the store contract tests run both and check they agree.

``END_FAST`` is a task's whole success in one autocommit statement, successors queued by the
``all_success`` rule included. When what it changed needs a decision that only the coordinator
makes (a successor to skip, the execution's end), it calls ``flowq_general_path()`` (migration
0003), whose error undoes the statement: the caller then runs the transactional end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import namedtuple_row
from psycopg.types.json import Jsonb

from flowq.store.statements import (
    BATCH_COUNT,
    BATCH_LOCK,
    CLAIM_LOCKS,
    CLAIM_WRITE,
    CLAIMS,
    COMPLETED_REASON,
    END_FAST,
    END_LEAF,
    END_TASK,
    GENERAL_PATH,
    QUEUE_PENDING,
    START,
)
from flowq.store.wire import Pending, Wire


def _ids_param(ids: Sequence[str]) -> str | list[str]:
    return ids[0] if len(ids) == 1 else list(ids)


def _variant(ids: Sequence[str]) -> int:
    return min(len(ids), 2)


@dataclass(frozen=True)
class Meta:
    """An execution's fields that never change: definition digest, version, priority, vars."""

    digest: str
    version: int
    priority: int
    vars: dict[str, Any]

    @classmethod
    def of(cls, row: Any) -> Meta:
        """The fixed fields of an execution row (or of a row with the same columns)."""
        return cls(str(row.digest), int(row.version), int(row.priority), dict(row.vars))


@dataclass(frozen=True)
class Claiming:
    """A held claim's row, locked and not written yet: what its write sets."""

    began: datetime
    celery_id: str | None
    worker: str | None


@dataclass(frozen=True)
class Claimed:
    """A claim made: the attempt number, upstream results, the execution's fields if asked,
    and its tasks left to end, this one included, if known."""

    attempt: int
    results: dict[str, Any]
    meta: Meta | None = None
    remaining: int | None = None


@dataclass(frozen=True)
class Counters:
    """A successor's state and dependency counters, as ``Tx.count_upstream_end`` returns them."""

    task_id: str
    state: str
    deps_total: int
    deps_remaining: int
    deps_succeeded: int
    deps_failed: int
    deps_skipped: int

    @classmethod
    def of(cls, task_id: str, row: Any) -> Counters:
        """The counters of a task row (or of a row with the same columns)."""
        return cls(
            task_id,
            row.state,
            row.deps_total,
            row.deps_remaining,
            row.deps_succeeded,
            row.deps_failed,
            row.deps_skipped,
        )


@dataclass(frozen=True)
class Succeeded:
    """A success recorded in one statement: the successors it queued, the execution's state."""

    queued: list[str]
    execution_state: str


@dataclass(frozen=True)
class Ended:
    """What a task's end changed: its successors' counters and the execution's remaining tasks."""

    successors: list[Counters]
    remaining: int
    execution_state: str


# Called with each statement's text, and whether it commits by itself (autocommit, not in a
# pipeline), before it is sent; and with SYNC when a pipeline's Sync commits what it held
# (flowq.store.held). bench.store_cost counts round trips and commits with it.
observers: list[Callable[[str, bool], None]] = []
T = TypeVar("T")
SYNC = "-- sync"


def observe(sql: str, commits: bool) -> None:
    """Tell the observers about a statement or a Sync."""
    for observer in observers:
        observer(sql, commits)


Raw = psycopg.Connection[Any]
Conn = Raw | Wire  # a held claim's connection is a Wire (flowq.store.held)
# What a statement sent on a raw connection raises when the connection is lost (or, for
# OperationalError, on a deadlock): the callers retry or fall back
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


# One cursor per connection, reused by each statement (making one costs about a third of
# what psycopg spends on a statement); a connection is used by one thread at a time. It is
# kept on the connection itself, so that the two go together (a map from connections would
# keep every connection ever used alive through its cursor).
_CURSOR = "_flowq_cursor"


def _execute(conn: Conn, sql: str, params: dict[str, Any]) -> psycopg.Cursor[Any] | Pending:
    """Send one statement on a psycopg connection or a ``Wire``; rows come back as named tuples.

    It runs inside whatever is open on that connection: the transaction SQLAlchemy began, or
    none in autocommit mode, or a Wire's pipeline transaction. The cursor returned is the
    connection's own: read its rows before the next statement on that connection.
    """
    if observers:
        observe(sql, conn.autocommit and not conn.pgconn.pipeline_status)
    if isinstance(conn, Wire):
        return conn.execute(sql, params)
    cursor: psycopg.Cursor[Any] | None = getattr(conn, _CURSOR, None)
    if cursor is None or cursor.closed:
        cursor = conn.cursor(row_factory=namedtuple_row)
        setattr(conn, _CURSOR, cursor)
    return cursor.execute(sql, params)


def claim_queued(
    conn: Conn,
    now: datetime,
    execution_id: str,
    task_id: str,
    result_ids: Sequence[str],
    celery_id: str | None,
    worker: str | None,
    with_meta: bool,
    lock_only: bool = False,
) -> Claimed | None:
    """queued -> running while the execution runs: the attempt number and the results needed.

    ``with_meta``: the execution's fixed fields too. ``lock_only`` (a held claim): the row is
    locked, not written; ``write_claim`` or ``succeed_fast(claiming=...)`` writes it later in
    the same transaction, under the attempt number returned here.
    """
    params = {
        "now": now,
        "e": execution_id,
        "t": task_id,
        "celery_id": celery_id,
        "worker": worker,
        "ids": _ids_param(result_ids),
    }
    statements = CLAIM_LOCKS if lock_only else CLAIMS
    row: Any = _execute(conn, statements[with_meta][_variant(result_ids)], params).fetchone()
    if row is None:
        return None
    meta = Meta.of(row) if with_meta else None
    remaining = None if row.remaining is None else int(row.remaining)
    return Claimed(int(row.attempts), dict(row.results or {}), meta, remaining)


def _claiming_params(execution_id: str, task_id: str, claiming: Claiming) -> dict[str, Any]:
    return {
        "e": execution_id,
        "t": task_id,
        "began": claiming.began,
        "celery_id": claiming.celery_id,
        "worker": claiming.worker,
    }


def write_claim(conn: Conn, execution_id: str, task_id: str, claiming: Claiming) -> None:
    """Write a claim whose row ``claim_queued(lock_only=True)`` locked: queued -> running, as
    of when it was made. Its results are not read: in pipeline mode, the Sync that follows
    commits it."""
    _execute(conn, CLAIM_WRITE, _claiming_params(execution_id, task_id, claiming))


def end_task(
    conn: Conn,
    now: datetime,
    execution_id: str,
    task_id: str,
    to: str,
    reason: str | None,
    successors: Sequence[str],
    result: Any,
    error: str | None,
) -> Ended | None:
    """running -> ``to``, counted against each successor and the execution; None if not running."""
    params = {
        "now": now,
        "e": execution_id,
        "t": task_id,
        "to": to,
        "reason": reason,
        "result": Jsonb(result),
        "error": error,
        "ids": _ids_param(successors),
        "succeeded": 1 if to == "succeeded" else 0,
        "failed": 0 if to == "succeeded" else 1,
    }
    row: Any = _execute(conn, END_TASK[_variant(successors)], params).fetchone()
    if row is None or not row[0]:
        return None
    counters = [Counters(**r) for r in row[1]]
    return Ended(counters, int(row[2]), str(row[3]))


def succeed_fast(
    conn: Conn,
    now: datetime,
    execution_id: str,
    task_id: str,
    successors: Sequence[str],
    result: Any,
    commit: Callable[[], None] | None = None,
    claiming: Claiming | None = None,
) -> Succeeded | None:
    """running -> succeeded with every successor under ``all_success`` and without ``when``.

    ``claiming``: the task's held claim is locked, not written: queued -> running ->
    succeeded, one row version and both transitions in the history.

    Returns None, with nothing written, when the task is not running or when the coordinator
    must decide something (``flowq_general_path``): then the transactional end is the way.
    Meant for an autocommit connection: the statement is the whole transaction; or, on a
    connection in pipeline mode, part of the implicit transaction that ``commit`` (the
    pipeline's sync, sent with the statement) ends: an error then undoes all of it.
    """

    def run() -> Succeeded | None:
        cursor = send_succeed_fast(conn, now, execution_id, task_id, successors, result, claiming)
        if commit is not None:
            commit()
        return _succeeded(cursor)

    return _or_handed_back(run)


def send_succeed_fast(
    conn: Conn,
    now: datetime,
    execution_id: str,
    task_id: str,
    successors: Sequence[str],
    result: Any,
    claiming: Claiming | None = None,
) -> psycopg.Cursor[Any] | Pending:
    """Send ``succeed_fast``'s statement; ``succeeded_of`` reads what it did."""
    params = {
        "now": now,
        "e": execution_id,
        "t": task_id,
        "result": Jsonb(result),
        "ids": _ids_param(successors),
        "reason": f"{task_id} succeeded",
        "completed": COMPLETED_REASON,
    }
    if claiming is not None:
        params.update(_claiming_params(execution_id, task_id, claiming))
    return _execute(conn, END_FAST[claiming is not None][_variant(successors)], params)


def succeeded_of(sent: psycopg.Cursor[Any] | Pending) -> Succeeded | None:
    """What ``send_succeed_fast``'s statement did: None if it wrote nothing (not running, or
    handed back to the transactional end)."""
    return _or_handed_back(lambda: _succeeded(sent))


def _succeeded(sent: psycopg.Cursor[Any] | Pending) -> Succeeded | None:
    row: Any = sent.fetchone()
    if row is None or not row.ended:
        return None
    return Succeeded([str(t) for t in row.queued], str(row.state))


def _or_handed_back(fn: Callable[[], T]) -> T | None:
    """``fn()``; None when its statement handed the case back (``flowq_general_path()``)."""
    try:
        return fn()
    except psycopg.Error as exc:
        if exc.sqlstate == GENERAL_PATH:
            return None
        raise


def send_succeed_leaf(
    wire: Wire,
    now: datetime,
    execution_id: str,
    task_id: str,
    result: Any,
    claiming: Claiming | None = None,
) -> Pending:
    """Send the success of a task without successors into a commit batch (``flowq.store.held``):
    its row and history, not its execution's count (``send_count_batch`` settles that for the
    whole batch). ``leaf_ended`` reads whether it wrote anything."""
    params = {"now": now, "e": execution_id, "t": task_id, "result": Jsonb(result)}
    if claiming is not None:
        params.update(_claiming_params(execution_id, task_id, claiming))
    pending = _execute(wire, END_LEAF[claiming is not None], params)
    assert isinstance(pending, Pending)
    return pending


def leaf_ended(sent: Pending) -> bool:
    """Whether ``send_succeed_leaf``'s statement ended its task (False: it was not running);
    raise the statement's error."""
    row: Any = sent.fetchone()
    return row is not None and bool(row.ended)


def send_count_batch(wire: Wire, ended: dict[str, tuple[int, datetime]]) -> Pending:
    """Send what a commit batch's successes take from their executions' counts of tasks left
    (``ended``: execution id -> its tasks ended in the batch, and when the last one ended: the
    execution's completion, if it was its last task, is recorded as of then); read it with
    ``batch_counted``. Sent just before the batch's Sync: the executions' rows stay locked
    only until that commit."""
    ids = sorted(ended)
    locked = _execute(wire, BATCH_LOCK, {"ids": ids})
    assert isinstance(locked, Pending)
    locked.deferred = True  # its error, if any, aborts the count: ``batch_counted`` says so
    params = {
        "ids": ids,
        "ns": [str(ended[i][0]) for i in ids],
        "ats": [ended[i][1].isoformat() for i in ids],
        "completed": COMPLETED_REASON,
    }
    pending = _execute(wire, BATCH_COUNT, params)
    assert isinstance(pending, Pending)
    pending.deferred = True
    return pending


def batch_counted(sent: Pending) -> bool:
    """Whether ``send_count_batch``'s statement counted the batch: False when it was handed
    back (an execution's last task where another one did not succeed, say) or never ran (an
    earlier statement of the transaction failed); the batch was then rolled back."""
    try:
        row: Any = sent.fetchone()
    except psycopg.Error as exc:
        if exc.sqlstate == GENERAL_PATH:
            return False
        raise
    return row is not None


def queue_pending(
    conn: Conn, now: datetime, execution_id: str, task_ids: Sequence[str], reason: str
) -> list[str]:
    """pending -> queued for each of ``task_ids``; the ids that moved."""
    params = {"now": now, "e": execution_id, "ids": _ids_param(task_ids), "reason": reason}
    return [str(r[0]) for r in _execute(conn, QUEUE_PENDING[_variant(task_ids)], params)]


def start_execution(
    conn: Conn,
    now: datetime,
    execution: dict[str, Any],
    task_deps: Sequence[tuple[str, int]],
    history: Sequence[tuple[str | None, str | None, str, str]],
    newest: bool,
) -> bool:
    """Insert a running execution, its tasks (roots queued) and their history in one statement.

    Only while ``execution``'s digest and version are still those of its workflow (the newest
    one when ``newest``); False (nothing written) otherwise, or if the id or idempotency key
    exists already.
    """
    params = {
        "now": now,
        "e": execution["id"],
        "w": execution["workflow_id"],
        "v": execution["version"],
        "digest": execution["digest"],
        "vars": Jsonb(execution["vars"]),
        "priority": execution["priority"],
        "key": execution["idempotency_key"],
        "n": len(task_deps),
        "ids": [tid for tid, _ in task_deps],
        "deps": [deps for _, deps in task_deps],
        "h_task": [h[0] for h in history],
        "h_from": [h[1] for h in history],
        "h_to": [h[2] for h in history],
        "h_reason": [h[3] for h in history],
    }
    return _execute(conn, START[0 if newest else 1], params).fetchone() is not None
