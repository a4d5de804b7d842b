"""GET /healthz asks the broker and the store for real: 503 names the one that is down."""

from __future__ import annotations

import time

from tests.api.conftest import ServeApi, free_port
from tests.conftest import REDIS_URL, require_service


def test_embedded_broker_and_sqlite_store_are_ok(serve_api: ServeApi) -> None:
    with serve_api() as api:
        response = api.http.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_a_broker_on_a_closed_port_is_503(serve_api: ServeApi) -> None:
    with serve_api(broker_url=f"redis://127.0.0.1:{free_port()}/0") as api:
        started = time.monotonic()
        response = api.http.get("/healthz")
        assert time.monotonic() - started < 5, "a down broker must not hang the check"
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["store"] == "ok"
    assert body["checks"]["broker"] != "ok" and "\n" not in body["checks"]["broker"]


def test_a_store_on_a_closed_port_is_503(serve_api: ServeApi) -> None:
    url = f"postgresql+psycopg://flowq@127.0.0.1:{free_port()}/flowq"
    with serve_api(database_url=url) as api:
        response = api.http.get("/healthz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["broker"] == "ok"
    assert "OperationalError" in checks["store"] and "refused" in checks["store"]


def test_a_real_redis_broker_is_ok(serve_api: ServeApi) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    with serve_api(broker_url=f"{REDIS_URL}/12") as api:
        response = api.http.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
