"""A transaction's worker records and the reconciler's scans (a base of ``Tx``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from flowq.store import tables as t
from flowq.store.tx import TxBase

OVERDUE = datetime(2000, 1, 1, tzinfo=UTC)  # a queued_at any reconciler finds overdue


class Upkeep(TxBase):
    """``Tx``'s heartbeats of workers and the scans for lost and stale tasks."""

    def heartbeat(self, name: str, pid: int) -> None:
        """Record that worker ``name`` is alive now."""
        res = self.conn.execute(
            t.workers.update().where(t.workers.c.name == name).values(pid=pid, last_seen=self.now)
        )
        if res.rowcount == 0:
            self.conn.execute(
                t.workers.insert().values(
                    name=name, pid=pid, started_at=self.now, last_seen=self.now
                )
            )

    def forget_worker(self, name: str) -> None:
        """Remove a worker that shut down cleanly."""
        self.conn.execute(t.workers.delete().where(t.workers.c.name == name))

    def lost_running(self, cutoff: datetime, limit: int = 500) -> list[sa.Row[Any]]:
        """Running tasks whose worker has not been seen since ``cutoff`` (or never was)."""
        c = t.task_runs.c
        alive = sa.select(t.workers.c.name).where(t.workers.c.last_seen >= cutoff)
        return list(
            self.conn.execute(
                sa.select(c.execution_id, c.task_id, c.worker, c.celery_id)
                .join(t.executions, t.executions.c.id == c.execution_id)
                .where(
                    c.state == "running",
                    t.executions.c.state.in_(["running", "paused"]),
                    c.updated_at < cutoff,
                    sa.or_(c.worker.is_(None), c.worker.not_in(alive)),
                )
                .limit(limit)
            )
        )

    def stale_waiting(self, cutoff: datetime, limit: int = 500) -> list[sa.Row[Any]]:
        """Queued or retrying tasks of running executions, due before ``cutoff``, not started."""
        c = t.task_runs.c
        return list(
            self.conn.execute(
                sa.select(c.execution_id, c.task_id, c.state)
                .join(t.executions, t.executions.c.id == c.execution_id)
                .where(
                    c.state.in_(["queued", "retrying"]),
                    t.executions.c.state == "running",
                    c.queued_at < cutoff,
                )
                .order_by(c.queued_at)
                .limit(limit)
            )
        )

    def live_workers(self, cutoff: datetime) -> set[str]:
        """The names of the workers seen since ``cutoff``."""
        return set(
            self.conn.execute(sa.select(t.workers.c.name).where(t.workers.c.last_seen >= cutoff))
            .scalars()
            .all()
        )

    def queued_before(
        self, cutoff: datetime, after: tuple[datetime, str, str] | None = None, limit: int = 200
    ) -> list[sa.Row[Any]]:
        """Up to ``limit`` queued tasks of running executions, dispatched before ``cutoff``, in
        the order (``updated_at``, ``execution_id``, ``task_id``), from after ``after``: a
        caller pages through a long queue pass after pass (the ``state`` index serves it)."""
        c = t.task_runs.c
        query = (
            sa.select(c.execution_id, c.task_id, c.attempts, c.queued_at, c.updated_at)
            .join(t.executions, t.executions.c.id == c.execution_id)
            .where(c.state == "queued", t.executions.c.state == "running", c.queued_at < cutoff)
            .order_by(c.updated_at, c.execution_id, c.task_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(sa.tuple_(c.updated_at, c.execution_id, c.task_id) > after)
        return list(self.conn.execute(query))

    def mark_overdue(self, keys: Sequence[tuple[str, str]]) -> None:
        """Make these ``(execution_id, task_id)`` look long overdue if they are `queued`, so
        that the reconciler's next pass publishes them again (their publish failed)."""
        c = t.task_runs.c
        self.conn.execute(
            t.task_runs.update()
            .where(sa.tuple_(c.execution_id, c.task_id).in_(list(keys)), c.state == "queued")
            .values(queued_at=OVERDUE)
        )
