"""Celery task signals that record each task transition in the state store."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from celery import Celery, Task, signals
from celery.exceptions import TimeLimitExceeded, WorkerLostError

from flowq.coordinator import Claim, Coordinator
from flowq.recovery import Maintenance
from flowq.store import Store, utcnow
from workers.app import error_line
from workers.markers import Mark

if TYPE_CHECKING:
    from workers.app import Runtime

log = logging.getLogger("flowq.worker")
HOSTNAME = socket.gethostname()


def _ids(request: Any) -> tuple[str, str] | None:
    return _ids_in(getattr(request, "kwargs", None))


def _ids_in(kwargs: Any) -> tuple[str, str] | None:
    """(execution_id, task_id) from a flowq message's keyword arguments."""
    if not isinstance(kwargs, dict):
        return None
    eid, tid = kwargs.get("execution_id"), kwargs.get("task_id")
    if not eid or not tid:
        return None
    return str(eid), str(tid)


def connect(app: Celery, task_name: str, runtime: Runtime) -> None:
    """Connect the transition recorders for the app's generic flowq task."""
    task = app.tasks[task_name]  # the real task object: Celery sends signals with it as sender

    def on_prerun(sender: Task, task_id: str, **_: Any) -> None:
        ids = _ids(sender.request)
        if ids is None:
            return
        sender.request.flowq_claim = None
        try:
            claim = claim_message(runtime, sender.request, ids, task_id)
        except Exception:
            log.exception("could not claim %s/%s; leaving it for recovery", *ids)
            return
        if claim is None:
            log.info("not starting %s/%s: it is not queued or its execution is not running", *ids)
        sender.request.flowq_claim = claim

    def on_success(sender: Task, result: Any, **_: Any) -> None:
        ids = _ids(sender.request)
        if ids is None or getattr(sender.request, "flowq_claim", None) is None:
            return
        request = sender.request
        coordinator = runtime.coordinator

        def end() -> None:
            _record(runtime, "succeeded", ids, lambda c: c.succeeded(ids[0], ids[1], result))
            _clear_mark(runtime, request, ids, later=True)

        # a held claim's success: sent now and read later when no task waits for it
        # (``Coordinator.succeed_later``), else committed on the finisher thread (``end_later``)
        try:
            if coordinator.succeed_later(
                ids[0], ids[1], result, lambda: _clear_mark(runtime, request, ids, later=True)
            ):
                return
        except Exception:
            log.exception("could not record %s/%s succeeded in the state store", *ids)
            return
        if not coordinator.end_later(ids[0], ids[1], end):
            end()

    def on_failure(sender: Task, exception: BaseException, **info: Any) -> None:
        ids = _ids(sender.request)
        if ids is not None and getattr(sender.request, "flowq_claim", None) is not None:
            error = error_line(exception)
            _record(runtime, "failed", ids, lambda c: c.failed(ids[0], ids[1], error))
            _clear_mark(runtime, sender.request, ids)
            return
        # Reported by the worker's main process: the pool process running the task was killed
        # (hard time limit) or lost, so no handler in it recorded anything. `failed` only moves
        # a task that is still `running`.
        lost = _ids_in(info.get("kwargs"))
        if lost is not None and isinstance(exception, TimeLimitExceeded | WorkerLostError):
            error = _lost_line(exception)
            _record(runtime, "failed", lost, lambda c: c.failed(lost[0], lost[1], error))

    def on_retry(sender: Task, request: Any, reason: Any, **_: Any) -> None:
        # `retrying` is recorded by the task itself before Celery publishes the retry message;
        # recording it here would race with that message.
        ids = _ids(request)
        if ids is not None:
            log.info("task %s/%s will be retried: %s", ids[0], ids[1], reason)
            _clear_mark(runtime, request, ids)  # `retrying` committed the claim

    def on_revoked(sender: Task, request: Any, **_: Any) -> None:
        ids = _ids(request)
        if ids is not None:
            log.info("task %s/%s revoked", *ids)

    signals.task_prerun.connect(on_prerun, sender=task, weak=False)
    signals.task_success.connect(on_success, sender=task, weak=False)
    signals.task_failure.connect(on_failure, sender=task, weak=False)
    signals.task_retry.connect(on_retry, sender=task, weak=False)
    signals.task_revoked.connect(on_revoked, sender=task, weak=False)

    maintenance: list[Maintenance] = []

    def on_process_init(**_: Any) -> None:
        runtime.reset_after_fork()
        for m in maintenance:  # a pool child must not touch the parent's connections
            m.coordinator.store.forget_connections()

    def on_ready(sender: Any, **_: Any) -> None:
        if getattr(sender, "app", None) is not app or runtime.settings.embedded:
            return
        from workers.app import CeleryDispatcher

        store = Store(runtime.settings.database_url)
        # its own client of the marks: a pool process forked while this thread reads them
        # must not inherit the lock of the pool processes' client taken
        own = runtime.make_marks()
        m = Maintenance(
            Coordinator(store, CeleryDispatcher(app)),
            str(sender.hostname),
            marks=own.marks if own is not None else None,
        )
        m.start()
        maintenance.append(m)

    def on_shutdown(**_: Any) -> None:
        while maintenance:
            maintenance.pop().stop()

    def on_process_shutdown(**_: Any) -> None:
        runtime.close()  # the task ends handed to the finisher thread are committed first

    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)
    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)


