"""The two sides of every comparison: flowq (Client.start) and plain Celery (canvas.apply_async).

A run is timed from the call that starts it to the moment its work is over: for plain Celery
when the last task's body ran (it marks the run done), for flowq when the store says every
execution of the run ended (the last task's mark, then a poll of the execution rows). flowq's
end is therefore later by its last commit: the comparison leans, if anything, against flowq.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from celery import Celery
from celery.canvas import Signature

from bench import marks, plain
from bench.counters import RedisCounts, libpq_url, redis_counts
from bench.env import Env
from flowq import Client, Settings, Workflow

ENDED = ("completed", "failed", "cancelled")
POLL = 0.002
ENDED_SQL = "SELECT count(*) FROM flowq_executions WHERE id = ANY(%s) AND state = ANY(%s)"


@dataclass(frozen=True)
class Outcome:
    """One timed run: seconds (None when it hit its timeout) and the broker's counters."""

    seconds: float | None
    tasks: int
    redis: RedisCounts


class Side:
    """What both sides share: the broker's counters and the marks server."""

    name = ""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.broker = redis.Redis.from_url(env.broker_server)
        self.marks = redis.Redis.from_url(env.marks_url, socket_timeout=None)

    def _wait_mark(self, key: str, timeout: float) -> float | None:
        got = self.marks.blpop([key], timeout=max(1, round(timeout)))
        return None if got is None else float(got[1])


class FlowqSide(Side):
    """flowq through its public client, on the bench's Postgres database."""

    name = "flowq"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.client = Client(Settings(broker_url=env.flowq_broker, database_url=env.database_url))
        self.polls = 0  # our own store transactions, taken off the commit counts
        self.started: list[str] = []
        self._conn: psycopg.Connection[Any] | None = None

    def register(self, definition: dict[str, Any]) -> str:
        wf = Workflow.from_dict(definition)
        self.client.register(wf, replace=True)
        return wf.id

    def run(
        self,
        workflow_id: str,
        tasks: int,
        *,
        executions: int = 1,
        timeout: float,
        extra: dict[str, Any] | None = None,
    ) -> Outcome:
        run = uuid.uuid4().hex
        values = {"run": run, **(extra or {})}
        before = redis_counts(self.broker)
        t0 = time.perf_counter()
        eids = [self.client.start(workflow_id, values) for _ in range(executions)]
        self.started += eids
        ended = self._wait_mark(marks.done_key(run), timeout) is not None and self._wait_ended(
            eids, t0 + timeout
        )
        seconds = time.perf_counter() - t0
        counts = redis_counts(self.broker) - before
        if not ended:
            for eid in eids:
                self._cancel(eid)
        return Outcome(seconds if ended else None, tasks, counts)

    def _wait_ended(self, eids: list[str], deadline: float) -> bool:
        while True:
            try:
                n = self._poll_conn().execute(ENDED_SQL, (eids, list(ENDED))).fetchone()
                self.polls += 1
            except psycopg.OperationalError:  # Postgres restarted under us: reconnect, go on
                self.release()
                n = None
            if n is not None and n[0] == len(eids):
                return True
            if time.perf_counter() > deadline:
                return False
            time.sleep(POLL)

    def _poll_conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(libpq_url(self.env.database_url), autocommit=True)
        return self._conn

    def _cancel(self, eid: str) -> None:
        try:
            self.client.cancel(eid)
        except Exception as exc:  # an execution that ended meanwhile cannot be cancelled
            print(f"  (cancel {eid}: {exc})")

    def stamp_latency(self, workflow_id: str, timeout: float = 30) -> float:
        """Seconds from ``Client.start`` to the first task's body starting."""
        run = uuid.uuid4().hex
        t0 = time.time()
        self.started.append(self.client.start(workflow_id, {"run": run}))
        stamped = self._wait_mark(marks.stamp_key(run), timeout)
        if stamped is None:
            raise RuntimeError("flowq: the stamp task did not run")
        return stamped - t0

    def release(self) -> None:
        """Close our own store sessions before the commit counters are settled."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.client.store.dispose()

    def verify(self) -> list[str]:
        """Problems with the executions started since the last call (each must be completed)."""
        problems = []
        for eid in self.started:
            doc = self.client.status(eid)
            if doc["state"] != "completed":
                problems.append(f"flowq execution {eid} {doc['state']}: {doc['error']}")
        self.started = []
        return problems

    def close(self) -> None:
        self.release()
        self.client.close()


class PlainSide(Side):
    """Plain Celery canvas from the producer side, on its own broker db and workers."""

    name = "celery"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.app: Celery = plain.create_app(env.plain_broker, env.plain_backend)

    def run(
        self, canvas: Callable[[Celery, str], Signature], tasks: int, *, timeout: float
    ) -> Outcome:
        run = uuid.uuid4().hex
        before = redis_counts(self.broker)
        t0 = time.perf_counter()
        result = canvas(self.app, run).apply_async()
        ended = self._wait_mark(marks.done_key(run), timeout) is not None
        seconds = time.perf_counter() - t0
        counts = redis_counts(self.broker) - before
        # A chord's result stays subscribed in the backend until dropped; drop it while Redis
        # is up, or its finaliser fails noisily at interpreter exit.
        self.app.backend.remove_pending_result(result)
        if not ended:
            self.env.reset_plain()
        return Outcome(seconds if ended else None, tasks, counts)

    def stamp_latency(self, timeout: float = 30) -> float:
        """Seconds from ``apply_async`` to the task's body starting."""
        run = uuid.uuid4().hex
        t0 = time.time()
        self.app.signature("bench.stamp", args=(run,)).apply_async()
        stamped = self._wait_mark(marks.stamp_key(run), timeout)
        if stamped is None:
            raise RuntimeError("plain Celery: the stamp task did not run")
        return stamped - t0

    def close(self) -> None:
        # Results still tracked unsubscribe when freed: free them now, while Redis is up.
        for mapping in getattr(self.app.backend, "_pending_results", ()):
            mapping.clear()
        gc.collect()
        self.app.close()
