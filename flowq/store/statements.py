"""The text of the hot path's statements (``flowq.store.hotpath`` sends them).

Each one does in a single statement what the generic ``Tx`` methods do in several: the
compare-and-set, the history row (a data-modifying CTE) and the reads that follow. Every row is
found by its primary key. State conditions are written ``(state || '') = ...`` so that the
planner cannot use the ``state`` indexes (made for the reconciler's scans) instead: on a young
table without statistics it otherwise does, and a claim scans every queued task.
"""

from __future__ import annotations

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


# With the attempt number: the execution's tasks left to end, this one included (1: its end
# ends the execution)
_REMAINING = "(SELECT xr.tasks_remaining FROM flowq_executions xr WHERE xr.id = %(e)s)"
_CLAIM = (
    _claim_write("%(now)s", f"{_QUEUED_ROW}\n       AND {_OF_RUNNING}")
    + f"""
SELECT c.attempts, {_REMAINING} AS remaining, {{results}} AS results{{meta}}
  FROM c{{join}}
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
SELECT c.attempts, {_REMAINING} AS remaining, {{results}} AS results{{meta}}
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

# A success's own row: queued or running (``{from}``) -> succeeded, the claim written with it
# if it was held (``{claim}``); the CTE ``c`` of END_FAST and END_LEAF
_SUCCEEDED = """WITH c AS (
    UPDATE flowq_task_runs
       SET state = 'succeeded', error = NULL, result = %(result)s,
           finished_at = %(now)s, updated_at = %(now)s{claim}
     WHERE execution_id = %(e)s AND task_id = %(t)s AND (state || '') = '{from}'
 RETURNING attempts
)"""
# A successor the success makes ready under ``all_success`` (its values before the update): the
# last upstream task, and none failed or was skipped
_READY = "(state || '') = 'pending' AND deps_remaining = 1 AND deps_failed = 0 AND deps_skipped = 0"
_END_FAST = """
{succeeded}, s AS (
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
    _by_ids(_fill(_END_FAST, {"{succeeded}": _SUCCEEDED, "{ready}": _READY, **fields}), "task_id")
    for fields in (_RUNNING_FIELDS, _CLAIMED_FIELDS)
)
# A success of a task without successors in a commit batch (flowq.store.held): the task's row
# and history only, as END_FAST writes them. What it takes from its execution's count of tasks
# left (and the execution's completion) is settled once per batch, just before the batch's
# commit: BATCH_LOCK locks the batch's executions in id order (two batches never wait on each
# other in a circle), then BATCH_COUNT, a statement of its own and so with a snapshot taken
# after those locks, sees every other task's end that committed before it.
_END_LEAF = """
{succeeded}, h AS (
    INSERT INTO flowq_history (execution_id, task_id, from_state, to_state, reason, at)
    SELECT %(e)s, v.task_id, v.from_state, v.to_state, v.reason, v.at
      FROM ({claimed}SELECT 0 AS n, %(t)s::text AS task_id, 'running' AS from_state,
                   'succeeded' AS to_state, NULL::text AS reason, %(now)s AS at FROM c) v
     ORDER BY v.n
)
SELECT count(*) AS ended FROM c
"""
BATCH_LOCK = """
SELECT id FROM flowq_executions WHERE id = ANY(%(ids)s::text[]) ORDER BY id FOR NO KEY UPDATE
"""
BATCH_COUNT = """
WITH v AS (  -- each execution, its tasks ended in the batch, and when the last one ended
    SELECT u.id, u.n, u.at
      FROM unnest(%(ids)s::text[], %(ns)s::int[], %(ats)s::timestamptz[]) AS u(id, n, at)
), x AS (  -- an execution's last task, every other one succeeded or skipped, completes it
    UPDATE flowq_executions x
       SET tasks_remaining = x.tasks_remaining - v.n, updated_at = greatest(x.updated_at, v.at),
           state = CASE WHEN x.tasks_remaining = v.n AND (x.state || '') = 'running' THEN
                       CASE WHEN NOT EXISTS (
                                SELECT 1 FROM flowq_task_runs r
                                 WHERE r.execution_id = x.id
                                   AND (r.state || '') NOT IN ('succeeded', 'skipped'))
                            THEN 'completed' ELSE x.state END
                   ELSE x.state END
      FROM v
     WHERE x.id = v.id
 RETURNING x.id, x.tasks_remaining, x.state, x.updated_at
), h AS (  -- completed as of its last task's end, which may have been counted by another batch
    INSERT INTO flowq_history (execution_id, task_id, from_state, to_state, reason, at)
    SELECT x.id, NULL, 'running', 'completed', %(completed)s,
           greatest(x.updated_at, (SELECT max(r.finished_at) FROM flowq_task_runs r
                                    WHERE r.execution_id = x.id))
      FROM x WHERE x.tasks_remaining = 0 AND x.state = 'completed'
     ORDER BY x.id
)
SELECT count(*) AS counted,
       CASE WHEN EXISTS (SELECT 1 FROM x WHERE x.tasks_remaining = 0 AND x.state <> 'completed')
                 THEN flowq_general_path('an execution has no task left')
       END AS handed_back
  FROM x
"""
END_LEAF = tuple(
    _fill(_END_LEAF, {"{succeeded}": _SUCCEEDED, **fields})
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