def _lost_line(exc: BaseException) -> str:
    """The error of a task whose pool process was killed or lost."""
    if isinstance(exc, TimeLimitExceeded):
        limit = exc.args[0] if exc.args else None
        within = f" of {limit:g}s" if isinstance(limit, int | float) else ""
        return (
            f"TimeLimitExceeded: the attempt ignored its soft time limit and passed the hard "
            f"limit{within}; its worker process was killed"
        )
    return error_line(exc)


def claim_message(runtime: Runtime, request: Any, ids: tuple[str, str], msg: str) -> Claim | None:
    """Claim the message's task, held where it can be marked.

    A held claim is marked with ``SET ... GET``: a mark of the same attempt number in the
    reply was left by an attempt whose claim was rolled back with its dead process (see
    ``workers.markers``). Then this claim is rolled back too, that attempt is recorded, and
    the task is claimed again under the next number, committed at once. A claim that is not
    held (a redelivered message, a task that cannot be held) reads the mark first and records
    such an attempt.
    """
    coordinator, marks = runtime.coordinator, runtime.marks
    worker = request.hostname or HOSTNAME
    digest = (request.kwargs or {}).get("digest")
    digest = digest if isinstance(digest, str) else None
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    hold = (
        marks is not None
        and not redelivered  # its earlier run may have died: claimed and committed at once
        and coordinator.may_hold(ids[0], ids[1], digest)
    )
    if marks is not None and not hold:
        _record_lost_attempt(coordinator, ids, marks.get(*ids))
    for _ in range(2):  # a second time, not held, only after recording a lost attempt
        claim = coordinator.claim(
            ids[0], ids[1], celery_id=msg, worker=worker, digest=digest, hold=hold
        )
        if claim is None or not claim.held or marks is None:
            return claim
        written, before = marks.swap(ids[0], ids[1], Mark(msg, utcnow(), worker, claim.attempt))
        if not written:
            coordinator.commit_held(ids[0], ids[1])
            return claim
        if before is None or before.attempt != claim.attempt:
            return claim
        coordinator.drop_held(ids[0], ids[1])
        _record_lost_attempt(coordinator, ids, before)
        hold = False  # claimed again, committed at once: no mark to compare with
    return claim


def _record_lost_attempt(coordinator: Coordinator, ids: tuple[str, str], mark: Mark | None) -> None:
    """Record the attempt of a mark found left, if it died uncounted (``record_lost_claim``
    checks that). The mark stays until it expires: a later claim's number is past it."""
    if mark is None or mark.attempt is None:
        return
    recorded = coordinator.record_lost_claim(
        ids[0],
        ids[1],
        started=mark.started,
        celery_id=mark.celery_id,
        worker=mark.worker,
        attempt=mark.attempt,
    )
    if recorded:
        log.warning("%s/%s: attempt %d died before its claim was committed", *ids, mark.attempt)


def _clear_mark(runtime: Runtime, request: Any, ids: tuple[str, str], later: bool = False) -> None:
    """The claim is committed now (with the task's end, or by `retrying`): drop its mark
    (``later``, with the next one written, after a success)."""
    claim = getattr(request, "flowq_claim", None)
    if runtime.marks is not None and claim is not None and claim.held:
        runtime.marks.clear(*ids, later=later)


def _record(runtime: Runtime, what: str, ids: tuple[str, str], fn: Any) -> None:
    """Run a store update; Celery would swallow the error, so log it loudly."""
    try:
        fn(runtime.coordinator)
    except Exception:
        log.exception("could not record %s/%s %s in the state store", ids[0], ids[1], what)
