"""The Celery app factory and the one generic task that runs a workflow task.

Retries: a failed attempt (any exception but ``PermanentError``) is recorded as ``retrying`` and
re-sent by Celery with ``countdown=backoff_delay(...)``: ``retry_backoff`` doubling per retry,
capped by ``retry_backoff_max``, jittered in [0, delay] when ``retry_jitter``. The worker holds
that message as an ETA task, unacknowledged; validation keeps the cap (and ``timeout``) at most
``flowq.task_types.MAX_BROKER_WAIT`` (3000 s), below Redis' ``visibility_timeout`` (3600 s), so a
delayed retry is never redelivered and run twice (celery#2481, kombu#337).

Timeouts: under the prefork pool Celery enforces ``timeout`` itself (``time_limits``): the soft
limit raises ``SoftTimeLimitExceeded`` inside the task, turned into ``TaskTimeout``; the hard limit,
``HARD_LIMIT_GRACE`` seconds later, kills a task that ignored it (recorded as failed by
``workers.signals``). Pools without time limits (the embedded threads pool, ``-P threads``,
``solo``) run the handler in a helper thread and stop waiting for it after ``timeout``: the attempt
fails with ``TaskTimeout``, but Python cannot kill a thread, so the abandoned handler runs on in
the background until it returns by itself, and its result is discarded. Either way a timed-out
attempt is a failed attempt, retried while attempts remain.
"""

from __future__ import annotations

import contextvars
import importlib
import json
import logging
import os
import random
import re
import signal
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from billiard import pool as billiard_pool
from celery import Celery, Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from kombu.exceptions import BatchPublishError

from flowq.context import TaskContext
from flowq.coordinator import Claim, Coordinator, Dispatch
from flowq.errors import PermanentError, TaskError
from flowq.problems import json_problems
from flowq.recovery import env_seconds
from flowq.settings import Settings
from flowq.store import Store
from flowq.templates import render
from workers.handlers import Handler, handler_for
from workers.markers import Marks, MemoryMarks, RedisMarks

log = logging.getLogger("flowq.worker")

TASK_NAME = "flowq.run"
DEFAULT_QUEUE = "flowq"
HARD_LIMIT_GRACE = 5.0
# The most messages sent per round trip to the broker (``CeleryDispatcher``)
PUBLISH_BATCH = 25
# How long a claim may stay uncommitted, to be committed with its task's success
# (flowq.store.held): FLOWQ_CLAIM_HOLD_SECONDS; 0 commits every claim by itself (see the
# README's "Held claims" for the trade-off).
CLAIM_HOLD_SECONDS = 0.1
# How long the successes of tasks without successors may wait to be committed together
# (flowq.store.held's commit batches): FLOWQ_COMMIT_BATCH_SECONDS; 0 commits each by itself.
COMMIT_BATCH_SECONDS = 0.05
# Marks of held claims outlive the broker's visibility timeout (the crashed message's
# redelivery) and a day of waiting (a paused execution, a republish): see workers.markers.
MARK_TTL_MIN_SECONDS = 24 * 3600.0


def claim_hold_seconds() -> float:
    """This process's claim hold: FLOWQ_CLAIM_HOLD_SECONDS, else CLAIM_HOLD_SECONDS."""
    return env_seconds("FLOWQ_CLAIM_HOLD_SECONDS", CLAIM_HOLD_SECONDS)


def commit_batch_seconds() -> float:
    """This process's commit batch window: FLOWQ_COMMIT_BATCH_SECONDS, else
    COMMIT_BATCH_SECONDS."""
    return env_seconds("FLOWQ_COMMIT_BATCH_SECONDS", COMMIT_BATCH_SECONDS)


EMBEDDED_TRANSPORT_OPTIONS = {"polling_interval": 0.002}
JSON_SCALARS = (int, bool)  # results stored as they are, no check needed
# U+0000 as json.dumps writes it: "\\u0000" after an even run of backslashes (each pair is
# one backslash of the text)
NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def celery_priority(priority: int) -> int:
    """flowq's 9 (most urgent) .. 0 onto Celery's Redis scale, where 0 is served first."""
    return 9 - priority


def backoff_delay(retries_done: int, base: float, cap: float, jitter: bool) -> float:
    """Seconds before the next attempt: ``base`` doubling per retry, capped, maybe jittered."""
    delay = min(cap, base * (2**retries_done))
    return random.uniform(0, delay) if jitter else delay


