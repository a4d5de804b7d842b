"""Plain Celery's side: the same no-op work as ``bench.tasks``, as ordinary Celery tasks.

The app takes flowq's Celery settings (``workers.config`` and the deployment's ``celeryconfig``)
and differs only where canvas needs it: a result backend, which chords require.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from celery import Celery

from bench import marks

QUEUE = "plain"
BROKER_ENV = "BENCH_PLAIN_BROKER"
BACKEND_ENV = "BENCH_PLAIN_BACKEND"


def _deployment_config(app: Celery) -> None:
    """Apply ``celeryconfig`` exactly as ``workers.app.create_app`` does, so settings match."""
    try:
        module = importlib.import_module(os.environ.get("FLOWQ_CELERY_CONFIG", "celeryconfig"))
    except ImportError:
        return
    app.conf.update(
        {k: v for k, v in vars(module).items() if k.islower() and not k.startswith("_")}
    )


def create_app(broker_url: str, result_backend: str) -> Celery:
    """A Celery app with flowq's settings and the four bench tasks, routed to ``plain``."""
    app = Celery("bench_plain", set_as_current=False)
    app.config_from_object("workers.config")
    _deployment_config(app)
    app.conf.broker_url = broker_url
    app.conf.result_backend = result_backend
    app.conf.task_default_queue = QUEUE

    @app.task(name="bench.noop", shared=False)
    def noop(*_args: Any, **_kwargs: Any) -> None:
        return None

    @app.task(name="bench.done", shared=False)
    def done(run: str, *_args: Any) -> None:
        marks.done(run)

    @app.task(name="bench.tick", shared=False)
    def tick(run: str, total: int) -> None:
        marks.tick(run, total)

    @app.task(name="bench.stamp", shared=False)
    def stamp(run: str) -> None:
        marks.stamp(run)

    return app


def app_from_env() -> Celery:
    """The app a plain worker process runs (``celery -A bench.plain_worker worker``)."""
    return create_app(os.environ[BROKER_ENV], os.environ[BACKEND_ENV])
