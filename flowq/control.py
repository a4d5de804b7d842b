"""Control of a whole execution: pause, resume, cancel, retry."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError as KombuOperationalError

from flowq import rules
from flowq import states as S
from flowq.errors import InvalidTransition
from flowq.execution import Dispatch, Dispatcher, Part, Step
from flowq.store import Tx
from flowq.store import tables as t

log = logging.getLogger("flowq.coordinator")
# what publishing (or a revoke) raises when the broker does not answer
BROKER_ERRORS = (KombuOperationalError,)


def _cancel_task(tx: Tx, execution_id: str, row: Any) -> Any | None:
    """Cancel one task as the cancel read it, or as it became meanwhile; the row cancelled
    (its state before), or None if it had ended.

    A compare-and-set that misses means the row moved after it was read: a claim held open
    (``flowq.store.held``) read `queued` commits while the cancel waits on its row lock, and
    the task is `running` now, to be cancelled and revoked as such.
    """
    for _ in range(len(S.TASK_STATES)):  # each miss is a move forward: bounded
        if row is None or row.state in S.TASK_TERMINAL:
            return None
        if tx.cas_task(
            execution_id, row.task_id, row.state, S.CANCELLED, "execution cancelled",
            finished_at=tx.now,
        ):  # fmt: skip
            return row
        row = tx.task(execution_id, row.task_id)
    raise RuntimeError(f"task {row.task_id} of {execution_id} kept changing under a cancel")


class Control(Part):
    """The coordinator's control of executions (a base of ``flowq.coordinator.Coordinator``)."""

    if TYPE_CHECKING:  # the coordinator's, used here (and ``Part``'s)
        dispatcher: Dispatcher

    def pause(self, execution_id: str) -> None:
        """Stop starting tasks; running ones finish and keep their results."""
        self.store.transact(
            lambda tx: self._control(tx, execution_id, "pause", "paused by request")
        )

    def resume(self, execution_id: str) -> None:
        """Continue a paused execution where it stopped."""

        def body(tx: Tx) -> list[Dispatch]:
            self._control(tx, execution_id, "resume", "resumed")
            step = self._step(tx, execution_id)
            waiting = tx.task_ids_in(execution_id, [S.QUEUED, S.RETRYING])
            if not waiting and tx.execution(execution_id).tasks_remaining == 0:
                self._finish(step)
            return [self._dispatch_of(step, tid) for tid in waiting]

        self._send(self.store.transact(body))

    def cancel(self, execution_id: str) -> None:
        """End the execution: revoke running tasks, start nothing more."""

        def body(tx: Tx) -> list[str]:
            self._control(tx, execution_id, "cancel", "cancelled by request")
            revoke: list[str] = []
            settled = 0
            for row in tx.tasks(execution_id):
                cancelled = _cancel_task(tx, execution_id, row)
                if cancelled is not None:
                    settled += 1
                    if cancelled.state == S.RUNNING and cancelled.celery_id:
                        revoke.append(cancelled.celery_id)
            tx.settle_count(execution_id, settled)
            return revoke

        revoke = self.store.transact(body)
        if revoke:
            try:
                self.dispatcher.revoke(revoke)
            except BROKER_ERRORS as exc:  # the cancel stands: the tasks' ends will be ignored
                log.warning(
                    "execution %s is cancelled, but its %d running task(s) could not be "
                    "revoked (%s): they run to their end, which is ignored",
                    execution_id,
                    len(revoke),
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )

    def retry(self, execution_id: str) -> None:
        """Run a failed execution again: its failed and never-run tasks; keep succeeded ones."""

        def body(tx: Tx) -> list[Dispatch]:
            self._control(tx, execution_id, "retry", "retried by request", error=None)
            step = self._step(tx, execution_id)
            return self._reset_for_retry(step)

        self._send(self.store.transact(body))

    def _reset_for_retry(self, step: Step) -> list[Dispatch]:
        tx, eid, wf = step.tx, step.execution_id, step.wf
        rows = {r.task_id: r for r in tx.tasks(eid)}
        reset: set[str] = set()
        for tid in wf.task_ids:  # definition order is not topological: close over descendants
            if rows[tid].state != S.SUCCEEDED and rows[tid].state != S.SKIPPED:
                reset.add(tid)
        todo = list(reset)
        while todo:
            for succ in wf.successors(todo.pop()):
                if succ not in reset and rows[succ].state == S.SKIPPED:
                    reset.add(succ)
                    todo.append(succ)
        for tid in wf.task_ids:
            if tid not in reset:
                continue
            deps = wf.deps(tid)
            counters: dict[str, Any] = {
                "deps_remaining": sum(1 for d in deps if d in reset),
                "deps_succeeded": sum(
                    1 for d in deps if d not in reset and rows[d].state == S.SUCCEEDED
                ),
                "deps_skipped": sum(
                    1 for d in deps if d not in reset and rows[d].state == S.SKIPPED
                ),
                "deps_failed": 0,
            }
            if rows[tid].state == S.PENDING:
                tx.conn.execute(
                    t.task_runs.update()
                    .where(t.task_runs.c.execution_id == eid, t.task_runs.c.task_id == tid)
                    .values(**counters)
                )
            else:
                tx.cas_task(
                    eid,
                    tid,
                    rows[tid].state,
                    S.PENDING,
                    "execution retried",
                    error=None,
                    result=None,
                    finished_at=None,
                    **counters,
                )
        tx.conn.execute(
            t.executions.update().where(t.executions.c.id == eid).values(tasks_remaining=len(reset))
        )
        for tid in wf.task_ids:
            if tid in reset and not any(d in reset for d in wf.deps(tid)):
                row = tx.task(eid, tid)
                assert row is not None
                decision = rules.decide(
                    wf.task(tid).trigger_rule,
                    row.deps_total,
                    0,
                    row.deps_succeeded,
                    0,
                    row.deps_skipped,
                )
                self._act(step, tid, decision, "execution retried")
        self._propagate(step)
        self._settle(step)
        return step.dispatch

    @staticmethod
    def _control(tx: Tx, execution_id: str, action: str, reason: str, **values: Any) -> str:
        """Apply a control request as a compare-and-set; return the state it moved from.

        A compare-and-set that misses means another request or a task's end moved the
        execution after it was read (Postgres: each statement reads what is committed when it
        starts): the request is judged again from the state it moved to, so a cancel racing a
        resume cancels the running execution rather than being refused.
        """
        for _ in range(len(S.EXECUTION_STATES)):  # each miss is another committed move
            current = str(tx.execution(execution_id).state)
            target = S.check_control(execution_id, current, action)  # refused: InvalidTransition
            if tx.cas_execution(execution_id, current, target, reason, **values):
                return current
        now = tx.execution(execution_id).state
        raise InvalidTransition("execution", execution_id, now, target, action)
