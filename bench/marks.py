"""In-task marks shared by both sides, so the harness learns that a run ended without polling.

Marks go to a Redis server of their own (``BENCH_MARKS_URL``), never the broker, so they add
nothing to the broker's counters.
"""

from __future__ import annotations

import os
import time

import redis

ENV = "BENCH_MARKS_URL"
_client: redis.Redis | None = None


def client() -> redis.Redis:
    """The marks server of this process (redis-py reconnects by itself after a fork)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ[ENV])
    return _client


def done_key(run: str) -> str:
    return f"bench:done:{run}"


def stamp_key(run: str) -> str:
    return f"bench:stamp:{run}"


def done(run: str) -> None:
    """Say that run ``run`` reached its last task."""
    client().rpush(done_key(run), time.time())


def tick(run: str, total: int) -> None:
    """Count one task of ``run``; the task that counts the ``total``-th says the run is done."""
    if client().incr(f"bench:tick:{run}") == total:
        done(run)


def stamp(run: str) -> None:
    """Record the wall-clock time at which a task body started."""
    client().rpush(stamp_key(run), time.time())