def time_limits(timeout: float | None) -> dict[str, float]:
    """Celery's soft limit (raises inside the task) and a hard limit a little later."""
    if timeout is None:
        return {}
    return {"soft_time_limit": timeout, "time_limit": timeout + HARD_LIMIT_GRACE}


class TaskTimeout(TaskError):
    """An attempt ran longer than its task's ``timeout``; retried while attempts remain."""


def _timed_out(timeout: float) -> TaskTimeout:
    return TaskTimeout(f"the attempt ran longer than the task's timeout of {timeout:g}s")


def celery_enforces_time_limits() -> bool:
    """True in a prefork pool process, where Celery's soft limit raises inside the task."""
    sig = getattr(signal, "SIGUSR1", None)
    return (
        sig is not None
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(sig) is billiard_pool.soft_timeout_sighandler
    )


def call_with_timeout(
    handler: Handler, spec: Mapping[str, Any], ctx: TaskContext, timeout: float | None
) -> Any:
    """Run ``handler`` and give up waiting after ``timeout`` seconds (pools without time limits).

    The handler runs in a daemon helper thread; past the timeout that thread is abandoned, not
    stopped (Python cannot kill a thread), and whatever it returns later is discarded.
    """
    if timeout is None or celery_enforces_time_limits():
        return handler(spec, ctx)
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def attempt() -> None:
        try:
            outcome["result"] = handler(spec, ctx)
        except BaseException as exc:  # re-raised in the calling thread below
            outcome["error"] = exc
        finally:
            done.set()

    name = f"flowq-attempt-{ctx.execution_id[:8]}-{ctx.task_id}-{ctx.attempt}"
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(attempt,), name=name, daemon=True).start()
    if not done.wait(timeout):
        log.warning(
            "%s/%s attempt %d passed its timeout of %gs; abandoning its thread",
            ctx.execution_id,
            ctx.task_id,
            ctx.attempt,
            timeout,
        )
        raise _timed_out(timeout)
    if "error" in outcome:
        error: BaseException = outcome["error"]
        raise error
    return outcome["result"]


def error_line(exc: BaseException) -> str:
    """One line naming the exception's (first public) type and its message."""
    text = " ".join(str(exc).split())
    kind = next(c.__name__ for c in type(exc).__mro__ if not c.__name__.startswith("_"))
    line = f"{kind}: {text}" if text else kind
    return line if len(line) <= 500 else line[:497] + "..."


def _chunks(items: Sequence[Dispatch]) -> Iterator[Sequence[Dispatch]]:
    """``items`` in chunks of 2, 4, 8, 16, then ``PUBLISH_BATCH``: the first tasks of a large
    fan-out start while the rest is still being published."""
    size, start = 2, 0
    while start < len(items):
        yield items[start : start + size]
        start += size
        size = min(2 * size, PUBLISH_BATCH)


