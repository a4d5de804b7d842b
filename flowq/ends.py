"""A task's end, as a worker's Celery signals report it: its success (one statement on
Postgres, ``Ends._succeed_fast``, or the transactional end), its failure, a retry to come."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flowq import rules
from flowq import states as S
from flowq.definition import Workflow
from flowq.execution import Definitions, Dispatch, Part, Step
from flowq.store import Tx, hotpath
from flowq.store.held import HeldClaim, Holder
from flowq.store.hotpath import CONNECTION_ERRORS, Ended, Meta

log = logging.getLogger("flowq.coordinator")


class Ends(Part):
    """The coordinator's task ends (a base of ``flowq.coordinator.Coordinator``)."""

    if TYPE_CHECKING:  # the coordinator's and its claims', used here (and ``Part``'s)
        definitions: Definitions
        holder: Holder | None
        _held: dict[tuple[str, str], HeldClaim]
        _meta: dict[str, Meta]

        def _release(self, execution_id: str, task_id: str) -> HeldClaim | None: ...
        def _settle_held(self, execution_id: str, task_id: str) -> HeldClaim | None: ...
        def _claim_lost(self, tx: Tx, execution_id: str, task_id: str, lost: HeldClaim) -> None: ...
        @staticmethod
        def _dispatch(
            wf: Workflow, eid: str, version: int, priority: int, task_id: str
        ) -> Dispatch: ...

    def succeeded(self, execution_id: str, task_id: str, result: Any) -> bool:
        """Record a task's result and dispatch what became ready; False if it was not running."""
        held = self._release(execution_id, task_id)
        try:
            if self._succeed_fast(execution_id, task_id, result, held):
                return True
        except CONNECTION_ERRORS as exc:
            if held is None:
                raise
            log.warning("held claim of %s/%s: %s", execution_id, task_id, exc)
        # the transactional end; a held claim that went with a handed-back statement or a
        # failed connection is made again in it
        reclaim = held if held is not None and held.lost else None
        values = {"result": result, "error": None}
        return self._ended(execution_id, task_id, S.SUCCEEDED, values, reclaim=reclaim)

    def succeed_later(
        self, execution_id: str, task_id: str, result: Any, then: Callable[[], None]
    ) -> bool:
        """Record the success of a task without successors whose claim is held here: its
        statement and commit are sent now, its result read later (``Holder.finish_later``),
        and then ``then`` runs. False, with nothing done, for any other task: the caller ends
        it (``end_later``, ``succeeded``).

        Nothing is dispatched after such a success, so nothing waits for its result: the
        pool process takes its next message without a thread hand-off or a read of its own.
        With commit batches (the holder's ``batch`` > 0) the success joins its connection's
        batch, committed with the next ones (``Holder.finish_batched``); else its commit is
        sent at once. A success handed back (the execution's last task where another one
        failed, say), in a batch rolled back, or lost with its connection takes the
        transactional end when its result is read.
        """
        held = self._held.get((execution_id, task_id))
        meta = self._meta.get(execution_id)
        if held is None or self.holder is None or meta is None:
            return False
        if self.definitions.get(meta.digest).successors(task_id):
            return False
        self._release(execution_id, task_id)

        def after(done: object | None, error: BaseException | None) -> None:
            if done is None:
                if error is not None:
                    log.warning("success of %s/%s: %s", execution_id, task_id, error)
                reclaim = held if held.lost else None
                values = {"result": result, "error": None}
                self._ended(execution_id, task_id, S.SUCCEEDED, values, reclaim=reclaim)
            then()

        try:
            if self.holder.batch > 0:  # into the connection's commit batch
                self.holder.finish_batched(
                    held,
                    lambda tx, claiming: tx.send_succeed_leaf(
                        execution_id, task_id, result, claiming
                    ),
                    after,
                )
            else:
                self.holder.finish_later(
                    held,
                    lambda tx, claiming: tx.send_succeed_fast(
                        execution_id, task_id, result, claiming
                    ),
                    hotpath.succeeded_of,
                    after,
                )
        except CONNECTION_ERRORS as exc:
            after(None, exc)
        return True

    def failed(self, execution_id: str, task_id: str, error: str) -> bool:
        """Record a task that failed for good; False if it was not running."""
        reclaim = self._settle_held(execution_id, task_id)
        return self._ended(execution_id, task_id, S.FAILED, {"error": error}, reclaim=reclaim)

    def _succeed_fast(
        self, execution_id: str, task_id: str, result: Any, held: HeldClaim | None = None
    ) -> bool:
        """Postgres: a success as one autocommit statement, when nothing in it needs Python.

        False, with nothing written, sends the caller down the transactional end: the
        execution's fields are not in memory, a successor has another rule or a ``when``, the
        task is not running, or the statement handed the case back (a successor to skip, the
        execution's last task). ``held``: the statement commits that held claim with it.
        """
        meta = self._meta.get(execution_id)
        if meta is None or self.store.is_sqlite:
            if held is not None:
                held.settle()
            return False
        wf = self.definitions.get(meta.digest)
        successors = wf.successors(task_id)
        if held is not None:
            assert self.holder is not None
            done = self.holder.finish(
                held,
                lambda tx, commit, claiming: tx.succeed_fast(
                    execution_id, task_id, successors, result, commit, claiming
                ),
            )
        elif not self.definitions.plain_successors(wf, task_id):
            return False
        else:
            done = self.store.transact(
                lambda tx: tx.succeed_fast(execution_id, task_id, successors, result),
                single=True,
            )
        if done is None:
            return False
        if done.queued and done.execution_state == S.RUNNING:
            queued = set(done.queued)
            self._send(
                [
                    self._dispatch(wf, execution_id, meta.version, meta.priority, succ)
                    for succ in successors
                    if succ in queued
                ]
            )
        return True

    def _ended(
        self,
        execution_id: str,
        task_id: str,
        to: str,
        values: dict[str, Any],
        *,
        reclaim: HeldClaim | None = None,
    ) -> bool:
        """The transactional end. ``reclaim``: a held claim that was rolled back; it is made
        again (queued -> running) in the same transaction."""

        def body(tx: Tx) -> tuple[bool, list[Dispatch]]:
            if reclaim is not None:
                self._claim_lost(tx, execution_id, task_id, reclaim)
            step = self._step(tx, execution_id, fresh=False)
            reason = values.get("error") if to == S.FAILED else None
            successors = step.wf.successors(task_id)
            ended = tx.end_task(
                execution_id,
                task_id,
                to,
                reason,
                successors,
                result=values.get("result"),
                error=values.get("error"),
            )
            if ended is None:
                row = tx.task(execution_id, task_id)
                now = row.state if row is not None else "unknown"
                # A note, not a transition: `from` equals `to`.
                tx.record(execution_id, task_id, now, now, f"late {to} ignored: task is {now}")
                log.info("ignored %s of %s/%s: it is %s", to, execution_id, task_id, now)
                return False, []
            step.state = ended.execution_state
            self._advance(step, f"{task_id} {to}", successors, ended)
            return True, step.dispatch

        ok, dispatches = self.store.transact(body)
        self._send(dispatches)
        return ok

    @staticmethod
    def _decide(wf: Workflow, task_id: str, row: Any) -> str:
        """The trigger rule's decision for a task from its counters; wait unless it is pending."""
        if row is None or row.state != S.PENDING:
            return rules.WAIT
        return rules.decide(
            wf.task(task_id).trigger_rule,
            row.deps_total,
            row.deps_remaining,
            row.deps_succeeded,
            row.deps_failed,
            row.deps_skipped,
        )

    def _advance(self, step: Step, because: str, order: Sequence[str], ended: Ended) -> None:
        """Act on the successors a task's end decided, then settle whatever that cascaded."""
        ready: list[str] = []
        counters = {c.task_id: c for c in ended.successors}
        for succ in order:
            decision = self._decide(step.wf, succ, counters.get(succ))
            if decision == rules.RUN and not step.wf.task(succ).when:
                ready.append(succ)  # queued together below
            elif decision != rules.WAIT:
                self._act(step, succ, decision, because)
        if ready:
            queued = step.tx.queue_pending(step.execution_id, ready, because)
            if step.state == S.RUNNING:
                step.dispatch.extend(self._dispatch_of(step, tid) for tid in queued)
        if step.settled:
            self._propagate(step)
            self._settle(step)  # counts only what cascaded: the ended task is counted already
        elif ended.remaining == 0 and step.state == S.RUNNING:
            self._finish(step)

    def retrying(self, execution_id: str, task_id: str, error: str, countdown: float) -> bool:
        """Record that a failed attempt will be retried after ``countdown`` seconds."""
        lost = self._settle_held(execution_id, task_id)
        reason = f"{error}; retrying in {countdown:.2f}s"
        due = timedelta(seconds=countdown)

        def body(tx: Tx) -> bool:
            if lost is not None:
                self._claim_lost(tx, execution_id, task_id, lost)
            return tx.cas_task(
                execution_id,
                task_id,
                S.RUNNING,
                S.RETRYING,
                reason,
                error=error,
                queued_at=tx.now + due,
            )

        return self.store.transact(body)
