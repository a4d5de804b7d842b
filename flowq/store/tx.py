"""A state store transaction: compare-and-set state changes and batched history rows."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from flowq.errors import Conflict, NotFound
from flowq.store import hotpath
from flowq.store import tables as t

ROW_COLUMNS = (
    "state",
    "attempts",
    "deps_total",
    "deps_remaining",
    "deps_succeeded",
    "deps_failed",
    "deps_skipped",
)


def utcnow() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """UTC ISO-8601 text; SQLite hands back naive datetimes that are UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


class TxBase:
    """One database transaction: compare-and-set updates plus batched history rows (the
    generic part of ``flowq.store.store.Tx``)."""

    def __init__(
        self,
        conn: sa.Connection | None,
        *,
        raw: hotpath.Conn | None = None,
        connect: Callable[[], sa.Connection] | None = None,
        now: datetime | None = None,
        holding: bool = False,
    ) -> None:
        """``conn``: the SQLAlchemy connection; or, for an autocommit call on Postgres, ``raw``
        (the process's own psycopg connection for the hot path) and ``connect``, which opens
        a SQLAlchemy connection only if something other than the hot path needs one. ``now``:
        the call's time, taken before connecting (a new connection must not delay it).
        ``holding``: a held claim's transaction (``flowq.store.held``), whose claim only locks
        its row."""
        self.holding = holding
        self._conn = conn
        self._connect = connect
        self.now = now or utcnow()
        self._history: list[dict[str, Any]] = []
        # Postgres runs the per-task hot path as single statements (flowq.store.hotpath)
        self.postgres = raw is not None or (conn is not None and conn.dialect.name == "postgresql")
        if raw is None and self.postgres and conn is not None:
            raw = conn.connection.driver_connection
        self._raw = raw

    @property
    def conn(self) -> sa.Connection:
        """The SQLAlchemy connection (opened on first use when the call began without one)."""
        if self._conn is None:
            assert self._connect is not None
            self._conn = self._connect()
        return self._conn

    @property
    def raw(self) -> hotpath.Conn:
        """Postgres: the psycopg connection hot-path statements go to."""
        assert self._raw is not None, "the hot path is Postgres only"
        return self._raw

    def close(self) -> None:
        """Close a SQLAlchemy connection this call opened on demand."""
        if self._connect is not None and self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- history --------------------------------------------------------------------------------
    def record(
        self,
        execution_id: str,
        task_id: str | None,
        from_state: str | None,
        to_state: str,
        reason: str | None = None,
    ) -> None:
        """Append a history row (written when the transaction commits)."""
        self._history.append(
            {
                "execution_id": execution_id,
                "task_id": task_id,
                "from_state": from_state,
                "to_state": to_state,
                "reason": reason,
                "at": self.now,
            }
        )

    @property
    def has_pending_history(self) -> bool:
        """True while recorded history rows wait for ``flush``."""
        return bool(self._history)

    def flush(self) -> None:
        """Write the batched history rows."""
        if self._history:
            self.conn.execute(t.history.insert(), self._history)
            self._history = []

    # -- definitions -----------------------------------------------------------------------------
    def put_definition(
        self,
        workflow_id: str,
        version: int,
        digest: str,
        name: str | None,
        body: Mapping[str, Any],
        replace: bool,
    ) -> bool:
        """Store a definition; False if the same body was there already."""
        has_body = self.conn.execute(
            sa.select(t.definition_bodies.c.digest).where(t.definition_bodies.c.digest == digest)
        ).first()
        if has_body is None:
            self.conn.execute(
                t.definition_bodies.insert().values(
                    digest=digest, body=dict(body), created_at=self.now
                )
            )
        current = self.conn.execute(
            sa.select(t.definitions.c.digest).where(
                t.definitions.c.workflow_id == workflow_id, t.definitions.c.version == version
            )
        ).scalar()
        if current == digest:
            return False
        if current is None:
            self.conn.execute(
                t.definitions.insert().values(
                    workflow_id=workflow_id,
                    version=version,
                    digest=digest,
                    name=name,
                    created_at=self.now,
                    updated_at=self.now,
                )
            )
            return True
        if not replace:
            raise Conflict(
                f"workflow {workflow_id} version {version} is already registered with a "
                "different definition: raise `version` to register a new one"
            )
        self.conn.execute(
            t.definitions.update()
            .where(t.definitions.c.workflow_id == workflow_id, t.definitions.c.version == version)
            .values(digest=digest, name=name, updated_at=self.now)
        )
        return True

    def definition_digest(self, workflow_id: str, version: int | None) -> tuple[int, str]:
        """The (version, digest) of a registered workflow, the newest version by default."""
        q = sa.select(t.definitions.c.version, t.definitions.c.digest).where(
            t.definitions.c.workflow_id == workflow_id
        )
        if version is not None:
            q = q.where(t.definitions.c.version == version)
        row = self.conn.execute(q.order_by(t.definitions.c.version.desc()).limit(1)).first()
        if row is None:
            what = f"{workflow_id}@{version}" if version is not None else workflow_id
            raise NotFound(f"workflow {what} is not registered")
        return int(row.version), str(row.digest)

    def definition_body(self, digest: str) -> dict[str, Any]:
        """The stored JSON body of a definition by digest."""
        body = self.conn.execute(
            sa.select(t.definition_bodies.c.body).where(t.definition_bodies.c.digest == digest)
        ).scalar()
        if body is None:
            raise NotFound(f"definition {digest[:12]} is not stored")
        return dict(body)

    # -- executions ------------------------------------------------------------------------------
    def insert_execution(self, row: Mapping[str, Any]) -> None:
        """Insert a new execution row."""
        self.conn.execute(
            t.executions.insert().values(**row, created_at=self.now, updated_at=self.now)
        )

    def execution(self, execution_id: str) -> sa.Row[Any]:
        """The execution row; NotFound if there is none."""
        row = self.conn.execute(
            sa.select(t.executions).where(t.executions.c.id == execution_id)
        ).first()
        if row is None:
            raise NotFound(f"execution {execution_id} not found")
        return row

    def find_idempotent(self, workflow_id: str, key: str) -> str | None:
        """The execution started earlier with this idempotency key, if any."""
        return self.conn.execute(
            sa.select(t.executions.c.id).where(
                t.executions.c.workflow_id == workflow_id, t.executions.c.idempotency_key == key
            )
        ).scalar()

    def cas_execution(
        self,
        execution_id: str,
        expected: str,
        to: str,
        reason: str | None = None,
        **values: Any,
    ) -> bool:
        """Move an execution from ``expected`` to ``to``; False if it was not in ``expected``."""
        res = self.conn.execute(
            t.executions.update()
            .where(t.executions.c.id == execution_id, t.executions.c.state == expected)
            .values(state=to, updated_at=self.now, **values)
        )
        if res.rowcount != 1:
            return False
        self.record(execution_id, None, expected, to, reason)
        return True

    def settle_count(self, execution_id: str, settled: int) -> tuple[int, str | None]:
        """Count ``settled`` tasks as terminal; return how many are left and the state."""
        if settled == 0:
            return -1, None
        # The execution row is the one every task of the execution updates: write the history
        # first, so its lock is held only for this statement and the commit.
        self.flush()
        row = self.conn.execute(
            t.executions.update()
            .where(t.executions.c.id == execution_id)
            .values(tasks_remaining=t.executions.c.tasks_remaining - settled, updated_at=self.now)
            .returning(t.executions.c.tasks_remaining, t.executions.c.state)
        ).first()
        return (int(row[0]), str(row[1])) if row is not None else (-1, None)

    # -- task runs -------------------------------------------------------------------------------
    def insert_tasks(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert the task runs of a new execution."""
        full = [
            {
                "attempts": 0,
                "deps_succeeded": 0,
                "deps_failed": 0,
                "deps_skipped": 0,
                "updated_at": self.now,
                **r,
            }
            for r in rows
        ]
        for i in range(0, len(full), 1000):
            self.conn.execute(t.task_runs.insert(), full[i : i + 1000])

    def task(self, execution_id: str, task_id: str) -> sa.Row[Any] | None:
        """One task run row."""
        return self.conn.execute(
            sa.select(t.task_runs).where(
                t.task_runs.c.execution_id == execution_id, t.task_runs.c.task_id == task_id
            )
        ).first()

    def tasks(self, execution_id: str) -> list[sa.Row[Any]]:
        """All task run rows of an execution, in definition order."""
        return list(
            self.conn.execute(
                sa.select(t.task_runs)
                .where(t.task_runs.c.execution_id == execution_id)
                .order_by(t.task_runs.c.position)
            )
        )

    def task_ids_in(self, execution_id: str, states: Iterable[str]) -> list[str]:
        """Ids of the tasks of an execution that are in one of ``states``."""
        return list(
            self.conn.execute(
                sa.select(t.task_runs.c.task_id)
                .where(
                    t.task_runs.c.execution_id == execution_id,
                    t.task_runs.c.state.in_(list(states)),
                )
                .order_by(t.task_runs.c.position)
            ).scalars()
        )

    def results(self, execution_id: str, task_ids: Iterable[str] | None) -> dict[str, Any]:
        """Results of succeeded tasks (all of the execution's when ``task_ids`` is None)."""
        q = sa.select(t.task_runs.c.task_id, t.task_runs.c.result).where(
            t.task_runs.c.execution_id == execution_id, t.task_runs.c.state == "succeeded"
        )
        if task_ids is not None:
            ids = list(task_ids)
            if not ids:
                return {}
            q = q.where(t.task_runs.c.task_id.in_(ids))
        return {r.task_id: r.result for r in self.conn.execute(q)}

    def cas_task(
        self,
        execution_id: str,
        task_id: str,
        expected: str,
        to: str,
        reason: str | None = None,
        *,
        require_execution: str | None = None,
        **values: Any,
    ) -> bool:
        """Move a task from ``expected`` to ``to``; False if it was not in ``expected``.

        With ``require_execution``, the move happens only while the execution is in that state.
        """
        cond = [
            t.task_runs.c.execution_id == execution_id,
            t.task_runs.c.task_id == task_id,
            t.task_runs.c.state == expected,
        ]
        if require_execution is not None:
            cond.append(
                sa.exists().where(
                    t.executions.c.id == execution_id, t.executions.c.state == require_execution
                )
            )
        res = self.conn.execute(
            t.task_runs.update().where(*cond).values(state=to, updated_at=self.now, **values)
        )
        if res.rowcount != 1:
            return False
        self.record(execution_id, task_id, expected, to, reason)
        return True

    def claim(
        self,
        execution_id: str,
        task_id: str,
        expected: str,
        *,
        attempts: int | None = None,
        **values: Any,
    ) -> int | None:
        """Compare-and-set ``expected`` → running while the execution runs; the new attempt no.

        One statement: the attempt counter is incremented and read back by the same UPDATE.
        ``attempts``: claim only if that many attempts were counted so far.
        """
        c = t.task_runs.c
        counted = [] if attempts is None else [c.attempts == attempts]
        row = self.conn.execute(
            t.task_runs.update()
            .where(
                c.execution_id == execution_id,
                c.task_id == task_id,
                c.state == expected,
                *counted,
                sa.exists().where(
                    t.executions.c.id == execution_id, t.executions.c.state == "running"
                ),
            )
            .values(state="running", attempts=c.attempts + 1, updated_at=self.now, **values)
            .returning(c.attempts)
        ).first()
        if row is None:
            return None
        attempt = int(row[0])
        self.record(execution_id, task_id, expected, "running", f"attempt {attempt}")
        return attempt

    def count_upstream_end(
        self, execution_id: str, task_id: str, upstream_state: str
    ) -> sa.Row[Any] | None:
        """Count one upstream task of ``task_id`` as ended in ``upstream_state``.

        Returns the task's state and dependency counters after the update. The row lock this
        takes serialises concurrent fan-in updates, so exactly one sees the last upstream end.
        """
        c = t.task_runs.c
        succeeded = 1 if upstream_state == "succeeded" else 0
        skipped = 1 if upstream_state == "skipped" else 0
        failed = 1 - succeeded - skipped
        return self.conn.execute(
            t.task_runs.update()
            .where(c.execution_id == execution_id, c.task_id == task_id)
            .values(
                deps_remaining=c.deps_remaining - 1,
                deps_succeeded=c.deps_succeeded + succeeded,
                deps_failed=c.deps_failed + failed,
                deps_skipped=c.deps_skipped + skipped,
            )
            .returning(*(getattr(c, n) for n in ROW_COLUMNS))
        ).first()
