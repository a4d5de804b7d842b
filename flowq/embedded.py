"""The embedded default: a Celery worker on threads inside this process, no servers."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Celery
from celery.app.trace import setup_worker_optimizations
from celery.worker import state as worker_state

from flowq.errors import FlowqError

log = logging.getLogger("flowq.embedded")

DEFAULT_CONCURRENCY = 8


class EmbeddedWorker:
    """Runs the app's worker in a background thread (threads pool) until stopped."""

    def __init__(self, app: Celery, queue: str, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.app = app
        self.queue = queue
        self.concurrency = concurrency
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: Any = None

    def start(self, timeout: float = 10.0) -> None:
        """Start consuming; returns once the worker is ready."""
        if self._thread is not None:
            return
        hostname = f"flowq-embedded-{os.getpid()}@localhost"
        # Celery's thread pool resolves tasks through the process-wide default app; make it ours.
        # (So one process runs one embedded worker at a time: the last one started.)
        setup_worker_optimizations(self.app, hostname)
        self._worker = self.app.WorkController(
            app=self.app,
            concurrency=self.concurrency,
            pool="threads",
            hostname=hostname,
            loglevel=logging.WARNING,
            logfile=None,
            ready_callback=lambda _consumer: self._ready.set(),
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            queues=[self.queue],
        )
        self._thread = threading.Thread(
            target=self._worker.start, name="flowq-embedded", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise FlowqError("the embedded worker did not start")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop consuming and wait for running tasks to finish."""
        if self._thread is None:
            return
        # Ask for a warm shutdown the way Celery's own signal handlers do; the consumer sees it
        # between two polls of the in-memory queue, and a poll waits up to 2 s for a message:
        # wake it with an empty one (ignored: it names no execution).
        worker_state.should_stop = 0
        deadline = time.monotonic() + timeout
        try:
            with self.app.connection_for_write() as conn:
                queue = conn.SimpleQueue(self.queue)
                while self._thread.is_alive() and time.monotonic() < deadline:
                    queue.put({"flowq": "wake-up"})
                    self._thread.join(0.05)
                queue.close()
        finally:
            worker_state.should_stop = None
        self._thread = None
