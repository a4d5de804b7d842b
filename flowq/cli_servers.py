"""The `flowq` commands that run a server: ``worker``, ``api``, ``flower``, and ``db upgrade``
(SPEC section 3; the rest are in ``flowq.cli``)."""

from __future__ import annotations

import argparse
import os
import socket
import sys

from flowq.errors import EXIT_OK, FlowqError, UsageError
from flowq.settings import Settings


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.app import create_app

    settings = Settings.from_env()
    if settings.embedded:
        raise UsageError(
            "flowq worker needs a broker: set FLOWQ_BROKER_URL, e.g. redis://127.0.0.1:6379/0"
        )
    settings.check()
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


def check_listen(host: str, port: int) -> None:
    """Fail in one line now if the server could not listen on ``host:port`` (a port in use,
    an unknown host) rather than in the server's own log and traceback later."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            if family == socket.AF_INET6:  # as asyncio's servers do: "::" is not IPv4 too
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        raise FlowqError(f"cannot listen on {host or '*'}:{port}: {exc.strerror or exc}") from exc


def cmd_api(args: argparse.Namespace) -> int:
    from flowq.api.server import serve

    check_listen(args.host, args.port)
    serve(args.host, args.port)
    return EXIT_OK


def cmd_flower(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if settings.embedded:
        raise UsageError("flowq flower needs a broker: set FLOWQ_BROKER_URL")
    settings.check(database=False)
    if not any(os.environ.get(f"FLOWER_{name}") for name in ("ADDRESS", "UNIX_SOCKET")):
        check_listen("", args.port)  # by default Flower listens on every interface
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
    from flowq.store.migrate import HEAD, current_revision

    settings = Settings.from_env()
    settings.check(broker=False)
    store = Store(settings.database_url)
    try:
        before = current_revision(store.engine)
        store.upgrade()
    finally:
        store.dispose()
    where = store.engine.url.render_as_string()
    if before == HEAD:
        print(f"state tables are up to date in {where}")
    elif before is None:
        print(f"state tables created (revision {HEAD}) in {where}")
    else:
        print(f"state tables migrated from revision {before} to {HEAD} in {where}")
    return EXIT_OK
