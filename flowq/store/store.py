"""The state store: compare-and-set state changes over SQLAlchemy, on SQLite or Postgres."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flowq.errors import Conflict, NotFound
from flowq.store import hotpath
from flowq.store import tables as t
from flowq.store.engine import create_engine, is_sqlite
from flowq.store.hotpath import Claimed, Counters, Ended, Meta, Succeeded
from flowq.store.migrate import upgrade

log = logging.getLogger("flowq.store")
T = TypeVar("T")
HOT_IDLE = 5  # idle hot-path connections a Store keeps (one per thread that is using one)

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


class Tx:
    """One database transaction: compare-and-set updates plus batched history rows."""

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

    # -- the per-task hot path: one statement each on Postgres --------------------------------
    def claim_queued(
        self,
        execution_id: str,
        task_id: str,
        result_ids: Iterable[str],
        *,
        celery_id: str | None,
        worker: str | None,
        with_meta: bool = False,
    ) -> Claimed | None:
        """queued -> running while the execution runs: the attempt number and upstream results.

        ``with_meta``: the execution's fixed fields (``Meta``) too. None when the task is not
        queued or its execution is not running. In a ``holding`` transaction the row is locked,
        not written yet (``hotpath.claim_queued``).
        """
        ids = list(result_ids)
        if self.postgres:
            self.flush()
            return hotpath.claim_queued(
                self.raw,
                self.now,
                execution_id,
                task_id,
                ids,
                celery_id,
                worker,
                with_meta,
                lock_only=self.holding,
            )
        values: dict[str, Any] = {"started_at": self.now, "celery_id": celery_id, "worker": worker}
        attempt = self.claim(execution_id, task_id, "queued", **values)
        if attempt is None:
            return None
        results = self.results(execution_id, ids)
        if not with_meta:
            return Claimed(attempt, results)
        return Claimed(attempt, results, Meta.of(self.execution(execution_id)))

    def end_task(
        self,
        execution_id: str,
        task_id: str,
        to: str,
        reason: str | None,
        successors: Sequence[str],
        *,
        result: Any = None,
        error: str | None = None,
    ) -> Ended | None:
        """running -> ``to`` (succeeded or failed), counted against each successor and against
        the execution's remaining tasks; None (and nothing written) when it was not running.

        ``result`` is stored only on success; a failure keeps the stored result.
        """
        if self.postgres:
            self.flush()
            return hotpath.end_task(
                self.raw, self.now, execution_id, task_id, to, reason, successors, result, error
            )
        values: dict[str, Any] = {"error": error, "finished_at": self.now}
        if to == "succeeded":
            values["result"] = result
        if not self.cas_task(execution_id, task_id, "running", to, reason, **values):
            return None
        counters = []
        for succ in successors:
            row = self.count_upstream_end(execution_id, succ, to)
            if row is not None:
                counters.append(Counters.of(succ, row))
        remaining, state = self.settle_count(execution_id, 1)
        return Ended(counters, remaining, str(state))

    def succeed_fast(
        self,
        execution_id: str,
        task_id: str,
        successors: Sequence[str],
        result: Any,
        commit: Callable[[], None] | None = None,
        claiming: hotpath.Claiming | None = None,
    ) -> Succeeded | None:
        """Postgres, autocommit only: a success in one statement (``hotpath.succeed_fast``).

        Every successor must be ``all_success`` without ``when``. None, with nothing written,
        when the task is not running or the coordinator must decide something: then run the
        transactional end (``end_task`` and what follows). ``commit``: on a held claim's
        connection (``flowq.store.held``), what ends its transaction; ``claiming``: that
        claim, when its row is locked and not written yet.
        """
        if not self.postgres or not self.raw.autocommit:
            raise NotImplementedError("succeed_fast is Postgres' single-statement success")
        return hotpath.succeed_fast(
            self.raw, self.now, execution_id, task_id, successors, result, commit, claiming
        )

    def start_execution(
        self,
        execution: dict[str, Any],
        task_deps: Sequence[tuple[str, int]],
        history: Sequence[tuple[str | None, str | None, str, str]],
        *,
        newest: bool,
    ) -> bool:
        """Postgres only: a new running execution with its tasks, roots queued, in one statement.

        Written only while the execution's digest and version are still its workflow's (the
        newest when ``newest``); False, with nothing written, otherwise or when the execution
        or its idempotency key exists. ``history`` rows are (task, from, to, reason).
        """
        if not self.postgres:
            raise NotImplementedError("start_execution is Postgres' single-statement start")
        self.flush()
        return hotpath.start_execution(self.raw, self.now, execution, task_deps, history, newest)

    def queue_pending(self, execution_id: str, task_ids: Sequence[str], reason: str) -> list[str]:
        """pending -> queued for each of ``task_ids``; the ids that moved, in the given order."""
        if self.postgres:
            self.flush()
            moved = set(hotpath.queue_pending(self.raw, self.now, execution_id, task_ids, reason))
            return [tid for tid in task_ids if tid in moved]
        return [
            tid
            for tid in task_ids
            if self.cas_task(execution_id, tid, "pending", "queued", reason, queued_at=self.now)
        ]

    # -- workers -------------------------------------------------------------------------------
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


def _run(fn: Callable[[Tx], T], tx: Tx) -> T:
    try:
        return fn(tx)
    except hotpath.CONNECTION_ERRORS:
        # a hot-path statement's error on the raw connection: SQLAlchemy did not see it, so a
        # broken connection is taken out of the pool here (Store.transact then retries)
        if tx.postgres and tx.raw.broken and not tx.conn.invalidated:
            tx.conn.invalidate()
        raise


class Store:
    """Durable state of workflows: one engine, transactions retried on transient errors."""

    def __init__(self, url: str, *, retry_seconds: float = 60.0) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.retry_seconds = retry_seconds
        # Postgres: autocommit psycopg connections for single-statement calls (the per-task
        # hot path), kept idle here (at most HOT_IDLE) between calls: no SQLAlchemy pool
        # checkout or per-call plumbing
        self._hot: list[hotpath.Raw] = []
        self._hot_lock = threading.Lock()
        self._hot_pid = os.getpid()
        self._inherited: list[hotpath.Raw] = []  # a parent process's, kept open, never used

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite store."""
        return is_sqlite(self.engine)

    def upgrade(self) -> None:
        """Create or migrate the tables."""
        upgrade(self.engine)

    def dispose(self) -> None:
        """Drop pooled connections (after fork, or when done)."""
        self.engine.dispose()
        self._drop_hot()

    def forget_connections(self) -> None:
        """In a forked child: leave the parent's connections alone and open new ones."""
        self.engine.dispose(close=False)
        with self._hot_lock:
            self._inherited += self._hot  # closing them would end the parent's sessions
            self._hot = []
            self._hot_pid = os.getpid()

    def connect_raw(self) -> hotpath.Raw:
        """A new psycopg connection to the store, in autocommit mode (Postgres only)."""
        url = self.engine.url.set(drivername="postgresql")
        return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)

    def sa_connect(self) -> sa.Connection:
        """A pooled SQLAlchemy connection in autocommit mode, for a ``Tx`` opened without one."""
        return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _hot_checkout(self) -> hotpath.Raw:
        if self._hot_pid != os.getpid():
            self.forget_connections()  # forked without calling it: the same thing
        with self._hot_lock:
            conn = self._hot.pop() if self._hot else None
        if conn is None or conn.closed:
            conn = self.connect_raw()
        return conn

    def _hot_checkin(self, conn: hotpath.Raw) -> None:
        if not (conn.closed or conn.broken) and self._hot_pid == os.getpid():
            with self._hot_lock:
                if len(self._hot) < HOT_IDLE:
                    self._hot.append(conn)
                    return
        conn.close()

    def _drop_hot(self) -> None:
        with self._hot_lock:
            idle, self._hot = self._hot, []
        if self._hot_pid == os.getpid():
            for conn in idle:
                conn.close()

    def transact(
        self,
        fn: Callable[[Tx], T],
        *,
        readonly: bool = False,
        single: bool = False,
        now: datetime | None = None,
    ) -> T:
        """Run ``fn`` in one transaction; retry it whole on lost connections and deadlocks.

        ``single``: ``fn`` writes with one statement at most (reads before it are fine), so on
        Postgres it runs in autocommit mode, which saves the BEGIN and COMMIT round trips: the
        statement is its own transaction. SQLite still wraps ``fn`` in a transaction.

        ``now``: the time the transitions are recorded at (default: when each try begins).
        """
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                at = now or utcnow()
                if single and not self.is_sqlite:
                    return self._single(fn, at)
                conn = self.engine.connect()
                if readonly:
                    conn = conn.execution_options(flowq_readonly=True)
                with conn, conn.begin():
                    tx = Tx(conn, now=at)
                    out = _run(fn, tx)
                    tx.flush()
                return out
            except (
                sa_exc.OperationalError,
                sa_exc.InterfaceError,
                *hotpath.CONNECTION_ERRORS,  # from a hot-path statement on a raw connection
            ) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "state store unavailable (%s); retrying in %.2fs",
                    str(exc).splitlines()[0],
                    delay,
                )
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    def _single(self, fn: Callable[[Tx], T], now: datetime) -> T:
        """Postgres autocommit: hot-path statements on one of the store's idle psycopg
        connections; anything else on a pooled SQLAlchemy connection, opened only if ``fn``
        asks for one."""

        raw = self._hot_checkout()
        tx = Tx(None, raw=raw, connect=self.sa_connect, now=now)
        try:
            out = fn(tx)
            if tx.has_pending_history:
                raise RuntimeError("a single-statement call left history unwritten")
            return out
        finally:
            tx.close()
            self._hot_checkin(raw)  # a broken one is closed, not kept

    def read(self, fn: Callable[[Tx], T]) -> T:
        """Run a read-only ``fn``."""
        return self.transact(fn, readonly=True)
