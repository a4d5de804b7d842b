"""Marks of held claims, kept outside the store so that an attempt that dies is still counted.

A held claim (``flowq.store.held``) is committed with its task's end, or by a timer after the
hold. If the worker process dies before that, Postgres rolls the claim back and nothing in the
store says the attempt ran. So before the task body runs, the worker marks the claim in Redis
(one ``SET ... GET`` with a time to live past the broker's visibility timeout) and clears the
mark (one ``DEL``) once the claim is committed.

A mark names the attempt it was made for. A later claim that finds a mark of its own attempt
number knows that attempt's claim was rolled back (had it been committed, the counter would be
past it; had its transaction still been open, the claim would have waited on its row lock): the
attempt ran and died, and the coordinator records it (``Coordinator.record_lost_claim``) before
the task runs again. A held claim finds the mark in the reply to its own ``SET``; a claim that
is not held reads it first (``GET``), whichever message it came from (the crashed one
redelivered, a republished duplicate, a resume).

The mark of a task that succeeded is deleted with the process's next ``SET`` (one round trip
for both): a mark whose claim was committed is harmless, since every later claim's number is
past it, so deleting it late only saves Redis memory.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import redis

from workers.transport import exchange, pack

log = logging.getLogger("flowq.worker")
PREFIX = "flowq:held:"
MAX_LATER = 32  # marks left to delete with the next SET; more are deleted at once


@dataclass(frozen=True)
class Mark:
    """A held claim as its worker marked it."""

    celery_id: str
    started: datetime
    worker: str | None
    attempt: int | None  # None in a mark written before marks named their attempt


class Marks(Protocol):
    """Where a worker marks its held claims."""

    def swap(self, execution_id: str, task_id: str, mark: Mark) -> tuple[bool, Mark | None]:
        """Mark a held claim: (False if the mark could not be written, the mark it replaced)."""

    def get(self, execution_id: str, task_id: str) -> Mark | None:
        """The mark of the task's held claim, if one is left."""

    def marks(self, keys: Sequence[tuple[str, str]]) -> list[Mark | None]:
        """The marks of these ``(execution_id, task_id)`` in order, None where there is none
        (or none could be read)."""

    def clear(self, execution_id: str, task_id: str, *, later: bool = False) -> None:
        """Forget the mark (its claim is committed); ``later``: with the next mark written.

        Only a task that succeeded may leave its mark for later: nothing claims it again, so
        the key cannot hold another claim's mark by then (and a mark whose attempt was
        committed misleads no claim anyway).
        """


def _encode(mark: Mark) -> str:
    return json.dumps([mark.celery_id, mark.started.isoformat(), mark.worker, mark.attempt])


def _decode(raw: bytes | str) -> Mark | None:
    try:
        celery_id, started, worker, *rest = json.loads(raw)
        attempt = int(rest[0]) if rest and rest[0] is not None else None
        return Mark(str(celery_id), datetime.fromisoformat(started), worker, attempt)
    except (ValueError, TypeError):
        return None


class RedisMarks:
    """Marks on the broker's Redis server (``distributed``).

    Each call is one round trip on one connection of this process's own, its commands packed
    and sent in one write: no pool, no pipeline object, no health check (this runs once per
    task; a broken connection is made again once, then the error is the caller's).
    """

    def __init__(self, url: str, ttl: float) -> None:
        self.url = url
        self.ttl = int(ttl)
        self._conn: Any = None  # a redis.connection.AbstractConnection (untyped calls)
        self._pid = 0
        self._lock = threading.Lock()  # one call at a time on the connection
        self._later: list[str] = []  # keys to delete with the next SET (``clear(later=True)``)

    def _call(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` and return their replies; a Redis error in one of them raises."""
        with self._lock:
            return exchange(self._connection, pack(*commands), len(commands))

    def _connection(self) -> Any:
        conn = self._conn
        if conn is None or self._pid != os.getpid():  # not a parent's socket
            pool = redis.ConnectionPool.from_url(self.url, socket_timeout=5)
            conn = pool.make_connection()
            self._conn, self._pid = conn, os.getpid()
        return conn

    @staticmethod
    def _key(execution_id: str, task_id: str) -> str:
        return f"{PREFIX}{execution_id}:{task_id}"

    def swap(self, execution_id: str, task_id: str, mark: Mark) -> tuple[bool, Mark | None]:
        key = self._key(execution_id, task_id)
        with self._lock:
            later, self._later = self._later, []
        # SET ... GET: Redis 6.2 or later; the marks of succeeded tasks go in the same write
        commands: list[tuple[Any, ...]] = [("DEL", *later)] if later else []
        commands.append(("SET", key, _encode(mark), "EX", self.ttl, "GET"))
        try:
            raw = self._call(*commands)[-1]
        except (redis.RedisError, OSError) as exc:
            log.warning("could not mark a held claim: %s", exc)
            return False, None
        return True, _decode(raw) if isinstance(raw, bytes | str) else None

    def get(self, execution_id: str, task_id: str) -> Mark | None:
        try:
            (raw,) = self._call(("GET", self._key(execution_id, task_id)))
        except (redis.RedisError, OSError) as exc:
            log.warning("could not read the mark of a held claim: %s", exc)
            return None
        return _decode(raw) if isinstance(raw, bytes | str) else None

    def marks(self, keys: Sequence[tuple[str, str]]) -> list[Mark | None]:
        if not keys:
            return []
        try:
            (raws,) = self._call(("MGET", *(self._key(*key) for key in keys)))
        except (redis.RedisError, OSError) as exc:
            log.warning("could not read the marks of held claims: %s", exc)
            return [None] * len(keys)
        return [_decode(raw) if isinstance(raw, bytes | str) else None for raw in raws]

    def clear(self, execution_id: str, task_id: str, *, later: bool = False) -> None:
        keys = [self._key(execution_id, task_id)]
        if later:
            with self._lock:
                self._later += keys
                if len(self._later) < MAX_LATER:
                    return
                keys, self._later = self._later, []
        try:
            self._call(("DEL", *keys))
        except (redis.RedisError, OSError) as exc:  # the mark expires by itself
            log.warning("could not clear the mark of a held claim: %s", exc)


class MemoryMarks:
    """Marks in the process (embedded: a process that dies takes its broker with it)."""

    def __init__(self) -> None:
        self._marks: dict[tuple[str, str], Mark] = {}
        self._lock = threading.Lock()  # the embedded worker's threads share these marks

    def swap(self, execution_id: str, task_id: str, mark: Mark) -> tuple[bool, Mark | None]:
        with self._lock:
            before = self._marks.get((execution_id, task_id))
            self._marks[(execution_id, task_id)] = mark
        return True, before

    def get(self, execution_id: str, task_id: str) -> Mark | None:
        return self._marks.get((execution_id, task_id))

    def marks(self, keys: Sequence[tuple[str, str]]) -> list[Mark | None]:
        return [self._marks.get(key) for key in keys]

    def clear(self, execution_id: str, task_id: str, *, later: bool = False) -> None:
        self._marks.pop((execution_id, task_id), None)
