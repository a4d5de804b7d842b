"""The servers' own counters (Redis commands and bytes, Postgres commits) and the physical floor."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import redis
import sqlalchemy as sa

T = TypeVar("T")

# Our own snapshots use these; they are not the measured side's traffic.
OWN_COMMANDS = frozenset({"info"})


@dataclass(frozen=True)
class RedisCounts:
    """Commands by name and bytes in and out, as a snapshot or the difference of two."""

    calls: dict[str, int] = field(default_factory=dict)
    net_in: int = 0
    net_out: int = 0

    @property
    def commands(self) -> int:
        return sum(self.calls.values())

    def __sub__(self, before: RedisCounts) -> RedisCounts:
        names = set(self.calls) | set(before.calls)
        calls = {n: self.calls.get(n, 0) - before.calls.get(n, 0) for n in names}
        return RedisCounts(
            {n: c for n, c in calls.items() if c},
            self.net_in - before.net_in,
            self.net_out - before.net_out,
        )

    def __add__(self, other: RedisCounts) -> RedisCounts:
        names = set(self.calls) | set(other.calls)
        return RedisCounts(
            {n: self.calls.get(n, 0) + other.calls.get(n, 0) for n in names},
            self.net_in + other.net_in,
            self.net_out + other.net_out,
        )


def redis_counts(server: redis.Redis) -> RedisCounts:
    """INFO commandstats and INFO stats of the whole server, less our own INFO calls."""
    stats = server.info("commandstats")
    calls = {
        key.removeprefix("cmdstat_"): int(value["calls"])
        for key, value in stats.items()
        if key.removeprefix("cmdstat_") not in OWN_COMMANDS
    }
    net = server.info("stats")
    return RedisCounts(calls, int(net["total_net_input_bytes"]), int(net["total_net_output_bytes"]))


def libpq_url(sqlalchemy_url: str) -> str:
    """A psycopg connection string from an SQLAlchemy ``postgresql+psycopg://`` URL."""
    url = sa.make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PgCommits:
    """``pg_stat_database.xact_commit`` of one database, read from the admin database.

    Backends publish their counts lazily (up to 10 s after going idle), so ``flush`` ends the
    database's client sessions first: a session's counts are published as it exits, and
    flowq's pool reconnects on next use (``pool_pre_ping``).
    """

    def __init__(self, admin: sa.Engine, database: str) -> None:
        self.admin = admin
        self.database = database

    def server_started(self) -> datetime:
        """When the Postgres server last started: a restart in a window spoils its count."""
        return retried(lambda: self._scalar("SELECT pg_postmaster_start_time()"))

    def _scalar(self, sql: str) -> Any:
        with self.admin.connect() as conn:
            return conn.exec_driver_sql(sql).scalar()

    def flush(self, timeout: float = 10.0) -> None:
        retried(lambda: self._flush(timeout))

    def _flush(self, timeout: float) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND backend_type = 'client backend'",
                (self.database,),
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                left = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = %s AND backend_type = 'client backend'",
                    (self.database,),
                ).scalar()
                if not left:
                    break
                time.sleep(0.02)

    def read(self) -> int:
        return retried(self._read)

    def _read(self) -> int:
        with self.admin.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            value = conn.exec_driver_sql(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.database,)
            ).scalar()
        return int(value or 0)

    def settled(self) -> int:
        """The count once every session of the database has published its own."""
        self.flush()
        return self.read()

    def vacuum(self) -> None:
        """``VACUUM ANALYZE`` the database, as autovacuum would between two runs (the servers
        this bench runs on in CI have it off): dead row versions cleared, statistics taken.
        Without it a run would plan on tables never analyzed, which no deployment does."""
        retried(self._vacuum)

    def _vacuum(self) -> None:
        url = self.admin.url.set(database=self.database)
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        finally:
            engine.dispose()


def retried(fn: Callable[[], T], attempts: int = 30) -> T:
    """Call ``fn``, retrying for a while if Postgres is restarting (others share this server)."""
    for _ in range(attempts - 1):
        try:
            return fn()
        except sa.exc.OperationalError:
            time.sleep(1)
    return fn()


@dataclass(frozen=True)
class Floor:
    """What the hardware allows: medians of one loopback Redis round trip and one PG commit."""

    redis_rtt: float
    pg_commit: float

    @property
    def per_task(self) -> float:
        """A task's irreducible cost: one message through Redis and one durable commit."""
        return self.redis_rtt + self.pg_commit


def measure_floor(broker: redis.Redis, database_url: str, n_redis: int, n_pg: int) -> Floor:
    """Time PING round trips and one-row INSERT + COMMIT, each done ``n`` times."""
    rtts = []
    for _ in range(n_redis):
        t = time.perf_counter()
        broker.ping()
        rtts.append(time.perf_counter() - t)
    commits = []
    with psycopg.connect(libpq_url(database_url)) as conn:
        conn.execute("CREATE TABLE bench_floor (id bigserial PRIMARY KEY, note text)")
        conn.commit()
        for _ in range(n_pg):
            t = time.perf_counter()
            conn.execute("INSERT INTO bench_floor (note) VALUES ('x')")
            conn.commit()
            commits.append(time.perf_counter() - t)
        conn.execute("DROP TABLE bench_floor")
        conn.commit()
    return Floor(statistics.median(rtts), statistics.median(commits))
