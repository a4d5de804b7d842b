"""The producer API: register workflows, start executions, watch and control them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from flowq import states as S
from flowq.coordinator import Coordinator
from flowq.definition import Workflow
from flowq.errors import WaitTimeout
from flowq.execution import Started
from flowq.settings import Settings
from flowq.status import history_list, list_executions, status_document
from flowq.store import Store
from flowq.store.store import STORE_RETRY_SECONDS


class Client:
    """Talks to the state store and the broker named by the settings (SPEC section 4).

    With no broker configured (the embedded default) it also runs a Celery worker on threads
    inside this process, started on first use, so executions make progress without servers.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        concurrency: int = 8,
        store_retry_seconds: float = STORE_RETRY_SECONDS,
    ) -> None:
        from flowq.embedded import EmbeddedWorker
        from workers.app import (
            CeleryDispatcher,
            claim_hold_seconds,
            commit_batch_seconds,
            create_app,
            runtime_of,
        )

        self.settings = settings or Settings.from_env()
        self.settings.check(broker=not self.settings.embedded)
        # a call retries a lost store connection (a Postgres restart) this long, then raises;
        # embedded, the worker in this process writes through the same store, with no
        # reconciler behind it: it keeps the workers' 60 s
        if self.settings.embedded:
            store_retry_seconds = max(store_retry_seconds, STORE_RETRY_SECONDS)
        self.store = Store(self.settings.database_url, retry_seconds=store_retry_seconds)
        if self.store.is_sqlite:
            self.store.upgrade()
        self.app = create_app(self.settings)
        # Embedded: one private in-memory queue per client, consumed by its own worker thread.
        queue = f"flowq-embedded-{uuid.uuid4().hex[:8]}" if self.settings.embedded else None
        # the embedded worker claims through this coordinator: it holds claims like a worker
        hold, batch = (claim_hold_seconds(), commit_batch_seconds()) if queue else (0.0, 0.0)
        self.coordinator = Coordinator(
            self.store, CeleryDispatcher(self.app, queue), hold=hold, batch=batch
        )
        self._worker: EmbeddedWorker | None = None
        if queue is not None:
            runtime_of(self.app).use(self.coordinator)
            self._worker = EmbeddedWorker(self.app, queue, concurrency)

    @classmethod
    def from_env(cls) -> Client:
        """A client configured by the FLOWQ_* environment variables."""
        return cls(Settings.from_env())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the embedded worker, if any, and release connections."""
        if self._worker is not None:
            self._worker.stop()
        self.coordinator.close()
        self.store.dispose()

    def _ensure_worker(self) -> None:
        if self._worker is not None:
            self._worker.start()

    # -- definitions ---------------------------------------------------------------------------
    def register(self, workflow: Workflow, *, replace: bool = False) -> bool:
        """Store a definition; True if it was new or changed."""
        return self.coordinator.register(workflow, replace=replace)

    def definition(self, workflow_id: str, version: int | None = None) -> Workflow:
        """A registered definition, the newest version unless ``version`` is given."""
        return self.coordinator.definition(workflow_id, version)

    # -- executions ----------------------------------------------------------------------------
    def start(
        self,
        workflow_id: str,
        vars: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        idempotency_key: str | None = None,
        version: int | None = None,
    ) -> str:
        """Start an execution of a registered workflow; return its id."""
        return self.launch(
            workflow_id,
            vars,
            priority=priority,
            idempotency_key=idempotency_key,
            version=version,
        ).execution_id

    def launch(
        self,
        workflow_id: str,
        vars: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        idempotency_key: str | None = None,
        version: int | None = None,
    ) -> Started:
        """``start``, telling also whether it created the execution (``created`` is False when
        the idempotency key had started one already, even by a start running at the same
        time)."""
        self._ensure_worker()
        return self.coordinator.start(
            workflow_id,
            vars=vars,
            version=version,
            priority=priority,
            idempotency_key=idempotency_key,
        )

    def status(self, execution_id: str) -> dict[str, Any]:
        """The status document."""
        return self.store.read(lambda tx: status_document(tx, execution_id))

    def history(self, execution_id: str) -> list[dict[str, Any]]:
        """Every state change, oldest first."""
        return self.store.read(lambda tx: history_list(tx, execution_id))

    def list(
        self,
        *,
        state: str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[dict[str, Any]]:
        """Executions, newest first."""
        return self.store.read(
            lambda tx: list_executions(
                tx, state=state, workflow_id=workflow_id, limit=limit, before=before
            )
        )

    def wait(
        self, execution_id: str, timeout: float | None = None, poll: float = 0.05
    ) -> dict[str, Any]:
        """Block until the execution is completed, failed or cancelled; return its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.store.read(lambda tx: str(tx.execution(execution_id).state))
            if state in S.EXECUTION_ENDED:
                return self.status(execution_id)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"execution {execution_id} is still {state!r} after {timeout}s")
            time.sleep(poll)

    def pause(self, execution_id: str) -> dict[str, Any]:
        """Pause: no task starts after this; running tasks finish."""
        self.coordinator.pause(execution_id)
        return self.status(execution_id)

    def resume(self, execution_id: str) -> dict[str, Any]:
        """Continue a paused execution."""
        self._ensure_worker()
        self.coordinator.resume(execution_id)
        return self.status(execution_id)

    def cancel(self, execution_id: str) -> dict[str, Any]:
        """Cancel: running tasks are revoked, nothing more starts."""
        self.coordinator.cancel(execution_id)
        return self.status(execution_id)

    def retry(self, execution_id: str) -> dict[str, Any]:
        """Run a failed execution's failed and never-run tasks again."""
        self._ensure_worker()
        self.coordinator.retry(execution_id)
        return self.status(execution_id)
