"""The status document and history list of SPEC section 2, read from the store."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from flowq.store import Tx, iso
from flowq.store import tables as t


def status_document(tx: Tx, execution_id: str) -> dict[str, Any]:
    """The status document of one execution."""
    row = tx.execution(execution_id)
    tasks = {
        r.task_id: {
            "state": r.state,
            "attempts": r.attempts,
            "result": r.result,
            "error": r.error,
            "started_at": iso(r.started_at),
            "finished_at": iso(r.finished_at),
        }
        for r in tx.tasks(execution_id)
    }
    return {
        "execution_id": row.id,
        "workflow_id": row.workflow_id,
        "version": row.version,
        "state": row.state,
        "vars": row.vars,
        "priority": row.priority,
        "idempotency_key": row.idempotency_key,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "error": row.error,
        "tasks": tasks,
    }


def history_list(tx: Tx, execution_id: str, after_id: int = 0) -> list[dict[str, Any]]:
    """Every state change of the execution and its tasks, in the order recorded (``id``).

    That order is causal: a change caused by another (a successor queued, the execution
    completed or failed) is listed after it. ``at`` is when a change happened, which can be
    earlier than a change of another task listed before it: a held claim's start is recorded
    with its task's end, and concurrent transactions take their ids when they write, not when
    they read their time. Each task's own changes, and the execution's, read in time order.
    ``after_id``: only ids above it (two tasks' changes can commit out of id order).
    """
    tx.execution(execution_id)  # NotFound for an unknown id
    rows = tx.conn.execute(
        sa.select(t.history)
        .where(t.history.c.execution_id == execution_id, t.history.c.id > after_id)
        .order_by(t.history.c.id)
    )
    return [
        {
            "id": r.id,
            "at": iso(r.at),
            "task_id": r.task_id,
            "from": r.from_state,
            "to": r.to_state,
            "reason": r.reason,
        }
        for r in rows
    ]


def list_executions(
    tx: Tx,
    *,
    state: str | None = None,
    workflow_id: str | None = None,
    limit: int = 50,
    before: str | None = None,
) -> list[dict[str, Any]]:
    """Executions, newest first, without their tasks."""
    c = t.executions.c
    q = sa.select(t.executions)
    if state:
        q = q.where(c.state == state)
    if workflow_id:
        q = q.where(c.workflow_id == workflow_id)
    if before:
        pivot = tx.execution(before)
        # A range the index can seek (created_at <= pivot) plus the tie-break on id.
        q = q.where(
            c.created_at <= pivot.created_at,
            sa.or_(c.created_at < pivot.created_at, c.id < pivot.id),
        )
    q = q.order_by(c.created_at.desc(), c.id.desc()).limit(max(1, min(limit, 1000)))
    return [
        {
            "execution_id": r.id,
            "workflow_id": r.workflow_id,
            "version": r.version,
            "state": r.state,
            "priority": r.priority,
            "created_at": iso(r.created_at),
            "updated_at": iso(r.updated_at),
            "error": r.error,
            "tasks_total": r.tasks_total,
            "tasks_remaining": r.tasks_remaining,
        }
        for r in tx.conn.execute(q)
    ]
