"""``python -m bench.store_cost``: what flowq's store costs per task, without Celery or Redis.

Drives the coordinator in-process on a fresh Postgres database (messages go to a list, not a
broker) through a chain, a chord and executions of 20 independent tasks, and reports, for
``start``, ``claim`` and ``succeeded``: statements sent, commits and time per call. Statements
are round trips to Postgres, so they set the floor of a task's time that no worker tuning
removes. Use it to see what an engine change saves, before the full bench.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import sqlalchemy as sa

from bench import shapes
from bench.cpu import backends, process_cpu
from bench.env import PG_ADMIN_URL
from bench.plan import PER_EXECUTION
from flowq import Workflow
from flowq.coordinator import Coordinator, Dispatch
from flowq.store import Store, hotpath
from workers.app import CLAIM_HOLD_SECONDS


class ListDispatcher:
    """Keeps messages in a list: the test loop plays the broker and the worker."""

    def __init__(self) -> None:
        self.sent: list[Dispatch] = []

    def send(self, items: Sequence[Dispatch]) -> None:
        self.sent.extend(items)

    def revoke(self, celery_ids: Sequence[str]) -> None:
        """Nothing runs, so nothing to stop."""


class Meter:
    """Statements and commits an engine sends, and the time of each call measured."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statements = 0
        self.commits = 0
        self.calls: dict[str, list[tuple[float, int, int, float]]] = {}
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        sa.event.listen(engine, "commit", self._commit)
        hotpath.observers.append(self._hot_statement)  # sent beneath SQLAlchemy

    def close(self) -> None:
        hotpath.observers.remove(self._hot_statement)

    def _statement(self, conn: sa.Connection, *_: Any) -> None:
        self._hot_statement("", conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    def _hot_statement(self, sql: str, autocommit: bool) -> None:
        if sql == hotpath.SYNC:  # a held claim's pipeline commits: rides on a statement
            self.commits += 1
            return
        self.statements += 1
        if autocommit:
            self.commits += 1  # a statement in autocommit mode is a transaction of its own

    def _commit(self, *_: Any) -> None:
        self.commits += 1

    def time(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        s, c, t, cpu = self.statements, self.commits, time.perf_counter(), time.process_time()
        out = fn(*args)
        took, cpu = time.perf_counter() - t, time.process_time() - cpu
        self.calls.setdefault(name, []).append((took, self.statements - s, self.commits - c, cpu))
        return out

    def lines(self) -> list[str]:
        rows = [
            "| call | n | statements per call | commits per call | ms per call (median) "
            "| our CPU ms per call (mean) |"
        ]
        rows.append("|---|--:|--:|--:|--:|--:|")
        for name, calls in self.calls.items():
            n = len(calls)
            stm = sum(c[1] for c in calls) / n
            com = sum(c[2] for c in calls) / n
            ms = 1000 * statistics.median(c[0] for c in calls)
            cpu = 1000 * sum(c[3] for c in calls) / n
            rows.append(f"| {name} | {n} | {stm:.2f} | {com:.2f} | {ms:.2f} | {cpu:.2f} |")
        return rows


def drive(
    coordinator: Coordinator,
    sent: list[Dispatch],
    meter: Meter,
    workflow_id: str,
    executions: int = 1,
) -> None:
    """Start ``executions`` executions back to back, then run every task they dispatch, in
    order, as a worker would."""
    for _ in range(executions):
        meter.time("start", coordinator.start, workflow_id)
    while sent:
        d = sent.pop(0)
        hold = coordinator.may_hold(d.execution_id, d.task_id, d.digest)  # as a worker does
        claim = meter.time(
            "claim",
            partial(coordinator.claim, hold=hold, digest=d.digest),
            d.execution_id,
            d.task_id,
        )
        assert claim is not None, f"{d.task_id} could not be claimed"
        meter.time("succeeded", coordinator.succeeded, d.execution_id, d.task_id, None)


def _wal(admin: sa.Engine) -> int:
    """The server's WAL position in bytes."""
    with admin.connect() as conn:
        lsn = conn.exec_driver_sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").scalar_one()
        return int(lsn)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.store_cost", description=__doc__)
    p.add_argument("--tasks", type=int, default=500, help="tasks per shape (default 500)")
    p.add_argument(
        "--hold",
        type=float,
        default=CLAIM_HOLD_SECONDS,
        help=f"claim hold in seconds, as workers' FLOWQ_CLAIM_HOLD_SECONDS (default "
        f"{CLAIM_HOLD_SECONDS}); 0 commits each claim by itself",
    )
    args = p.parse_args(argv)
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"flowq_store_cost_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        store = Store(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
        store.upgrade()
        dispatcher = ListDispatcher()
        coordinator = Coordinator(store, dispatcher, hold=args.hold)
        cases = (
            (shapes.chain_def(args.tasks), 1),
            (shapes.fan_in_def(args.tasks), 1),
            # the bench's "100 x 20": executions of PER_EXECUTION independent tasks
            (shapes.ticks_def(PER_EXECUTION), max(1, args.tasks // PER_EXECUTION)),
        )
        for definition, executions in cases:
            wf = Workflow.from_dict(definition)
            coordinator.register(wf)
            warm = Meter(store.engine)
            drive(coordinator, dispatcher.sent, warm, wf.id, executions)  # warm caches
            warm.close()
            meter = Meter(store.engine)
            serving = partial(backends, admin, name)
            before, wal = {pid: process_cpu(pid) for pid in serving()}, _wal(admin)
            drive(coordinator, dispatcher.sent, meter, wf.id, executions)
            server = sum(process_cpu(pid) - before.get(pid, 0.0) for pid in serving())
            wal = _wal(admin) - wal
            meter.close()
            n = len(wf.task_ids) * executions
            print(f"\n{wf.id} x {executions} ({n} tasks)\n")
            print("\n".join(meter.lines()))
            print(
                f"\nPer task: Postgres backends' CPU {1000 * server / n:.3f} ms, "
                f"WAL {wal / n:.0f} bytes (the server's, whatever else it serves)"
            )
        coordinator.close()
        store.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
