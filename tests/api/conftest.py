"""Fixtures for API tests: the real app served by uvicorn on a free port, over an embedded client.

Tests talk HTTP to it with httpx, as any user would; ``api.client`` is the flowq Client behind
the server (embedded worker threads, a fresh SQLite store).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from flowq import Client, Settings
from flowq.api import create_api
from tests.conftest import ROOT, server_process


@dataclass
class Api:
    """A served API: its base URL, an HTTP client for it, and the flowq Client behind it."""

    url: str
    http: httpx.Client
    client: Client
    app: FastAPI

    def register(self, definition: dict[str, Any]) -> None:
        response = self.http.post("/workflows", json=definition)
        assert response.status_code == 201, response.text

    def start(self, workflow_id: str, **body: Any) -> dict[str, Any]:
        response = self.http.post(f"/workflows/{workflow_id}/executions", json=body)
        assert response.status_code == 201, response.text
        doc: dict[str, Any] = response.json()
        return doc

    def wait(self, execution_id: str, timeout: float = 30) -> dict[str, Any]:
        """Poll GET /executions/{id} until the execution ended."""
        return self.wait_until(
            execution_id,
            lambda doc: doc["state"] in ("completed", "failed", "cancelled"),
            lambda doc: f"still {doc['state']} after {timeout}s",
            timeout,
        )

    def wait_until(
        self,
        execution_id: str,
        ready: Callable[[dict[str, Any]], bool],
        why: Callable[[dict[str, Any]], str],
        timeout: float = 30,
        every: float = 0.05,
    ) -> dict[str, Any]:
        """Poll GET /executions/{id} until ``ready(doc)``; fail with ``why(doc)`` after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            doc: dict[str, Any] = self.http.get(f"/executions/{execution_id}").json()
            if ready(doc):
                return doc
            assert time.monotonic() < deadline, why(doc)
            time.sleep(every)


def free_port() -> int:
    """A TCP port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ApiProcess:
    """A running `flowq api` process."""

    url: str
    pid: int


@contextmanager
def flowq_api_process(env: dict[str, str], log: Path) -> Iterator[ApiProcess]:
    """Run `flowq api` as its own process with ``env``; yield it once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "flowq.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    env = {**env, "PYTHONPATH": str(ROOT)}
    with server_process("flowq api", argv, env, log, f"{url}/healthz") as proc:
        yield ApiProcess(url, proc.pid)


def embedded_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of an embedded deployment on a fresh SQLite store in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWQ_")}
    env["FLOWQ_DATABASE_URL"] = f"sqlite:///{tmp_path / 'api-state.db'}"
    env["FLOWQ_FILE_ROOT"] = str(tmp_path / "files")
    return {**env, **extra}


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free port; yield its base URL."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets (else Nagle costs 40 ms)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


ServeApi = Callable[..., AbstractContextManager[Api]]


@pytest.fixture
def serve_api(tmp_path: Path) -> ServeApi:
    """A factory: ``with serve_api(api_token="t", max_body=...) as api:`` serves one API."""

    @contextmanager
    def serve(
        *, headers: dict[str, str] | None = None, max_body: int | None = None, **changes: Any
    ) -> Iterator[Api]:
        settings = replace(Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}"), **changes)
        with Client(settings) as client:
            app = create_api(client, max_body=max_body)
            with (
                served(app) as url,
                httpx.Client(base_url=url, headers=headers, timeout=30) as http,
            ):
                yield Api(url, http, client, app)

    return serve


@pytest.fixture
def api(serve_api: ServeApi) -> Iterator[Api]:
    """The API with default settings (no token) on an embedded client."""
    with serve_api() as served_api:
        yield served_api