class CeleryDispatcher:
    """Publishes task messages through a Celery app; ``only_queue`` overrides task queues.

    The messages of one ``send`` (an execution's roots, a task's successors) go out through
    kombu's producer batch (``Producer.batch``, kombu 5.7): on Redis, a pipeline per chunk
    (``_chunks``) instead of one LPUSH round trip per message; each queue is declared once per
    send, not once per message. A chunk that fails (its flush, or the connection) leaves its
    delivery uncertain: it and the rest are then published one by one, through Celery's
    publish and its retry policy. A message that arrives twice runs once: the second finds its
    task claimed and is ignored, as a republished one is.
    """

    def __init__(self, app: Celery, only_queue: str | None = None) -> None:
        self.app = app
        self.only_queue = only_queue

    def send(self, items: Sequence[Dispatch]) -> None:
        """Publish one small message per task, over one producer connection."""
        if not items:
            return
        with self.app.producer_or_acquire() as producer:
            if len(items) == 1:
                self._publish(producer, items, None)
                return
            uncertain = (BatchPublishError, *producer.connection.connection_errors)
            declared: set[str] = set()
            sent = 0
            try:
                for chunk in _chunks(items):
                    with producer.batch(max_size=len(chunk)):
                        self._publish(producer, chunk, declared)
                    sent += len(chunk)
            except uncertain as exc:
                log.warning(
                    "publishing %d task messages at once failed (%s); publishing them one by one",
                    len(items) - sent,
                    error_line(exc.__cause__ or exc),
                )
                self._publish(producer, items[sent:], None)

    def _publish(self, producer: Any, items: Sequence[Dispatch], declared: set[str] | None) -> None:
        """``declared``: the queues declared so far, each declared here once, not with each
        message; None: Celery declares the queue with each message.

        Each message is made and sent by Celery's own two steps (``amqp.create_task_message``,
        ``amqp.send_task_message``: the same protocol-2 message, publish signals, retry policy
        and queue declaration as ``apply_async``), without what ``apply_async`` and
        ``send_task`` add per call for a task flowq addresses explicitly: merging the task's
        options, routing, and a result object per message. They cost more than the message.
        """
        app = self.app
        amqp = app.amqp
        task = app.tasks[TASK_NAME]
        ignore_result = bool(task.ignore_result)
        # what ``send_task`` does: a task sent from inside a task is its child (Flower's tree)
        parent = app.current_worker_task
        root_id = parent_id = None
        if parent is not None:
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
        reply_to = app.thread_oid
        sent_event = app.conf.task_send_sent_event
        for d in items:
            queue = self.only_queue or d.queue
            if declared is not None and queue not in declared:
                producer.maybe_declare(amqp.queues[queue])
                declared.add(queue)
            ids = {"execution_id": d.execution_id, "task_id": d.task_id}
            task_id = str(uuid.uuid4())
            message = amqp.create_task_message(
                task_id,
                TASK_NAME,
                (),
                {**ids, "digest": d.digest},  # the digest names the definition
                reply_to=reply_to,
                create_sent_event=sent_event,
                root_id=root_id,
                parent_id=parent_id,
                ignore_result=ignore_result,
                # what Flower and the logs show: the workflow, not the digest; plain reprs
                # (Celery's default saferepr costs more than the rest of the message)
                argsrepr="()",
                kwargsrepr=repr({**ids, "workflow_id": d.workflow_id}),
                **time_limits(d.timeout),
            )
            # as ``send_task``: a lost broker raises kombu's OperationalError (the API's 503)
            with producer.connection._reraise_as_library_errors():
                if not ignore_result:
                    app.backend.on_task_call(producer, task_id)
                amqp.send_task_message(
                    producer,
                    TASK_NAME,
                    message,
                    queue=queue,
                    priority=celery_priority(d.priority),
                    declare=None if declared is None else [],
                )

    def revoke(self, celery_ids: Sequence[str]) -> None:
        """Terminate the given running tasks."""
        self.app.control.revoke(list(celery_ids), terminate=True, signal="SIGTERM")


class Runtime:
    """Per-process state of a flowq Celery app: the store and coordinator, made lazily."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._lock = threading.Lock()
        self._coordinator: Coordinator | None = None
        self._pid = os.getpid()
        self.marks = self.make_marks()

    def make_marks(self) -> Marks | None:
        """Where held claims are marked (a new client of it); None (claims are not held)
        without such a place."""
        if claim_hold_seconds() <= 0 or self.settings.database_url.startswith("sqlite"):
            return None  # nothing to hold: SQLite's claims are committed at once
        if self.settings.embedded:
            return MemoryMarks()
        broker = self.settings.effective_broker_url
        if broker.startswith(("redis://", "rediss://", "unix://")):
            options = self.app.conf.broker_transport_options or {}
            visibility = float(options.get("visibility_timeout", 3600))
            ttl = max(visibility + 600, MARK_TTL_MIN_SECONDS)
            return RedisMarks(broker, ttl)
        return None

    @property
    def coordinator(self) -> Coordinator:
        """The coordinator of this process (re-made after a fork)."""
        if self._coordinator is None or self._pid != os.getpid():
            with self._lock:
                if self._coordinator is None or self._pid != os.getpid():
                    store = Store(self.settings.database_url)
                    dispatcher = CeleryDispatcher(self.app)
                    self._coordinator = Coordinator(
                        store, dispatcher, hold=claim_hold_seconds(), batch=commit_batch_seconds()
                    )
                    self._pid = os.getpid()
        return self._coordinator

    def use(self, coordinator: Coordinator) -> None:
        """Share an existing coordinator (embedded mode runs producer and worker in one process)."""
        self._coordinator = coordinator
        self._pid = os.getpid()

    def close(self) -> None:
        """Release this process's coordinator (its task ends handed off are over first)."""
        if self._coordinator is not None and self._pid == os.getpid():
            self._coordinator.close()

    def reset_after_fork(self) -> None:
        """Forget connections inherited from the parent process."""
        if self._coordinator is not None:
            self._coordinator.store.forget_connections()
        self._coordinator = None


