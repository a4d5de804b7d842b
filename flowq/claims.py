"""A worker's claim of a task: held claims (``flowq.store.held``), redelivered messages, and
attempts lost with their process."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flowq import states as S
from flowq.definition import Workflow
from flowq.errors import NotFound
from flowq.execution import Claim, Definitions, Dispatch, Part, Step
from flowq.store import Tx, utcnow
from flowq.store.held import HeldClaim, Holder
from flowq.store.hotpath import CONNECTION_ERRORS, Meta

log = logging.getLogger("flowq.coordinator")


class Claims(Part):
    """The coordinator's claims (a base of ``flowq.coordinator.Coordinator``)."""

    if TYPE_CHECKING:  # the coordinator's, used here (and ``Part``'s)
        definitions: Definitions
        holder: Holder | None
        _held: dict[tuple[str, str], HeldClaim]
        _meta: OrderedDict[str, Meta]

        def _read_meta(self, tx: Tx, execution_id: str) -> tuple[Meta, str]: ...
        def _remember(self, execution_id: str, meta: Meta) -> None: ...
        def _lose(self, step: Step, task_id: str, reason: str) -> bool: ...

    def claim(
        self,
        execution_id: str,
        task_id: str,
        *,
        celery_id: str | None = None,
        worker: str | None = None,
        digest: str | None = None,
        hold: bool = False,
    ) -> Claim | None:
        """Mark a task running if it may start now; None if it may not (paused, duplicate...).

        ``digest`` (from the task's message) names the definition, so that a worker seeing an
        execution for the first time needs no read before its claim. ``hold``: the claim may
        stay uncommitted until the task succeeds (``Coordinator.__init__``); only for a task that
        ``may_hold`` allows, which the caller checked. The worker asks for it except for a
        redelivered message, whose earlier run may have died with its claim.

        The same message seen again while its task is `running` means the process running it
        died (Celery redelivers it: acks_late + reject_on_worker_lost): that attempt is lost,
        and the task runs again while attempts remain.
        """

        def queued(tx: Tx) -> Claim | None:
            # the hot path: a queued task of a running execution, one statement on Postgres
            meta = self._meta.get(execution_id)
            if meta is None and digest is None:  # no digest in the message: read the execution
                try:
                    meta = self._read_meta(tx, execution_id)[0]
                except NotFound:
                    return None
            wf = self.definitions.get(meta.digest if meta is not None else str(digest), tx)
            got = tx.claim_queued(
                execution_id,
                task_id,
                self.definitions.results_for(wf, task_id),
                celery_id=celery_id,
                worker=worker,
                with_meta=meta is None,
            )
            if got is None:
                return None
            results = got.results
            if got.meta is not None:  # first sight of the execution: its fields came along
                meta = got.meta
                self._remember(execution_id, meta)
                if meta.digest != wf.digest():  # the message named another definition
                    wf = self.definitions.get(meta.digest, tx)
                    results = tx.results(execution_id, self.definitions.results_for(wf, task_id))
            assert meta is not None
            # a copy: the cached vars must not see what a handler does to its own
            vars_copy = copy.deepcopy(meta.vars)
            task = wf.task(task_id)
            last = got.remaining == 1
            return Claim(wf, task, vars_copy, results, got.attempt, execution_id, last=last)

        began = utcnow()  # when the attempt started, whatever connecting costs below
        if hold and self.holder is not None:
            try:
                leaf = self._leaf(execution_id, task_id, digest)
                got = self.holder.claim(
                    queued, execution_id, task_id, began, celery_id, worker, leaf=leaf
                )
            except CONNECTION_ERRORS as exc:
                log.warning("could not hold the claim of %s/%s: %s", execution_id, task_id, exc)
                got = None  # rolled back with its connection: claim the usual way below
            if got is not None:
                got[1].last = got[0].last
                self._held[(execution_id, task_id)] = got[1]
                return dataclasses.replace(got[0], held=True)
        claim = self.store.transact(queued, single=True, now=began)
        if claim is not None:
            return claim

        def body(tx: Tx) -> tuple[Claim | None, list[Dispatch]]:
            values: dict[str, Any] = {
                "started_at": tx.now,
                "celery_id": celery_id,
                "worker": worker,
            }
            attempt = tx.claim(execution_id, task_id, S.QUEUED, **values)
            if attempt is None:
                attempt = tx.claim(execution_id, task_id, S.RETRYING, **values)
            if attempt is None:
                requeued, dispatches = self._redelivered(tx, execution_id, task_id, celery_id)
                if not requeued:
                    return None, dispatches
                attempt = tx.claim(execution_id, task_id, S.QUEUED, **values)
                if attempt is None:
                    return None, []
            step = self._step(tx, execution_id, fresh=False)
            results = tx.results(execution_id, self.definitions.results_for(step.wf, task_id))
            task = step.wf.task(task_id)
            # a copy: the cached vars must not see what a handler does to its own
            vars_copy = copy.deepcopy(step.vars)
            return Claim(step.wf, task, vars_copy, results, attempt, execution_id), []

        claim, dispatches = self.store.transact(body, now=began)
        self._send(dispatches)
        return claim

    def may_hold(self, execution_id: str, task_id: str, digest: str | None) -> bool:
        """A claim is held only where its success can be the single statement that commits
        it: successors under ``all_success`` without ``when``, and no timeout short enough
        for a hard time limit to kill the attempt before the timer commits its claim."""
        if self.holder is None:
            return False
        wf = self._known_definition(execution_id, digest)
        if wf is None:
            return False
        timeout = wf.task(task_id).timeout
        if timeout is not None and timeout < 10 * self.holder.hold:
            return False
        return self.definitions.plain_successors(wf, task_id)

    def _known_definition(self, execution_id: str, digest: str | None) -> Workflow | None:
        """The execution's definition, by its fields in memory or else the message's digest;
        None if neither is known."""
        meta = self._meta.get(execution_id)
        known = meta.digest if meta is not None else digest
        return None if known is None else self.definitions.get(known)

    def _leaf(self, execution_id: str, task_id: str, digest: str | None) -> bool:
        """The task has no successors (its success may join a commit batch), as far as the
        definitions in memory tell."""
        wf = self._known_definition(execution_id, digest)
        return wf is not None and not wf.successors(task_id)

    @staticmethod
    def _claim_again(
        tx: Tx,
        execution_id: str,
        task_id: str,
        *,
        started: datetime,
        celery_id: str | None,
        worker: str | None,
        attempt: int | None = None,
    ) -> int | None:
        """Make a held claim that was rolled back again (queued -> running): its attempt ran.

        The attempt number; None if the task is no longer queued (cancelled meanwhile, or
        the claim was committed after all): an end that follows then finds it not running
        and is recorded as a late one. ``attempt``: only if that is the attempt it makes.
        """
        return tx.claim(
            execution_id,
            task_id,
            S.QUEUED,
            attempts=None if attempt is None else attempt - 1,
            started_at=started,
            celery_id=celery_id,
            worker=worker,
        )

    def _claim_lost(self, tx: Tx, execution_id: str, task_id: str, lost: HeldClaim) -> None:
        """``_claim_again`` for a held claim lost with its end statement or connection."""
        self._claim_again(
            tx,
            execution_id,
            task_id,
            started=lost.began,
            celery_id=lost.celery_id,
            worker=lost.worker,
        )

    def _settle_held(self, execution_id: str, task_id: str) -> HeldClaim | None:
        """Commit a task's held claim, if any, before its failure or retry is recorded; the
        claim if it was lost instead (it is then made again in that transaction)."""
        held = self._release(execution_id, task_id)
        if held is None:
            return None
        held.settle()
        return held if held.lost else None

    def commit_held(self, execution_id: str, task_id: str) -> None:
        """Commit a held claim now (the worker could not mark it; see ``record_lost_claim``)."""
        held = self._held.get((execution_id, task_id))
        if held is not None:
            held.settle()

    def drop_held(self, execution_id: str, task_id: str) -> None:
        """Roll a held claim back: its attempt number belongs to an attempt that died
        uncounted (``record_lost_claim`` records it, then the task is claimed again)."""
        held = self._release(execution_id, task_id)
        if held is not None:
            assert self.holder is not None
            self.holder.abandon(held)

    def record_lost_claim(
        self,
        execution_id: str,
        task_id: str,
        *,
        started: datetime,
        celery_id: str | None,
        worker: str | None,
        attempt: int,
    ) -> bool:
        """Record attempt ``attempt``, which died with its held claim still uncommitted.

        The worker marks each held claim outside the store (``workers.markers``); a mark
        left for the attempt the task would make next means that attempt ran, and its
        process died within the hold. If the task is still `queued` with ``attempt - 1``
        attempts counted, the lost attempt is recorded as it happened (queued -> running at
        ``started``, then running -> queued, or failed when it was the last attempt). True if
        it was recorded; False if the task moved on (a live holder of the claim committed it
        meanwhile: this waited on its row lock), which makes the call safe whenever a mark is
        found.
        """

        def body(tx: Tx) -> tuple[bool, list[Dispatch]]:
            got = self._claim_again(
                tx,
                execution_id,
                task_id,
                started=started,
                celery_id=celery_id,
                worker=worker,
                attempt=attempt,
            )
            if got is None:
                return False, []
            step = self._step(tx, execution_id)
            reason = f"worker process lost during attempt {attempt}, before its claim was committed"
            self._lose(step, task_id, reason)
            return True, step.dispatch

        recorded, dispatches = self.store.transact(body)
        self._send(dispatches)
        return recorded

    def end_later(self, execution_id: str, task_id: str, end: Callable[[], None]) -> bool:
        """Run ``end`` (the task's success: ``succeeded`` and what follows its commit) on the
        finisher thread when the task's claim is held here; False, with nothing done, if it is
        not: the caller runs ``end`` itself.

        The calling pool process then goes on (Celery acknowledges the message, the next one
        comes) while the commit waits for its WAL flush; its next claim waits for ``end``,
        and so does a pool process exiting (``close``). A process killed before ``end`` has
        sent its commit leaves the task `queued` with its claim's mark: the reconciler's
        republish (``FLOWQ_REDISPATCH_SECONDS``) runs it again and the attempt is counted.
        """
        held = self._held.get((execution_id, task_id))
        if held is None or self.holder is None:
            return False
        self.holder.hand_off(held, end)
        return True

    def _release(self, execution_id: str, task_id: str) -> HeldClaim | None:
        """Stop holding a task's claim; the caller commits it or ends the task with it."""
        return self._held.pop((execution_id, task_id), None)

    def _redelivered(
        self, tx: Tx, execution_id: str, task_id: str, celery_id: str | None
    ) -> tuple[bool, list[Dispatch]]:
        """A message found its task `running` under the same message id: the process running
        it died and Celery delivered it again. Requeue the task (True) or fail it."""
        if celery_id is None:
            return False, []
        row = tx.task(execution_id, task_id)
        if row is None or row.state != S.RUNNING or row.celery_id != celery_id:
            return False, []
        step = self._step(tx, execution_id)
        if step.state != S.RUNNING:
            return False, []
        reason = f"worker process lost during attempt {row.attempts}; message redelivered"
        return self._lose(step, task_id, reason), step.dispatch
