"""A transaction's per-task hot path, one statement each on Postgres (a base of ``Tx``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flowq.store import hotpath
from flowq.store.hotpath import Claimed, Counters, Ended, Meta, Succeeded
from flowq.store.tx import TxBase
from flowq.store.wire import Pending, Wire


class HotPath(TxBase):
    """``Tx``'s claim, task end, success, start and queueing: ``flowq.store.hotpath``'s single
    statements on Postgres, the generic compare-and-set methods on SQLite."""

    def claim_queued(
        self,
        execution_id: str,
        task_id: str,
        result_ids: Iterable[str],
        *,
        celery_id: str | None,
        worker: str | None,
        with_meta: bool = False,
    ) -> Claimed | None:
        """queued -> running while the execution runs: the attempt number and upstream results.

        ``with_meta``: the execution's fixed fields (``Meta``) too. None when the task is not
        queued or its execution is not running. In a ``holding`` transaction the row is locked,
        not written yet (``hotpath.claim_queued``).
        """
        ids = list(result_ids)
        if self.postgres:
            self.flush()
            return hotpath.claim_queued(
                self.raw,
                self.now,
                execution_id,
                task_id,
                ids,
                celery_id,
                worker,
                with_meta,
                lock_only=self.holding,
            )
        values: dict[str, Any] = {"started_at": self.now, "celery_id": celery_id, "worker": worker}
        attempt = self.claim(execution_id, task_id, "queued", **values)
        if attempt is None:
            return None
        results = self.results(execution_id, ids)
        execution = self.execution(execution_id)
        meta = Meta.of(execution) if with_meta else None
        return Claimed(attempt, results, meta, int(execution.tasks_remaining))

    def end_task(
        self,
        execution_id: str,
        task_id: str,
        to: str,
        reason: str | None,
        successors: Sequence[str],
        *,
        result: Any = None,
        error: str | None = None,
    ) -> Ended | None:
        """running -> ``to`` (succeeded or failed), counted against each successor and against
        the execution's remaining tasks; None (and nothing written) when it was not running.

        ``result`` is stored only on success; a failure keeps the stored result.
        """
        if self.postgres:
            self.flush()
            return hotpath.end_task(
                self.raw, self.now, execution_id, task_id, to, reason, successors, result, error
            )
        values: dict[str, Any] = {"error": error, "finished_at": self.now}
        if to == "succeeded":
            values["result"] = result
        if not self.cas_task(execution_id, task_id, "running", to, reason, **values):
            return None
        counters = []
        for succ in successors:
            row = self.count_upstream_end(execution_id, succ, to)
            if row is not None:
                counters.append(Counters.of(succ, row))
        remaining, state = self.settle_count(execution_id, 1)
        return Ended(counters, remaining, str(state))

    def succeed_fast(
        self,
        execution_id: str,
        task_id: str,
        successors: Sequence[str],
        result: Any,
        commit: Callable[[], None] | None = None,
        claiming: hotpath.Claiming | None = None,
    ) -> Succeeded | None:
        """Postgres, autocommit only: a success in one statement (``hotpath.succeed_fast``).

        Every successor must be ``all_success`` without ``when``. None, with nothing written,
        when the task is not running or the coordinator must decide something: then run the
        transactional end (``end_task`` and what follows). ``commit``: on a held claim's
        connection (``flowq.store.held``), what ends its transaction; ``claiming``: that
        claim, when its row is locked and not written yet.
        """
        if not self.postgres or not self.raw.autocommit:
            raise NotImplementedError("succeed_fast is Postgres' single-statement success")
        return hotpath.succeed_fast(
            self.raw, self.now, execution_id, task_id, successors, result, commit, claiming
        )

    def send_succeed_fast(
        self, execution_id: str, task_id: str, result: Any, claiming: hotpath.Claiming | None
    ) -> Pending:
        """On a held claim's ``Wire`` only: send the success of a task without successors
        (``hotpath.send_succeed_fast``), to be committed by a Sync and read later
        (``hotpath.succeeded_of``)."""
        if not isinstance(self.raw, Wire):
            raise NotImplementedError("send_succeed_fast runs on a held claim's Wire")
        pending = hotpath.send_succeed_fast(
            self.raw, self.now, execution_id, task_id, (), result, claiming
        )
        assert isinstance(pending, Pending)
        return pending

    def send_succeed_leaf(
        self, execution_id: str, task_id: str, result: Any, claiming: hotpath.Claiming | None
    ) -> Pending:
        """On a held claim's ``Wire`` only: send the success of a task without successors into
        its connection's commit batch (``hotpath.send_succeed_leaf``)."""
        if not isinstance(self.raw, Wire):
            raise NotImplementedError("send_succeed_leaf runs on a held claim's Wire")
        return hotpath.send_succeed_leaf(
            self.raw, self.now, execution_id, task_id, result, claiming
        )

    def start_execution(
        self,
        execution: dict[str, Any],
        task_deps: Sequence[tuple[str, int]],
        history: Sequence[tuple[str | None, str | None, str, str]],
        *,
        newest: bool,
    ) -> bool:
        """Postgres only: a new running execution with its tasks, roots queued, in one statement.

        Written only while the execution's digest and version are still its workflow's (the
        newest when ``newest``); False, with nothing written, otherwise or when the execution
        or its idempotency key exists. ``history`` rows are (task, from, to, reason).
        """
        if not self.postgres:
            raise NotImplementedError("start_execution is Postgres' single-statement start")
        self.flush()
        return hotpath.start_execution(self.raw, self.now, execution, task_deps, history, newest)

    def queue_pending(self, execution_id: str, task_ids: Sequence[str], reason: str) -> list[str]:
        """pending -> queued for each of ``task_ids``; the ids that moved, in the given order."""
        if self.postgres:
            self.flush()
            moved = set(hotpath.queue_pending(self.raw, self.now, execution_id, task_ids, reason))
            return [tid for tid in task_ids if tid in moved]
        return [
            tid
            for tid in task_ids
            if self.cas_task(execution_id, tid, "pending", "queued", reason, queued_at=self.now)
        ]