def run_workflow_task(task: Task, claim: Claim, coordinator: Coordinator) -> Any:
    """Run one attempt of the claimed task; retry a failure with backoff while attempts remain."""
    spec_task = claim.task
    try:
        return _attempt(claim)
    except PermanentError:
        raise
    except Exception as exc:
        done = int(task.request.retries or 0)
        if done < spec_task.retries:
            countdown = backoff_delay(
                done, spec_task.retry_backoff, spec_task.retry_backoff_max, spec_task.retry_jitter
            )
            # Recorded before the retry message exists, so that message always finds `retrying`.
            coordinator.retrying(claim.execution_id, spec_task.id, error_line(exc), countdown)
            raise task.retry(exc=exc, countdown=countdown, max_retries=spec_task.retries) from exc
        raise


def _attempt(claim: Claim) -> Any:
    """Render the task's templated fields and run its handler within the task's timeout."""
    spec_task = claim.task
    context = {"vars": claim.vars, "results": claim.results, "execution_id": claim.execution_id}
    direct = {d: claim.results[d] for d in spec_task.depends_on if d in claim.results}
    try:
        spec = spec_task.spec()
        for key in spec_task.TEMPLATED:
            if key in spec:
                spec[key] = render(spec[key], context, where=key)
        params = spec.get("params") if spec_task.type == "python" else None
        ctx = TaskContext(
            vars=claim.vars,
            params=dict(params or {}),
            results=direct,
            execution_id=claim.execution_id,
            task_id=spec_task.id,
            attempt=claim.attempt,
            workflow_id=claim.workflow.id,
        )
        result = call_with_timeout(handler_for(spec_task.type), spec, ctx, spec_task.timeout)
    except SoftTimeLimitExceeded as exc:
        raise _timed_out(spec_task.timeout or 0) from exc
    if result is None or type(result) in JSON_SCALARS:
        return result
    failed = ""
    try:  # json.dumps (C) checks what it can; U+0000 is left as the escape it writes for it
        if not NUL_ESCAPE.search(json.dumps(result, allow_nan=False)):
            return result
    except (TypeError, ValueError, RecursionError) as exc:
        failed = error_line(exc)
    problems = json_problems(result, where="result", limit=1, text_keys=False)  # says where
    raise PermanentError(f"the result is not JSON: {problems[0] if problems else failed}")


def _load_celeryconfig(app: Celery) -> None:
    """Apply a deployment's ``celeryconfig`` module (named by FLOWQ_CELERY_CONFIG) if present."""
    name = os.environ.get("FLOWQ_CELERY_CONFIG", "celeryconfig")
    try:
        module = importlib.import_module(name)
    except ImportError:
        return
    app.conf.update(
        {k: v for k, v in vars(module).items() if k.islower() and not k.startswith("_")}
    )


def create_app(settings: Settings | None = None) -> Celery:
    """Build a Celery app for flowq from workers.config, celeryconfig and the environment."""
    from workers import signals

    settings = settings or Settings.from_env()
    # workers.transport: kombu's Redis transport, reusing one client object per channel
    app = Celery("flowq", set_as_current=False, amqp="workers.transport:AMQP")
    app.config_from_object("workers.config")
    _load_celeryconfig(app)
    app.conf.broker_url = settings.effective_broker_url
    app.conf.result_backend = settings.effective_result_backend
    if settings.embedded:
        app.conf.broker_transport_options = dict(EMBEDDED_TRANSPORT_OPTIONS)
        app.conf.worker_send_task_events = False
        app.conf.task_send_sent_event = False
    runtime = Runtime(app, settings)
    app.flowq_runtime = runtime

    @app.task(bind=True, name=TASK_NAME, shared=False)  # type: ignore[untyped-decorator]
    def run(self: Task, execution_id: str, task_id: str, **_meta: Any) -> Any:
        claim: Claim | None = getattr(self.request, "flowq_claim", None)
        if claim is None:
            raise Ignore()
        return run_workflow_task(self, claim, runtime.coordinator)

    signals.connect(app, TASK_NAME, runtime)
    return app


def runtime_of(app: Celery) -> Runtime:
    """The flowq runtime attached to an app made by create_app."""
    runtime: Runtime = app.flowq_runtime
    return runtime
