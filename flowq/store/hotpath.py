"""Postgres statements for the per-task hot path: a claim, a task's end, queueing successors.

Each one is a single statement that does what the generic ``Tx`` methods do in several: the
compare-and-set, the history row (a data-modifying CTE) and the reads that follow, so a claim is
one round trip and a task's end one or two. The statements are fixed text sent straight to the
psycopg connection under SQLAlchemy's (psycopg prepares them once per connection): no SQL is
built, compiled or wrapped in SQLAlchemy result objects per task. SQLite (embedded) uses the
generic methods; the store contract tests run both and check they agree.

``END_FAST`` is a task's whole success in one autocommit statement, successors queued by the
``all_success`` rule included. When what it changed needs a decision that only the coordinator
makes (a successor to skip, the execution's end), it calls ``flowq_general_path()`` (migration
0003), whose error undoes the statement: the caller then runs the transactional end.

Every row is found by its primary key. State conditions are written ``(state || '') = ...`` so
that the planner cannot use the ``state`` indexes (made for the reconciler's scans) instead: on
a young table without statistics it otherwise does, and a claim scans every queued task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from psycopg.types.json import Jsonb

from flowq.store.wire import Pending, Wire

# The row a claim takes, a queued task, and the condition that its execution runs
_QUEUED_ROW = "execution_id = %(e)s AND task_id = %(t)s AND (state || '') = 'queued'"
_OF_RUNNING = """EXISTS (SELECT 1 FROM flowq_executions x
                    WHERE x.id = %(e)s AND (x.state || '') = 'running')"""
# What a claim writes on its row, as of {at}, besides its state and updated_at
_CLAIM_SETS = (
    "attempts = attempts + 1, started_at = {at}, celery_id = %(celery_id)s, worker = %(worker)s"
)


def _claim_write(at: str, where: str) -> str:
    """A claim's row update and history row (a CTE ``c`` and an insert), as of ``at``."""
    sets = _CLAIM_SETS.replace("{at}", at)
    return f"""
WITH c AS (
    UPDATE flowq_task_runs
       SET state = 'running', updated_at = {at}, {sets}
     WHERE {where}
 RETURNING attempts
), h AS (
    INSERT INTO flowq_history (execution_id, task_id, from_state, to_state, reason, at)
    SELECT %(e)s, %(t)s, 'queued', 'running', 'attempt ' || c.attempts, {at} FROM c
)"""


_CLAIM = (
    _claim_write("%(now)s", f"{_QUEUED_ROW}\n       AND {_OF_RUNNING}")
    + """
SELECT c.attempts, {results} AS results{meta}
  FROM c{join}
"""
)
# A held claim (flowq.store.held) only locks its row: the task's success then writes the claim
# and the success as one row version (END_FAST's second variant), and a claim committed without
# its success (the timer, a failure) is written first (CLAIM_WRITE, which does not check the
# execution again: the claim was made while it ran, and the locked row cannot have moved). The
# attempt number is the one the write will make.
_CLAIM_LOCK = f"""
WITH c AS (
    SELECT attempts + 1 AS attempts FROM flowq_task_runs
     WHERE {_QUEUED_ROW}
       AND {_OF_RUNNING}
       FOR NO KEY UPDATE
)
SELECT c.attempts, {{results}} AS results{{meta}}
  FROM c{{join}}
"""
CLAIM_WRITE = _claim_write("%(began)s", _QUEUED_ROW) + "\nSELECT count(*) FROM c\n"
_RESULTS = """(SELECT coalesce(jsonb_object_agg(r.task_id, r.result), '{}'::jsonb)
          FROM flowq_task_runs r
         WHERE r.execution_id = %(e)s AND {ids} AND (r.state || '') = 'succeeded')"""
_META = {
    "{meta}": ", x.digest, x.version, x.priority, x.vars",
    "{join}": " JOIN flowq_executions x ON x.id = %(e)s",
}
_NO_META = {"{meta}": "", "{join}": ""}

# How a statement names the tasks it reads or updates by id, for no, one and several ids.
# One id is an equality: Postgres (before 17) does not use ``= ANY(array)`` on the second
# column of the primary key as an index condition, only as a filter over every task of the
# execution; several ids are rare (fan-outs, joins) and pay that scan once.
_ID_CONDITIONS = ("FALSE", "{col} = %(ids)s", "{col} = ANY(%(ids)s::text[])")


def _fill(template: str, fields: dict[str, str]) -> str:
    for key, value in fields.items():
        template = template.replace(key, value)
    return template


def _by_ids(template: str, column: str, **fields: str) -> tuple[str, str, str]:
    """The statement for no, one and several ids (index 0, 1, 2)."""
    return tuple(  # type: ignore[return-value]
        _fill(template, {"{ids}": c.replace("{col}", column), **fields}) for c in _ID_CONDITIONS
    )


def _ids_param(ids: Sequence[str]) -> str | list[str]:
    return ids[0] if len(ids) == 1 else list(ids)


def _variant(ids: Sequence[str]) -> int:
    return min(len(ids), 2)


