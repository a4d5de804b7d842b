"""The coordinator: start executions, advance them as tasks end, pause/resume/cancel/retry.

Claims live in ``flowq.claims``, task ends in ``flowq.ends``, control of whole executions
in ``flowq.control``, and what they share (messages, claims, the step of a transaction) in
``flowq.execution``.

Every method is one store transaction made of compare-and-set updates; messages for the tasks
that became ready are handed to the dispatcher only after that transaction commits. Each message
carries one task, so no message grows with the workflow. Fan-ins are driven by per-task
dependency counters in the store: the transaction that counts the last upstream end decides.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flowq import rules
from flowq import states as S
from flowq.claims import Claims
from flowq.control import BROKER_ERRORS, Control
from flowq.definition import Workflow
from flowq.ends import Ends
from flowq.errors import FlowqError, ValidationError
from flowq.execution import Claim, Definitions, Dispatch, Dispatcher, Started, Step
from flowq.problems import json_problems
from flowq.store import Store, Tx
from flowq.store import tables as t
from flowq.store.held import HeldClaim, Holder
from flowq.store.hotpath import Meta
from flowq.task_types import ID_MAX
from flowq.templates import evaluate

__all__ = ["Claim", "Coordinator", "Dispatch", "Dispatcher", "Started"]

log = logging.getLogger("flowq.coordinator")

DEFAULT_PRIORITY = 5
META_CACHE_SIZE = 4096  # executions whose fixed fields a process keeps in memory
LOST_TYPE = "WorkerLostError"  # the error of an attempt lost with its worker (Celery's name)


class Coordinator(Claims, Ends, Control):
    """Drives executions through their states; shared by the client, the CLI and the workers."""

    def __init__(
        self, store: Store, dispatcher: Dispatcher, *, hold: float = 0.0, batch: float = 0.0
    ) -> None:
        """``hold``: seconds a worker's claim may stay uncommitted, to be committed with its
        task's success (Postgres; ``flowq.store.held``); 0 commits every claim at once.
        ``batch``: seconds the successes of tasks without successors may wait to be committed
        together (a commit batch, at most ``hold``); 0 commits each by itself."""
        self.store = store
        self.dispatcher = dispatcher
        self.definitions = Definitions(store)
        self.holder = Holder(store, hold, batch) if hold > 0 and not store.is_sqlite else None
        self._held: dict[tuple[str, str], HeldClaim] = {}
        self._meta: OrderedDict[str, Meta] = OrderedDict()
        self._meta_lock = threading.Lock()
        # (workflow id, version asked) -> (version, digest) last found: the start's guess,
        # checked by the start statement itself
        self._found: dict[tuple[str, int | None], tuple[int, str]] = {}

    def close(self) -> None:
        """Release the connections of held claims (the store's own are the store's)."""
        if self.holder is not None:
            self.holder.close()

    # -- definitions ---------------------------------------------------------------------------
    def register(self, wf: Workflow, *, replace: bool = False) -> bool:
        """Store a definition; True if it was new or changed."""
        self.definitions.add(wf)
        return self.store.transact(
            lambda tx: tx.put_definition(
                wf.id, wf.version, wf.digest(), wf.name, wf.to_dict(), replace
            )
        )

    def definition(self, workflow_id: str, version: int | None = None) -> Workflow:
        """A registered definition, the newest version by default."""

        def body(tx: Tx) -> Workflow:
            _, digest = tx.definition_digest(workflow_id, version)
            return self.definitions.get(digest, tx)

        return self.store.read(body)

    # -- start ---------------------------------------------------------------------------------
    def start(
        self,
        workflow_id: str,
        *,
        vars: Mapping[str, Any] | None = None,
        version: int | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> Started:
        """Create an execution of a registered workflow and dispatch its first tasks."""
        if priority is not None and not (isinstance(priority, int) and 0 <= priority <= 9):
            raise ValidationError(f"priority: must be an integer from 0 to 9, got {priority!r}")
        if vars is not None and not isinstance(vars, Mapping):
            raise ValidationError(f"vars: must be a mapping (got {type(vars).__name__})")
        values = dict(vars or {})
        problems = json_problems(values)
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            problems.append(
                f"idempotency_key: must be a string (got {type(idempotency_key).__name__})"
            )
        elif idempotency_key is not None:
            problems += json_problems(idempotency_key, where="idempotency_key")
            if not 1 <= len(idempotency_key) <= ID_MAX:
                problems.append(
                    f"idempotency_key: must be 1 to {ID_MAX} characters long "
                    f"(got {len(idempotency_key)})"
                )
        if problems:
            raise ValidationError(problems)
        quick = self._start_quick(workflow_id, values, version, priority, idempotency_key)
        if quick is not None:
            self._send(quick[1])
            return quick[0]

        def body(tx: Tx) -> tuple[Started, list[Dispatch]]:
            if idempotency_key is not None:
                found = tx.find_idempotent(workflow_id, idempotency_key)
                if found is not None:
                    return Started(found, False), []
            ver, digest = tx.definition_digest(workflow_id, version)
            self._found[workflow_id, version] = (ver, digest)
            wf = self.definitions.get(digest, tx)
            filled = wf.apply_defaults(values)
            wf.validate_vars(filled)
            return self._create(tx, wf, ver, digest, filled, priority, idempotency_key)

        try:
            started, dispatches = self.store.transact(body)
        except sa_exc.IntegrityError:
            if idempotency_key is None:
                raise
            found = self.store.read(lambda tx: tx.find_idempotent(workflow_id, idempotency_key))
            if found is None:
                raise
            return Started(found, False)
        self._send(dispatches)
        return started

    def _start_quick(
        self,
        workflow_id: str,
        values: dict[str, Any],
        version: int | None,
        priority: int | None,
        idempotency_key: str | None,
    ) -> tuple[Started, list[Dispatch]] | None:
        """Postgres: start with one statement, from the definition this process found last.

        None when that cannot be done (SQLite, no definition found yet, a root with `when`, a
        newer definition, an idempotency key used before): the transactional start then runs.
        """
        found = self._found.get((workflow_id, version))
        if self.store.is_sqlite or found is None:
            return None
        ver, digest = found
        wf = self.definitions.get(digest)
        roots = wf.roots()
        if any(wf.task(r).when for r in roots):
            return None
        filled = wf.apply_defaults(values)
        wf.validate_vars(filled)
        eid = str(uuid.uuid4())
        prio = DEFAULT_PRIORITY if priority is None else priority
        execution = {
            "id": eid,
            "workflow_id": wf.id,
            "version": ver,
            "digest": digest,
            "vars": filled,
            "priority": prio,
            "idempotency_key": idempotency_key,
        }
        history: list[tuple[str | None, str | None, str, str]] = [
            (None, None, S.CREATED, "started"),
            (None, S.CREATED, S.RUNNING, "dispatched"),
            *((r, S.PENDING, S.QUEUED, "root task") for r in roots),
        ]
        deps = [(tid, len(wf.deps(tid))) for tid in wf.task_ids]
        started = self.store.transact(
            lambda tx: tx.start_execution(execution, deps, history, newest=version is None),
            single=True,
        )
        if not started:
            self._found.pop((workflow_id, version), None)
            return None
        self._remember(eid, Meta(digest, ver, prio, filled))
        return Started(eid, True), [self._dispatch(wf, eid, ver, prio, r) for r in roots]

    def _create(
        self,
        tx: Tx,
        wf: Workflow,
        version: int,
        digest: str,
        values: dict[str, Any],
        priority: int | None,
        idempotency_key: str | None,
    ) -> tuple[Started, list[Dispatch]]:
        eid = str(uuid.uuid4())
        n = len(wf.task_ids)
        prio = DEFAULT_PRIORITY if priority is None else priority
        # Inserted as running (nothing can observe `created` in between), with both transitions
        # in the history; roots without `when` are inserted queued, the others decided below.
        tx.insert_execution(
            {
                "id": eid,
                "workflow_id": wf.id,
                "version": version,
                "digest": digest,
                "state": S.RUNNING,
                "vars": values,
                "priority": prio,
                "idempotency_key": idempotency_key,
                "tasks_total": n,
                "tasks_remaining": n,
            }
        )
        tx.record(eid, None, None, S.CREATED, "started")
        tx.record(eid, None, S.CREATED, S.RUNNING, "dispatched")
        roots = wf.roots()
        queued = [r for r in roots if not wf.task(r).when]
        now_queued = set(queued)
        tx.insert_tasks(
            [
                {
                    "execution_id": eid,
                    "task_id": tid,
                    "position": i,
                    "deps_total": len(wf.deps(tid)),
                    "deps_remaining": len(wf.deps(tid)),
                    "state": S.QUEUED if tid in now_queued else S.PENDING,
                    "queued_at": tx.now if tid in now_queued else None,
                }
                for i, tid in enumerate(wf.task_ids)
            ]
        )
        step = Step(tx, eid, wf, version, prio, S.RUNNING, values)
        for root in queued:
            tx.record(eid, root, S.PENDING, S.QUEUED, "root task")
            step.dispatch.append(self._dispatch_of(step, root))
        for root in roots:
            if root not in now_queued:
                self._act(step, root, rules.RUN, "root task")
        self._propagate(step)
        self._settle(step)
        return Started(eid, True), step.dispatch

    # -- advancing -----------------------------------------------------------------------------
    def _step(self, tx: Tx, execution_id: str, *, fresh: bool = True) -> Step:
        """The execution's context; with ``fresh=False`` its fixed fields may come from memory.

        An execution's workflow, version, priority and vars never change, so the hot path
        (a task ending) reuses them and does not read the row; its state then stays unknown.
        """
        meta = None if fresh else self._meta.get(execution_id)
        state: str | None = None
        if meta is None:
            meta, state = self._read_meta(tx, execution_id)
        wf = self.definitions.get(meta.digest, tx)
        return Step(tx, execution_id, wf, meta.version, meta.priority, state, meta.vars)

    def _read_meta(self, tx: Tx, execution_id: str) -> tuple[Meta, str]:
        """Read the execution's fixed fields (and remember them) and its current state."""
        row = tx.execution(execution_id)
        meta = Meta.of(row)
        self._remember(execution_id, meta)
        return meta, str(row.state)

    def _remember(self, execution_id: str, meta: Meta) -> None:
        with self._meta_lock:
            self._meta[execution_id] = meta
            self._meta.move_to_end(execution_id)
            while len(self._meta) > META_CACHE_SIZE:
                self._meta.popitem(last=False)

    def _dispatch_of(self, step: Step, task_id: str) -> Dispatch:
        return self._dispatch(step.wf, step.execution_id, step.version, step.priority, task_id)

    @staticmethod
    def _dispatch(wf: Workflow, eid: str, version: int, priority: int, task_id: str) -> Dispatch:
        task = wf.task(task_id)
        prio = task.priority if task.priority is not None else priority
        return Dispatch(eid, task_id, wf.id, version, wf.digest(), prio, task.queue, task.timeout)

    def _act(self, step: Step, task_id: str, decision: str, reason: str) -> None:
        """Carry out a trigger-rule decision for a pending task."""
        tx, eid = step.tx, step.execution_id
        task = step.wf.task(task_id)
        if decision == rules.RUN and task.when:
            try:
                ok = evaluate(task.when, self._template_context(step, task_id))
            except FlowqError as exc:
                if tx.cas_task(
                    eid, task_id, S.PENDING, S.FAILED, str(exc), error=str(exc), finished_at=tx.now
                ):
                    step.settled.append((task_id, S.FAILED))
                return
            if not ok:
                decision, reason = rules.SKIP, f"when is false: {task.when}"
        if decision == rules.RUN:
            queued = tx.cas_task(eid, task_id, S.PENDING, S.QUEUED, reason, queued_at=tx.now)
            if queued and step.state in (S.RUNNING, None):
                # When the state was not read, publish anyway: a paused or cancelled
                # execution refuses the claim, and resume publishes queued tasks again.
                step.dispatch.append(self._dispatch_of(step, task_id))
            return
        to = S.SKIPPED if decision == rules.SKIP else S.UPSTREAM_FAILED
        if tx.cas_task(eid, task_id, S.PENDING, to, reason, finished_at=tx.now):
            step.settled.append((task_id, to))

    def _template_context(self, step: Step, task_id: str) -> dict[str, Any]:
        named = step.wf.results_needed(task_id)
        ids = self.definitions.ancestors(step.wf, task_id) if named is None else named
        results = step.tx.results(step.execution_id, ids)
        return {"vars": step.vars, "results": results, "execution_id": step.execution_id}

    def _propagate(self, step: Step) -> None:
        """Count each settled task against its successors and act on those now decided."""
        while step.settled:
            task_id, state = step.settled.popleft()
            step.settled_count += 1
            for succ in step.wf.successors(task_id):
                row = step.tx.count_upstream_end(step.execution_id, succ, state)
                decision = self._decide(step.wf, succ, row)
                if decision != rules.WAIT:
                    self._act(step, succ, decision, f"{task_id} {state}")

    def _settle(self, step: Step) -> None:
        """Count settled tasks on the execution; end it when none is left."""
        remaining, state = step.tx.settle_count(step.execution_id, step.settled_count)
        step.settled_count = 0
        if state is not None:
            step.state = state
        if remaining == 0 and step.state == S.RUNNING:
            self._finish(step)

    def _finish(self, step: Step) -> None:
        tx, eid = step.tx, step.execution_id
        bad = tx.conn.execute(
            sa.select(t.task_runs.c.task_id, t.task_runs.c.state, t.task_runs.c.error)
            .where(
                t.task_runs.c.execution_id == eid,
                t.task_runs.c.state.not_in([S.SUCCEEDED, S.SKIPPED]),
            )
            .order_by(t.task_runs.c.finished_at, t.task_runs.c.position)
        ).all()
        if not bad:
            tx.cas_execution(eid, S.RUNNING, S.COMPLETED, "every task succeeded or was skipped")
            return
        first = next((r for r in bad if r.state == S.FAILED), bad[0])
        error = f"task {first.task_id!r} {first.state}" + (
            f": {first.error}" if first.error else ""
        )
        tx.cas_execution(eid, S.RUNNING, S.FAILED, error, error=error)

    def _send(self, dispatches: Sequence[Dispatch]) -> None:
        """Publish task messages whose transitions are committed already.

        When the broker does not answer, the transitions still stand (a start told to try
        again would start twice, a resume would be refused as `running`): the tasks still
        `queued` are marked overdue, so that a worker's next reconciler pass publishes them
        once the broker answers (``flowq.recovery``). A `retrying` task's delayed message is
        left to the reconciler's usual wait, so that its backoff holds.
        """
        if not dispatches:
            return
        try:
            self.dispatcher.send(dispatches)
        except BROKER_ERRORS as exc:
            log.warning(
                "%d task message(s) could not be published (%s); the tasks stay queued and "
                "workers publish them when the broker answers",
                len(dispatches),
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            keys = [(d.execution_id, d.task_id) for d in dispatches]
            self.store.transact(lambda tx: tx.mark_overdue(keys), single=True)

    # -- lost attempts, republishing -----------------------------------------------------------
    def _lose(self, step: Step, task_id: str, reason: str) -> bool:
        """A running attempt was lost with its worker: back to `queued` if attempts remain.

        Otherwise the task fails (and what depends on it is settled); returns True if requeued.
        """
        tx, eid = step.tx, step.execution_id
        row = tx.task(eid, task_id)
        if row is None or row.state != S.RUNNING:
            return False
        if row.attempts < step.wf.task(task_id).retries + 1:
            return tx.cas_task(eid, task_id, S.RUNNING, S.QUEUED, reason, queued_at=tx.now)
        # a task that failed for good carries an exception type (SPEC section 2): Celery's
        error = f"{LOST_TYPE}: {reason}; no attempts left ({row.attempts} made)"
        if tx.cas_task(eid, task_id, S.RUNNING, S.FAILED, error, error=error, finished_at=tx.now):
            step.settled.append((task_id, S.FAILED))
            self._propagate(step)
            self._settle(step)
        return False

    def recover_lost(self, execution_id: str, task_id: str, reason: str) -> bool:
        """Requeue (or fail, when out of attempts) a running task whose worker is gone."""

        def body(tx: Tx) -> list[Dispatch]:
            step = self._step(tx, execution_id)
            if self._lose(step, task_id, reason) and step.state == S.RUNNING:
                step.dispatch.append(self._dispatch_of(step, task_id))
            return step.dispatch

        dispatches = self.store.transact(body)
        self._send(dispatches)
        return bool(dispatches)

    def redispatch(self, items: Sequence[tuple[str, str]]) -> int:
        """Publish again the messages of queued or retrying tasks (duplicates are harmless).

        A row locked by a claim still held open is skipped, not waited for: its worker may
        be gone without its connection having closed yet (a machine lost), and this runs on
        the thread that sends the worker's heartbeats.
        """
        c = t.task_runs.c

        def body(tx: Tx) -> list[Dispatch]:
            out: list[Dispatch] = []
            steps: dict[str, Step] = {}
            for eid, tid in items:
                step = steps.get(eid) or steps.setdefault(eid, self._step(tx, eid))
                free = (
                    sa.select(c.execution_id, c.task_id)
                    .where(
                        c.execution_id == eid,
                        c.task_id == tid,
                        c.state.in_([S.QUEUED, S.RETRYING]),
                    )
                    .with_for_update(skip_locked=True, key_share=True)
                )
                res = tx.conn.execute(
                    t.task_runs.update()
                    .where(sa.tuple_(c.execution_id, c.task_id).in_(free))
                    .values(queued_at=tx.now)
                )
                if res.rowcount == 1 and step.state == S.RUNNING:
                    out.append(self._dispatch_of(step, tid))
            return out

        dispatches = self.store.transact(body)
        self._send(dispatches)
        return len(dispatches)
