"""The environment one benchmark run owns: Redis servers, a Postgres database, worker processes.

By default the broker is a private ``redis-server`` on a free loopback port (the server's
counters then hold only this run's traffic); ``--redis-url`` uses an existing server instead.
Marks (``bench.marks``) always go to a second private server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis
import sqlalchemy as sa

from bench import marks, plain
from bench.counters import retried

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "FLOWQ_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
READY_TIMEOUT = 90.0
FLOWQ_WORKER = [sys.executable, "-m", "flowq.cli", "worker", "--queues=flowq"]
PLAIN_WORKER = [
    *(sys.executable, "-m", "celery", "-A", "bench.plain_worker", "worker"),
    f"--queues={plain.QUEUE}",
]
DBS = (12, 13, 14)  # flowq's broker, plain Celery's broker and result backend: apart from tests'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throw-away ``redis-server`` on loopback: no persistence, like the shared one here."""

    def __init__(self, workdir: Path, name: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: install it or pass --redis-url")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        log = (workdir / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--databases",
                "16",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server {name} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM a process group started by this module, then SIGKILL it if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@dataclass
class Workers:
    """The worker nodes of one side: ``nodes`` processes, each a prefork pool of ``concurrency``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logs: Path
    nodes: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.nodes):
            log = self.logs / f"{self.name}{i}.log"
            argv = [*self.argv, f"--hostname={self.name}{i}@%h"]
            proc = subprocess.Popen(
                argv,
                env=self.env,
                cwd=ROOT,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs.append(proc)
            deadline = time.monotonic() + READY_TIMEOUT
            while b"ready." not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}{i} did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.procs.clear()

    def restart(self) -> None:
        self.stop()
        self.start()


class Env:
    """Everything a run needs, torn down by ``close`` (or the ``with`` block)."""

    def __init__(
        self,
        *,
        nodes: int = 1,
        concurrency: int = 2,
        redis_url: str | None = None,
        keep: bool = False,
        plain: bool = True,
        admin_url: str = PG_ADMIN_URL,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.nodes, self.concurrency, self.keep = nodes, concurrency, keep
        self.with_plain = plain
        self.worker_env = dict(worker_env or {})
        self.workdir = Path(tempfile.mkdtemp(prefix="flowq-bench-"))
        self._servers: list[RedisServer] = []
        self.broker_pid: int | None = None  # the private broker's redis-server, if ours
        self.db_name = f"flowq_bench_{uuid.uuid4().hex[:8]}"
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.database_url = admin_url.rsplit("/", 1)[0] + f"/{self.db_name}"
        self.broker_server = (redis_url or self._private("broker")).rstrip("/")
        if redis_url is None:
            self.broker_pid = self._servers[0].proc.pid
        self.marks_url = self._private("marks") + "/0"
        self.flowq_broker = f"{self.broker_server}/{DBS[0]}"
        self.plain_broker = f"{self.broker_server}/{DBS[1]}"
        self.plain_backend = f"{self.broker_server}/{DBS[2]}"
        self.flowq: Workers | None = None
        self.plain: Workers | None = None

    def _private(self, name: str) -> str:
        server = RedisServer(self.workdir, name)
        self._servers.append(server)
        return server.url

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWQ_", "BENCH_"))}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "FLOWQ_BROKER_URL": self.flowq_broker,
                "FLOWQ_DATABASE_URL": self.database_url,
                "FLOWQ_FILE_ROOT": str(self.workdir / "files"),
                marks.ENV: self.marks_url,
                plain.BROKER_ENV: self.plain_broker,
                plain.BACKEND_ENV: self.plain_backend,
                **self.worker_env,
            }
        )
        return env

    def __enter__(self) -> Env:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Create the database and its tables, flush the broker dbs, start both sides' workers."""
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.db_name}"')
        env = self.base_env()
        subprocess.run(
            [sys.executable, "-m", "flowq.cli", "db", "upgrade"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        for url in (self.flowq_broker, self.plain_broker, self.plain_backend, self.marks_url):
            redis.Redis.from_url(url).flushdb()
        common = [f"--concurrency={self.concurrency}", "--pool=prefork", "--loglevel=INFO"]
        self.flowq = Workers("flowq", [*FLOWQ_WORKER, *common], env, self.workdir, self.nodes)
        self.plain = Workers("plain", [*PLAIN_WORKER, *common], env, self.workdir, self.nodes)
        self.flowq.start()
        if self.with_plain:
            self.plain.start()

    def _drop_database(self) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (self.db_name,),
            )
            if not self.keep:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.db_name}"')

    def worker_pids(self, side: str) -> list[int]:
        """The worker (main) processes of ``side`` ("flowq" or "celery")."""
        workers = self.flowq if side == "flowq" else self.plain
        return [p.pid for p in workers.procs] if workers is not None else []

    def reset_plain(self) -> None:
        """Drop whatever a timed-out plain run left queued or running, and restart its workers."""
        assert self.plain is not None
        self.plain.stop()
        for url in (self.plain_broker, self.plain_backend):
            redis.Redis.from_url(url).flushdb()
        self.plain.start()

    def close(self) -> None:
        for side in (self.flowq, self.plain):
            if side is not None:
                side.stop()
        for server in self._servers:
            server.stop()
        try:
            retried(self._drop_database)
        finally:
            self.admin.dispose()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
