"""Prometheus metrics computed from the state store on each scrape.

Workers are separate processes, so no process holds the counts in memory: every number is a
SQL aggregate over the shared tables, and any API replica reports the same values. Counters
are derived from rows that only grow (executions, task attempts, history); histograms cover
every task run in the store. A scrape costs a few grouped scans of the state tables.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import exc as sa_exc

from flowq import states as S
from flowq.definition import Workflow
from flowq.errors import FlowqError
from flowq.store import Store
from flowq.store import tables as t

log = logging.getLogger("flowq.api.metrics")

RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

E, R, H = t.executions.c, t.task_runs.c, t.history.c


def seconds_between(engine: sa.Engine, start: Any, end: Any) -> sa.ColumnElement[float]:
    """``end - start`` in seconds, in this engine's SQL dialect."""
    if engine.dialect.name == "sqlite":
        return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0
    return sa.cast(sa.extract("epoch", end - start), sa.Float)


class StoreCollector(Collector):
    """Reads flowq's metrics from the store; ``definition`` maps a digest to its workflow."""

    def __init__(self, store: Store, definition: Callable[[str], Workflow]) -> None:
        self.store = store
        self.definition = definition

    def describe(self) -> list[Metric]:
        return []  # nothing to collect when the collector is registered

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("flowq_store_up", "1 if the state store answered this scrape")
        try:
            with self.store.engine.connect() as conn:
                metrics = list(self._collect(conn.execution_options(flowq_readonly=True)))
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            log.warning("metrics: the state store does not answer: %s", str(exc).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _collect(self, conn: sa.Connection) -> Iterator[Metric]:
        yield from self._executions(conn)
        yield from self._tasks(conn)
        engine = self.store.engine
        yield self._histogram(
            conn,
            "flowq_task_run_seconds",
            "Run time of task runs that ended (finished_at - started_at of the last attempt)",
            seconds_between(engine, R.started_at, R.finished_at),
            [R.state.in_([S.SUCCEEDED, S.FAILED]), R.started_at.is_not(None)],
            RUN_BUCKETS,
        )
        yield self._histogram(
            conn,
            "flowq_task_queue_wait_seconds",
            "Queue wait of first attempts: from enqueue (queued_at) to the start (started_at)",
            seconds_between(engine, R.queued_at, R.started_at),
            [R.attempts == 1, R.queued_at.is_not(None), R.started_at.is_not(None)],
            WAIT_BUCKETS,
        )

    def _executions(self, conn: sa.Connection) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "flowq_executions_started", "Executions started", labels=["workflow_id"]
        )
        for wf, n in conn.execute(
            sa.select(E.workflow_id, sa.func.count()).group_by(E.workflow_id)
        ):
            started.add_metric([wf], n)
        yield started

        finished = CounterMetricFamily(
            "flowq_executions_finished",
            "Times executions reached completed, failed or cancelled (a retried one may count "
            "again)",
            labels=["workflow_id", "state"],
        )
        q = (
            sa.select(E.workflow_id, H.to_state, sa.func.count())
            .select_from(t.history.join(t.executions, E.id == H.execution_id))
            .where(H.task_id.is_(None), H.to_state.in_(sorted(S.EXECUTION_ENDED)))
            .group_by(E.workflow_id, H.to_state)
        )
        for wf, state, n in conn.execute(q):
            finished.add_metric([wf, state], n)
        yield finished

        active = {
            state: GaugeMetricFamily(
                f"flowq_executions_{state}", f"Executions {state} now", labels=["workflow_id"]
            )
            for state in (S.RUNNING, S.PAUSED)
        }
        q = (
            sa.select(E.state, E.workflow_id, sa.func.count())
            .where(E.state.in_(list(active)))
            .group_by(E.state, E.workflow_id)
        )
        for state, wf, n in conn.execute(q):
            active[state].add_metric([wf], n)
        yield from active.values()

    def _tasks(self, conn: sa.Connection) -> Iterator[Metric]:
        labels = ["workflow_id", "task_type"]
        attempts = CounterMetricFamily(
            "flowq_task_attempts", "Task attempts started", labels=labels
        )
        q = (
            sa.select(E.workflow_id, E.digest, R.task_id, sa.func.sum(R.attempts))
            .select_from(t.task_runs.join(t.executions, E.id == R.execution_id))
            .where(R.attempts > 0)
            .group_by(E.workflow_id, E.digest, R.task_id)
        )
        for (wf, kind), n in self._by_type(conn.execute(q).all()).items():
            attempts.add_metric([wf, kind], n)
        yield attempts

        failures = CounterMetricFamily(
            "flowq_task_failures",
            "Task attempts that failed (then retried or failed for good)",
            labels=labels,
        )
        q = (
            sa.select(E.workflow_id, E.digest, H.task_id, sa.func.count())
            .select_from(t.history.join(t.executions, E.id == H.execution_id))
            .where(
                H.task_id.is_not(None),
                H.from_state == S.RUNNING,
                H.to_state.in_([S.RETRYING, S.FAILED]),
            )
            .group_by(E.workflow_id, E.digest, H.task_id)
        )
        for (wf, kind), n in self._by_type(conn.execute(q).all()).items():
            failures.add_metric([wf, kind], n)
        yield failures

    def _by_type(self, rows: Iterable[Any]) -> dict[tuple[str, str], float]:
        """Sum (workflow_id, digest, task_id, n) rows by (workflow_id, task type)."""
        out: dict[tuple[str, str], float] = defaultdict(float)
        for wf, digest, task_id, n in rows:
            out[(wf, self._task_type(digest, task_id))] += float(n or 0)
        return out

    def _task_type(self, digest: str, task_id: str) -> str:
        try:
            return self.definition(digest).task(task_id).type
        except FlowqError:
            return "unknown"

    def _histogram(
        self,
        conn: sa.Connection,
        name: str,
        text: str,
        duration: sa.ColumnElement[float],
        where: list[sa.ColumnElement[bool]],
        buckets: Sequence[float],
    ) -> Metric:
        """A histogram by workflow, its cumulative buckets counted by the database."""
        q = (
            sa.select(
                E.workflow_id,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(duration), 0.0),
                *(sa.func.sum(sa.case((duration <= b, 1), else_=0)) for b in buckets),
            )
            .select_from(t.task_runs.join(t.executions, E.id == R.execution_id))
            .where(*where)
            .group_by(E.workflow_id)
        )
        family = HistogramMetricFamily(name, text, labels=["workflow_id"])
        for wf, count, total, *cumulative in conn.execute(q):
            points = [(_bound(b), float(n or 0)) for b, n in zip(buckets, cumulative, strict=True)]
            points.append(("+Inf", float(count)))
            family.add_metric([wf], points, sum_value=float(total))
        return family


def _bound(value: float) -> str:
    return f"{value:g}"
