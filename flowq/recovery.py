"""Recovery: worker heartbeats, and a reconciler that re-dispatches what the broker lost.

The store is the source of truth; Redis and Celery messages can be lost (a worker killed with
SIGKILL, Redis restarted or flushed). Each worker process records a heartbeat. The reconciler,
run by every `flowq worker` on a timer, finds

* `running` tasks whose worker has not been seen for ``lease`` seconds: that attempt is lost;
  the task goes back to `queued` and is dispatched again, or fails once its attempts are used;
* `queued` / `retrying` tasks still waiting ``redispatch_after`` seconds after they were due:
  their message is published again (a duplicate is harmless: only one claim can win);
* sooner, after ``lease`` seconds, a `queued` task whose claim a lost worker held and never
  committed (``flowq.store.held``): Postgres rolled the claim back, and the message waits
  unacknowledged for the broker's visibility timeout. The worker's mark of that claim
  (``workers.markers``) tells; the task's message is published again once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from flowq.coordinator import Coordinator
from flowq.store import Tx, utcnow

log = logging.getLogger("flowq.recovery")


def env_seconds(name: str, default: float) -> float:
    """A number of seconds from the environment; the default when unset or not a number."""
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


@dataclass(frozen=True)
class RecoverySettings:
    """Timings of heartbeats and recovery, from FLOWQ_HEARTBEAT_SECONDS, FLOWQ_LEASE_SECONDS,
    FLOWQ_REDISPATCH_SECONDS."""

    heartbeat: float = 2.0
    lease: float = 20.0
    redispatch_after: float = 120.0

    @classmethod
    def from_env(cls) -> RecoverySettings:
        """Read the timings from the environment."""
        return cls(
            heartbeat=env_seconds("FLOWQ_HEARTBEAT_SECONDS", cls.heartbeat),
            lease=env_seconds("FLOWQ_LEASE_SECONDS", cls.lease),
            redispatch_after=env_seconds("FLOWQ_REDISPATCH_SECONDS", cls.redispatch_after),
        )


@dataclass(frozen=True)
class Recovered:
    """What one reconciler pass did."""

    requeued: int
    redispatched: int


class HeldMark(Protocol):
    """A mark of a held claim, as ``workers.markers`` keeps it."""

    @property
    def worker(self) -> str | None: ...
    @property
    def attempt(self) -> int | None: ...
    @property
    def started(self) -> datetime: ...


# The marks of these tasks' held claims, in order (None: no mark)
MarkLookup = Callable[[Sequence[tuple[str, str]]], Sequence[HeldMark | None]]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass
class HeldClaims:
    """What the reconciler needs to find claims that lost workers held: the workers' marks,
    and where the last pass stopped in the queued tasks (a long queue takes several)."""

    marks: MarkLookup
    after: tuple[datetime, str, str] | None = None  # the last task seen, in the scan's order
    page: int = 200


def orphaned_holds(
    coordinator: Coordinator,
    settings: RecoverySettings,
    held: HeldClaims,
    rows: Sequence[Any],
    cutoff: datetime,
) -> list[tuple[str, str]]:
    """Of the queued tasks ``rows`` (``Tx.queued_before``), those whose latest dispatch was
    claimed, held and never committed by a worker not seen since ``cutoff``: the mark names
    the attempt the rolled-back claim made (the row's next), and was written after that
    dispatch. Hosts' clocks may differ by up to half the lease; a task republished since was
    republished a whole lease after its worker's last heartbeat, so it is not taken again."""
    last = rows[-1] if len(rows) >= held.page else None  # else the next pass starts over
    held.after = (last.updated_at, last.execution_id, last.task_id) if last is not None else None
    if not rows:
        return []
    found = held.marks([(r.execution_id, r.task_id) for r in rows])
    skew = timedelta(seconds=settings.lease / 2)
    claimed = [
        (row, mark)
        for row, mark in zip(rows, found, strict=True)
        if mark is not None
        and mark.attempt == row.attempts + 1
        and (row.queued_at is None or _aware(mark.started) >= _aware(row.queued_at) - skew)
    ]
    if not claimed:
        return []
    alive = coordinator.store.read(lambda tx: tx.live_workers(cutoff))
    return [(row.execution_id, row.task_id) for row, mark in claimed if mark.worker not in alive]


def reconcile(
    coordinator: Coordinator, settings: RecoverySettings, held: HeldClaims | None = None
) -> Recovered:
    """One pass: recover tasks of lost workers, re-publish overdue messages (and, given the
    workers' marks of ``held`` claims, the messages of claims that lost workers held)."""
    now = utcnow()
    lost = coordinator.store.read(
        lambda tx: tx.lost_running(now - timedelta(seconds=settings.lease))
    )
    requeued = 0
    for row in lost:
        reason = f"worker {row.worker or '(unknown)'} lost: no heartbeat for {settings.lease:g}s"
        if coordinator.recover_lost(row.execution_id, row.task_id, reason):
            requeued += 1
    lease_cutoff = now - timedelta(seconds=settings.lease)
    waiting, queued = coordinator.store.read(
        lambda tx: (
            tx.stale_waiting(now - timedelta(seconds=settings.redispatch_after)),
            tx.queued_before(lease_cutoff, held.after, held.page) if held is not None else [],
        )
    )
    items = [(r.execution_id, r.task_id) for r in waiting]
    if held is not None:
        seen = set(items)
        orphans = orphaned_holds(coordinator, settings, held, queued, lease_cutoff)
        items += [item for item in orphans if item not in seen]
    redispatched = coordinator.redispatch(items)
    if requeued or redispatched:
        log.warning(
            "recovery: requeued %d lost task(s), re-published %d message(s)", requeued, redispatched
        )
    return Recovered(requeued, redispatched)


class Maintenance:
    """A daemon thread in a worker: heartbeat every few seconds, reconcile after each."""

    def __init__(
        self,
        coordinator: Coordinator,
        name: str,
        settings: RecoverySettings | None = None,
        marks: MarkLookup | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.name = name
        self.settings = settings or RecoverySettings.from_env()
        self.held = HeldClaims(marks) if marks is not None else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowq-maintenance", daemon=True)

    def start(self) -> None:
        """Record the first heartbeat now, then keep going in the background."""
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and forget this worker (it shut down cleanly)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        try:
            self.coordinator.store.transact(lambda tx: tx.forget_worker(self.name))
        except Exception:
            log.exception("could not remove worker %s from the store", self.name)

    def beat(self) -> None:
        """Record that this worker is alive."""
        pid = os.getpid()

        def body(tx: Tx) -> None:
            tx.heartbeat(self.name, pid)

        self.coordinator.store.transact(body)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat):
            try:
                self.beat()
                reconcile(self.coordinator, self.settings, self.held)
            except Exception:
                log.exception("heartbeat or recovery pass failed; trying again")