# CLAIMS[with the execution's fixed fields][ids variant]: the first claim of an execution in a
# process brings its fixed fields (then kept in memory); a root needs no results
CLAIMS = {
    with_meta: tuple(
        _fill(_CLAIM, {"{results}": "NULL" if v == 0 else results, **fields})
        for v, results in enumerate(_by_ids(_RESULTS, "r.task_id"))
    )
    for with_meta, fields in ((False, _NO_META), (True, _META))
}
CLAIM_LOCKS = {
    with_meta: tuple(
        _fill(_CLAIM_LOCK, {"{results}": "NULL" if v == 0 else results, **fields})
        for v, results in enumerate(_by_ids(_RESULTS, "r.task_id"))
    )
    for with_meta, fields in ((False, _NO_META), (True, _META))
}

_END_TASK = """
WITH c AS (
    UPDATE flowq_task_runs
       SET state = %(to)s::text, error = %(error)s,
           result = CASE WHEN %(to)s::text = 'succeeded' THEN %(result)s ELSE result END,
           finished_at = %(now)s, updated_at = %(now)s
     WHERE execution_id = %(e)s AND task_id = %(t)s AND (state || '') = 'running'
 RETURNING 1 AS one
), h AS (
    INSERT INTO flowq_history (execution_id, task_id, from_state, to_state, reason, at)
    SELECT %(e)s, %(t)s, 'running', %(to)s::text, %(reason)s, %(now)s FROM c
), s AS (
    UPDATE flowq_task_runs
       SET deps_remaining = deps_remaining - 1,
           deps_succeeded = deps_succeeded + %(succeeded)s,
           deps_failed = deps_failed + %(failed)s
     WHERE execution_id = %(e)s AND {ids} AND EXISTS (SELECT 1 FROM c)
 RETURNING task_id, state, deps_total, deps_remaining, deps_succeeded, deps_failed, deps_skipped
), x AS (
    UPDATE flowq_executions
       SET tasks_remaining = tasks_remaining - 1, updated_at = %(now)s
     WHERE id = %(e)s AND EXISTS (SELECT 1 FROM c)
 RETURNING tasks_remaining, state
)
SELECT (SELECT count(*) FROM c) AS ended,
       (SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]'::jsonb) FROM s) AS successors,
       (SELECT tasks_remaining FROM x) AS remaining,
       (SELECT state FROM x) AS state
"""

_QUEUE_PENDING = """
WITH q AS (
    UPDATE flowq_task_runs
       SET state = 'queued', queued_at = %(now)s, updated_at = %(now)s
     WHERE execution_id = %(e)s AND {ids} AND (state || '') = 'pending'
 RETURNING task_id
), h AS (
    INSERT INTO flowq_history (execution_id, task_id, from_state, to_state, reason, at)
    SELECT %(e)s, q.task_id, 'pending', 'queued', %(reason)s, %(now)s FROM q
)
SELECT task_id FROM q
"""

END_TASK = _by_ids(_END_TASK, "task_id")
QUEUE_PENDING = _by_ids(_QUEUE_PENDING, "task_id")

