"""The `flowq` commands that run a server: ``worker``, ``api``, ``flower``, and ``db upgrade``
(SPEC section 3; the rest are in ``flowq.cli``)."""

from __future__ import annotations

import argparse
import os
import sys

from flowq.errors import EXIT_OK, UsageError
from flowq.settings import Settings


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.app import create_app

    settings = Settings.from_env()
    if settings.embedded:
        raise UsageError(
            "flowq worker needs a broker: set FLOWQ_BROKER_URL, e.g. redis://127.0.0.1:6379/0"
        )
    app = create_app(settings)
    argv = [
        "worker",
        f"--concurrency={args.concurrency}",
        f"--queues={args.queues}",
        f"--loglevel={args.loglevel}",
    ]
    # A unique node name by default: heartbeats and recovery tell workers apart by it.
    argv.append(f"--hostname={args.hostname or f'flowq-{os.getpid()}@%h'}")
    if args.pool:
        argv.append(f"--pool={args.pool}")
    app.worker_main(argv)
    return EXIT_OK


def cmd_api(args: argparse.Namespace) -> int:
    from flowq.api.server import serve

    serve(args.host, args.port)
    return EXIT_OK


def cmd_flower(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if settings.embedded:
        raise UsageError("flowq flower needs a broker: set FLOWQ_BROKER_URL")
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-b",
        settings.effective_broker_url,
        "flower",
        f"--port={args.port}",
    ]
    os.execv(sys.executable, argv)
    return EXIT_OK  # pragma: no cover


def cmd_db(args: argparse.Namespace) -> int:
    from flowq.store import Store

    store = Store(Settings.from_env().database_url)
    store.upgrade()
    print(f"state tables are up to date in {store.engine.url.render_as_string()}")
    store.dispose()
    return EXIT_OK
