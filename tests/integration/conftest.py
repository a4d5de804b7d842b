"""A real distributed deployment for integration tests: Redis, Postgres, `flowq worker`s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flowq import Client, Settings
from tests.conftest import ROOT, fresh_postgres_database

FLOWQ = [sys.executable, "-m", "flowq.cli"]


@dataclass
class Cluster:
    """Environment of a running deployment, and its worker processes."""

    env: dict[str, str]
    logs: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def client(self) -> Client:
        return Client(self.settings)

    def flowq(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the `flowq` command against this deployment."""
        return subprocess.run(
            [*FLOWQ, *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def log_of(self, name: str) -> Path:
        """Where worker ``name`` (``start_worker``'s) writes its output."""
        return self.logs / f"{name}.log"

    def start_worker(
        self, name: str, *extra: str, concurrency: int = 2, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a `flowq worker` process and wait until it consumes."""
        log = self.log_of(name)
        proc = subprocess.Popen(
            [*FLOWQ, "worker", "-c", str(concurrency), "-n", f"{name}@%h", *extra],
            env={**self.env, **(env or {})},
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited: {log.read_text()[-2000:]}")
            if b"ready." in log.read_bytes():
                self.workers.append(proc)
                return proc
            time.sleep(0.1)
        proc.kill()
        raise RuntimeError(f"worker {name} did not become ready: {log.read_text()[-2000:]}")

    def stop_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        """Stop one worker (its whole process group)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc in self.workers:
            self.workers.remove(proc)


@pytest.fixture(scope="session")
def cluster(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two `flowq worker` processes (concurrency 2 each) on Redis and a fresh Postgres db."""
    with fresh_postgres_database("flowq_it") as db_url:
        logs = tmp_path_factory.mktemp("workers")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWQ_")}
        env.update(
            {
                "FLOWQ_BROKER_URL": redis_url,
                "FLOWQ_DATABASE_URL": db_url,
                "FLOWQ_FILE_ROOT": str(logs / "files"),
                "PYTHONPATH": str(ROOT),
            }
        )
        c = Cluster(env, logs)
        upgraded = c.flowq("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        try:
            c.start_worker("w1")
            c.start_worker("w2")
            yield c
        finally:
            for proc in list(c.workers):
                c.stop_worker(proc)


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    with cluster.client() as c:
        yield c
