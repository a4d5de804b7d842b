"""A Postgres server that accepts a connection and never answers does not hang the store.

libpq waits on such a server (or on a host that drops packets) for as long as the operating
system lets it: every call, and every retry of ``Store.transact``, would wait that long. flowq
gives new connections ``CONNECT_TIMEOUT`` seconds unless the URL sets ``connect_timeout``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from flowq.store import Store
from flowq.store import engine as engine_module


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener completes TCP handshakes (the kernel does) and never speaks."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _timed_failure(store: Store, *, single: bool) -> float:
    started = time.monotonic()
    with pytest.raises((sa.exc.OperationalError, psycopg.OperationalError)) as caught:
        store.transact(lambda tx: tx.stale_waiting(tx.now), single=single)
    assert "timeout" in str(caught.value).lower(), caught.value
    return time.monotonic() - started


@pytest.mark.parametrize("single", [False, True], ids=["pooled session", "hot-path session"])
def test_a_silent_server_fails_the_call_after_the_connect_timeout(
    silent_port: int, single: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "CONNECT_TIMEOUT", 1)
    store = Store(f"postgresql+psycopg://flowq@127.0.0.1:{silent_port}/flowq", retry_seconds=0)
    try:
        assert 0.9 < _timed_failure(store, single=single) < 5
    finally:
        store.dispose()


def test_the_url_s_own_connect_timeout_wins(silent_port: int) -> None:
    url = f"postgresql+psycopg://flowq@127.0.0.1:{silent_port}/flowq?connect_timeout=2"
    store = Store(url, retry_seconds=0)
    try:
        assert 1.9 < _timed_failure(store, single=False) < 6
    finally:
        store.dispose()


def test_a_timeout_the_user_set_elsewhere_is_left_to_libpq(monkeypatch: pytest.MonkeyPatch) -> None:
    url = sa.engine.make_url("postgresql+psycopg://flowq@127.0.0.1/flowq")
    assert engine_module.connect_timeout(url) == {"connect_timeout": engine_module.CONNECT_TIMEOUT}
    assert engine_module.connect_timeout(url.update_query_dict({"service": "flowq"})) == {}
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "3")
    assert engine_module.connect_timeout(url) == {}
