"""CPU time per task of each side's processes, read from ``/proc``: where a side's time goes.

On a machine where both sides are CPU-bound, the wall-time ratio follows CPU, so the report
splits each run's CPU by process class: the worker main processes, their pool children, the
Postgres backends of the bench database (flowq's store; plain Celery has none), the broker's
``redis-server`` (a private one only: with ``--redis-url`` its pid is unknown) and this process
(the producer: the start calls and, on flowq's side, the harness's 2 ms polls of the store).
Processes that end during a run lose their share; Linux only (empty elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

ROLES = ("main", "pool", "postgres", "redis", "producer")
PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) that process ``pid`` used so far; 0 if it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a prefork worker's pool)."""
    out: list[int] = []
    try:
        for thread in (PROC / str(pid) / "task").iterdir():
            out += [int(c) for c in (thread / "children").read_text().split()]
    except OSError:
        pass
    return out


def backends(admin: sa.Engine, db_name: str) -> list[int]:
    """The pids of the Postgres backends serving database ``db_name``."""
    with admin.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (db_name,)
        )
        return [int(r[0]) for r in rows]


Snapshot = dict[str, dict[int, float]]  # role -> pid -> CPU seconds


@dataclass
class CpuMeter:
    """Takes snapshots of one side's processes and turns two of them into ms per task."""

    admin: sa.Engine
    db_name: str
    broker_pid: int | None
    mains: Callable[[str], list[int]]  # side name -> its worker processes' pids

    @property
    def available(self) -> bool:
        return (PROC / "self" / "stat").exists()

    def take(self, side: str) -> Snapshot:
        """CPU so far of the side's worker processes, their pools, the producer, the broker,
        and (flowq) the bench database's Postgres backends."""
        if not self.available:
            return {}
        mains = self.mains(side)
        times = os.times()
        snap: Snapshot = {
            "main": {p: process_cpu(p) for p in mains},
            "pool": {c: process_cpu(c) for p in mains for c in children(p)},
            "producer": {0: times.user + times.system},
        }
        if side == "flowq":
            snap["postgres"] = {p: process_cpu(p) for p in backends(self.admin, self.db_name)}
        if self.broker_pid is not None:
            snap["redis"] = {self.broker_pid: process_cpu(self.broker_pid)}
        return snap

    def since(self, before: Snapshot, side: str, tasks: int) -> dict[str, float]:
        """CPU milliseconds per task of each role between ``before`` and now."""
        if not before or not tasks:
            return {}
        after = self.take(side)
        used: dict[str, float] = {}
        for role, pids in after.items():
            then = before.get(role, {})
            # processes new since ``before`` (a restarted pool) count from zero
            spent = sum(cpu - then.get(pid, 0.0) for pid, cpu in pids.items())
            used[role] = 1000 * max(spent, 0.0) / tasks
        return used