# A successor the success makes ready under ``all_success`` (its values before the update): the
# last upstream task, and none failed or was skipped
_READY = "(state || '') = 'pending' AND deps_remaining = 1 AND deps_failed = 0 AND deps_skipped = 0"
_END_FAST = """
WITH c AS (
    UPDATE flowq_task_runs
       SET state = 'succeeded', error = NULL, result = %(result)s,
           finished_at = %(now)s, updated_at = %(now)s{claim}
     WHERE execution_id = %(e)s AND task_id = %(t)s AND (state || '') = '{from}'
 RETURNING attempts
), s AS (
    UPDATE flowq_task_runs
       SET deps_remaining = deps_remaining - 1,
           deps_succeeded = deps_succeeded + 1,
           state = CASE WHEN {ready} THEN 'queued' ELSE state END,
           queued_at = CASE WHEN {ready} THEN %(now)s ELSE queued_at END,
           updated_at = CASE WHEN {ready} THEN %(now)s ELSE updated_at END
     WHERE execution_id = %(e)s AND {ids} AND EXISTS (SELECT 1 FROM c)
 RETURNING task_id, state, deps_remaining, queued_at
), q AS (
    SELECT task_id FROM s
     WHERE s.state = 'queued' AND s.deps_remaining = 0 AND s.queued_at = %(now)s
), x AS (  -- the last task of a running execution where every other task succeeded or was
            -- skipped completes it (the check runs only then; a stale snapshot hands back)
    UPDATE flowq_executions
       SET tasks_remaining = tasks_remaining - 1, updated_at = %(now)s,
           state = CASE WHEN tasks_remaining = 1 AND (state || '') = 'running' THEN
                       CASE WHEN NOT EXISTS (
                                SELECT 1 FROM flowq_task_runs r
                                 WHERE r.execution_id = %(e)s AND r.task_id <> %(t)s
                                   AND (r.state || '') NOT IN ('succeeded', 'skipped'))
                            THEN 'completed' ELSE state END
                   ELSE state END
     WHERE id = %(e)s AND EXISTS (SELECT 1 FROM c)
 RETURNING tasks_remaining, state
), h AS (  -- one insert: the task's row, its successors', then the execution's, in id order
    INSERT INTO flowq_history (execution_id, task_id, from_state, to_state, reason, at)
    SELECT %(e)s, v.task_id, v.from_state, v.to_state, v.reason, v.at
      FROM ({claimed}SELECT 0 AS n, %(t)s::text AS task_id, 'running' AS from_state,
                   'succeeded' AS to_state, NULL::text AS reason, %(now)s AS at FROM c
            UNION ALL
            SELECT 1, q.task_id, 'pending', 'queued', %(reason)s, %(now)s FROM q
            UNION ALL
            SELECT 2, NULL, 'running', 'completed', %(completed)s, %(now)s FROM x
             WHERE x.tasks_remaining = 0 AND x.state = 'completed') v
     ORDER BY v.n, v.task_id
)
SELECT (SELECT count(*) FROM c) AS ended,
       (SELECT coalesce(array_agg(task_id), '{}') FROM q) AS queued,
       (SELECT state FROM x) AS state,
       CASE WHEN (SELECT tasks_remaining FROM x) = 0 AND (SELECT state FROM x) <> 'completed'
                 THEN flowq_general_path('the execution has no task left')
            WHEN EXISTS (SELECT 1 FROM s WHERE (s.state || '') = 'pending' AND s.deps_remaining = 0)
                 THEN flowq_general_path('a successor is decided otherwise than run')
       END AS handed_back
"""
# [the claim was written before: running -> succeeded | a held claim's locked row:
# queued -> running -> succeeded, both transitions in the history]
_CLAIMED_FIELDS = {
    "{claim}": ", " + _CLAIM_SETS.replace("{at}", "%(began)s"),
    "{from}": "queued",
    "{claimed}": """SELECT -1 AS n, %(t)s::text AS task_id, 'queued' AS from_state,
                   'running' AS to_state, 'attempt ' || c.attempts AS reason, %(began)s AS at
              FROM c
            UNION ALL
            """,
}
_RUNNING_FIELDS = {"{claim}": "", "{from}": "running", "{claimed}": ""}
END_FAST = tuple(
    _by_ids(_fill(_END_FAST, {"{ready}": _READY, **fields}), "task_id")
    for fields in (_RUNNING_FIELDS, _CLAIMED_FIELDS)
)
GENERAL_PATH = "FQ001"  # the SQLSTATE flowq_general_path() raises
COMPLETED_REASON = "every task succeeded or was skipped"  # as Coordinator._finish says it

_START = """
WITH d AS (
    SELECT version, digest FROM flowq_definitions
     WHERE workflow_id = %(w)s{version}
     ORDER BY version DESC LIMIT 1
), x AS (
    INSERT INTO flowq_executions (id, workflow_id, version, digest, state, vars, priority,
                                  idempotency_key, tasks_total, tasks_remaining,
                                  created_at, updated_at)
    SELECT %(e)s, %(w)s, d.version, d.digest, 'running', %(vars)s, %(priority)s, %(key)s,
           %(n)s, %(n)s, %(now)s, %(now)s
      FROM d WHERE d.digest = %(digest)s AND d.version = %(v)s
    ON CONFLICT DO NOTHING
 RETURNING id
), t AS (
    INSERT INTO flowq_task_runs (execution_id, task_id, position, state, attempts,
                                 deps_total, deps_remaining, deps_succeeded, deps_failed,
                                 deps_skipped, queued_at, updated_at)
    SELECT x.id, u.task_id, u.n - 1, CASE WHEN u.deps = 0 THEN 'queued' ELSE 'pending' END,
           0, u.deps, u.deps, 0, 0, 0, CASE WHEN u.deps = 0 THEN %(now)s END, %(now)s
      FROM x, unnest(%(ids)s::text[], %(deps)s::int[]) WITH ORDINALITY AS u(task_id, deps, n)
), h AS (
    INSERT INTO flowq_history (execution_id, task_id, from_state, to_state, reason, at)
    SELECT x.id, v.task_id, v.from_state, v.to_state, v.reason, %(now)s
      FROM x, unnest(%(h_task)s::text[], %(h_from)s::text[], %(h_to)s::text[],
                     %(h_reason)s::text[]) WITH ORDINALITY AS v(task_id, from_state, to_state,
                                                               reason, n)
     ORDER BY v.n
)
SELECT id FROM x
"""
# [a given version]: the newest version otherwise
START = (_START.replace("{version}", ""), _START.replace("{version}", " AND version = %(v)s"))


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
    """A claim made: the attempt number, upstream results, the execution's fields if asked."""

    attempt: int
    results: dict[str, Any]
    meta: Meta | None = None


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
    return Claimed(int(row.attempts), dict(row.results or {}), meta)


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
    try:
        cursor = _execute(conn, END_FAST[claiming is not None][_variant(successors)], params)
        if commit is not None:
            commit()
        row: Any = cursor.fetchone()
    except psycopg.Error as exc:
        if exc.sqlstate == GENERAL_PATH:
            return None
        raise
    if row is None or not row.ended:
        return None
    return Succeeded([str(t) for t in row.queued], str(row.state))


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
