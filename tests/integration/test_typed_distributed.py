"""Typed tasks, timeouts and the order example on real workers: Redis, Postgres, prefork pools."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
import yaml

from flowq import Client, Workflow
from tests.conftest import ROOT, fresh_postgres_database
from tests.engine.conftest import py
from tests.history_check import assert_legal_history
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration

INJECTION = "'; DROP TABLE inventory; --"
QUEUE = "typed_q"  # consumed only by the worker that has FLOWQ_CONN_SHOP


@dataclass
class Shop:
    """A worker with the `shop` connection on a fresh Postgres database."""

    url: str
    engine: sa.Engine


@pytest.fixture(scope="module")
def shop(cluster: Cluster) -> Iterator[Shop]:
    with fresh_postgres_database("flowq_shop") as url:
        typed = Cluster({**cluster.env, "FLOWQ_CONN_SHOP": url}, cluster.logs)
        proc = typed.start_worker("typed", "-Q", QUEUE, concurrency=2)
        engine = sa.create_engine(url)
        try:
            yield Shop(url, engine)
        finally:
            typed.stop_worker(proc)
            engine.dispose()


def ts(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


def run(client: Client, definition: dict[str, Any], vars: dict[str, Any] | None = None) -> Any:
    wf = Workflow.from_dict(definition)
    client.register(wf, replace=True)
    return client.wait(client.start(wf.id, vars or {}), timeout=120)


def attempt_durations(client: Client, execution_id: str, task_id: str) -> list[float]:
    started: datetime | None = None
    ran = []
    for event in client.history(execution_id):
        if event["task_id"] != task_id:
            continue
        if event["to"] == "running":
            started = ts(event["at"])
        elif event["from"] == "running" and started is not None:
            ran.append((ts(event["at"]) - started).total_seconds())
    return ran


# -- sql on Postgres --------------------------------------------------------------------------


def sql(task_id: str, query: str, deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "sql",
        "connection": "shop",
        "query": query,
        "depends_on": list(deps),
        "queue": QUEUE,
        **extra,
    }


def test_sql_on_postgres_binds_values_as_data(client: Client, shop: Shop) -> None:
    doc = run(
        client,
        {
            "id": "pg_sql",
            "tasks": [
                sql(
                    "create",
                    "CREATE TABLE stock (sku text PRIMARY KEY, qty integer NOT NULL, "
                    "price numeric(10, 2))",
                ),
                sql(
                    "insert",
                    "INSERT INTO stock VALUES (:sku, :qty, :price), ('A1', 10, 1.50)",
                    ("create",),
                    params={"sku": "{{ vars.sku }}", "qty": "{{ vars.qty }}", "price": 19.99},
                    expect_rowcount=2,
                ),
                sql(
                    "reserve",
                    "UPDATE stock SET qty = qty - :q WHERE sku = :sku AND qty >= :q "
                    "RETURNING sku, qty",
                    ("insert",),
                    params={"q": 4, "sku": "A1"},
                    expect_rowcount=1,
                ),
                sql("select", "SELECT sku, qty, price FROM stock ORDER BY qty", ("reserve",)),
                sql(
                    "too_many",
                    "UPDATE stock SET qty = qty - 100 WHERE sku = 'A1' AND qty >= 100",
                    ("select",),
                    expect_rowcount=1,
                    retries=2,
                    retry_backoff=0.05,
                ),
            ],
        },
        vars={"sku": INJECTION, "qty": 3},
    )
    t = doc["tasks"]
    assert t["reserve"]["result"] == {"rowcount": 1, "rows": [{"sku": "A1", "qty": 6}]}
    assert t["select"]["result"]["rows"] == [
        {"sku": INJECTION, "qty": 3, "price": 19.99},
        {"sku": "A1", "qty": 6, "price": 1.5},
    ]
    assert (t["too_many"]["state"], t["too_many"]["attempts"]) == ("failed", 1)
    assert t["too_many"]["error"] == (
        "PermanentError: sql connection 'shop': expected rowcount 1, got 0; rolled back"
    )
    with shop.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT sku, qty FROM stock ORDER BY qty")).all()
    assert [tuple(r) for r in rows] == [(INJECTION, 3), ("A1", 6)]


def test_sql_connection_unknown_to_the_worker_is_a_clear_task_error(client: Client) -> None:
    # The general workers have no FLOWQ_CONN_SHOP: the error names the variable to set.
    doc = run(
        client,
        {
            "id": "pg_unknown",
            "tasks": [
                {"id": "q", "type": "sql", "connection": "shop", "query": "SELECT 1", "retries": 2},
            ],
        },
    )
    q = doc["tasks"]["q"]
    assert (doc["state"], q["state"], q["attempts"]) == ("failed", "failed", 1)
    assert (
        q["error"] == "PermanentError: sql connection 'shop' is not configured: set FLOWQ_CONN_SHOP"
    )


# -- http and file ----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    calls: list[dict[str, Any]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.calls.append(body)
            count = len(self.calls)
        status = 503 if body.get("fail_until", 0) >= count else 200
        data = json.dumps({"got": body, "call": count}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    _Handler.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_and_file_tasks_on_workers(client: Client, cluster: Cluster, http_server: str) -> None:
    doc = run(
        client,
        {
            "id": "d_http_file",
            "tasks": [
                py("order", "value", params={"value": {"id": 9, "total": 12.5}}),
                {
                    "id": "charge",
                    "type": "http",
                    "depends_on": ["order"],
                    "method": "POST",
                    "url": "{{ vars.base }}/charge",
                    "retries": 2,
                    "retry_backoff": 0.05,
                    "json": {"amount": "{{ results.order.total }}", "fail_until": 1},
                },
                {
                    "id": "receipt",
                    "type": "file",
                    "depends_on": ["charge"],
                    "operation": "write",
                    "path": "receipts/{{ results.order.id }}.json",
                    "content": "{{ results.charge.body.got | tojson }}",
                },
                {
                    "id": "escape",
                    "type": "file",
                    "operation": "read",
                    "path": "../../etc/passwd",
                    "retries": 2,
                },
            ],
        },
        vars={"base": http_server},
    )
    t = doc["tasks"]
    assert (t["charge"]["state"], t["charge"]["attempts"]) == ("succeeded", 2)  # 503, then 200
    assert t["charge"]["result"]["body"] == {"got": {"amount": 12.5, "fail_until": 1}, "call": 2}
    root = Path(cluster.env["FLOWQ_FILE_ROOT"])
    assert json.loads((root / "receipts" / "9.json").read_text()) == {
        "amount": 12.5,
        "fail_until": 1,
    }
    assert (t["escape"]["state"], t["escape"]["attempts"]) == ("failed", 1)
    assert "escapes FLOWQ_FILE_ROOT" in t["escape"]["error"]


# -- timeouts under the prefork pool ----------------------------------------------------------


def test_soft_time_limit_fails_the_attempt_and_retries(client: Client) -> None:
    doc = run(
        client,
        {
            "id": "d_timeout",
            "tasks": [
                py(
                    "slow",
                    "sleep",
                    params={"seconds": 10},
                    timeout=1,
                    retries=1,
                    retry_backoff=0.1,
                    retry_jitter=False,
                ),
                py(
                    "second_try",
                    "slow_first",
                    params={"seconds": 10},
                    timeout=1,
                    retries=2,
                    retry_backoff=0.1,
                ),
            ],
        },
    )
    slow, second = doc["tasks"]["slow"], doc["tasks"]["second_try"]
    assert (slow["state"], slow["attempts"]) == ("failed", 2)
    assert slow["error"] == "TaskTimeout: the attempt ran longer than the task's timeout of 1s"
    ran = attempt_durations(client, doc["execution_id"], "slow")
    assert len(ran) == 2 and all(0.9 <= r < 3 for r in ran), ran
    assert (second["state"], second["attempts"], second["result"]) == (
        "succeeded",
        2,
        {"attempt": 2},
    )
    assert_legal_history(client.history(doc["execution_id"]))


def test_hard_time_limit_kills_a_task_that_ignores_the_soft_one(
    client: Client, shop: Shop, tmp_path: Path
) -> None:
    flag = tmp_path / "soft_limit_seen"
    doc = run(
        client,
        {
            "id": "d_hard_limit",
            "tasks": [
                py(
                    "stubborn",
                    "stubborn",
                    params={"seconds": 60, "flag": str(flag)},
                    timeout=1,
                    retries=2,
                    queue=QUEUE,
                ),
                py("after", deps=("stubborn",), queue=QUEUE),
            ],
        },
    )
    task = doc["tasks"]["stubborn"]
    assert flag.read_text() == "SoftTimeLimitExceeded"  # Celery's soft limit did raise inside it
    assert (doc["state"], task["state"], task["attempts"]) == ("failed", "failed", 1)
    assert task["error"] == (
        "TimeLimitExceeded: the attempt ignored its soft time limit and passed the hard limit "
        "of 6s; its worker process was killed"
    )
    (ran,) = attempt_durations(client, doc["execution_id"], "stubborn")
    assert 5.5 <= ran < 15, ran
    assert doc["tasks"]["after"]["state"] == "upstream_failed"
    assert_legal_history(client.history(doc["execution_id"]))
    # the worker replaced its killed pool process and still works
    again = run(client, {"id": "d_after_kill", "tasks": [py("a", "whoami", queue=QUEUE)]})
    assert again["state"] == "completed"


# -- the order example, distributed on Postgres -----------------------------------------------


def test_order_example_on_workers_with_postgres(
    client: Client, cluster: Cluster, shop: Shop
) -> None:
    definition = yaml.safe_load((ROOT / "examples" / "order_processing.yaml").read_text())
    definition["defaults"]["queue"] = QUEUE  # the worker that has FLOWQ_CONN_SHOP
    doc = run(client, definition, {"order_id": 4242, "sku": "WIDGET-2", "quantity": 3})
    assert doc["state"] == "completed", doc
    t = doc["tasks"]
    assert t["charge"]["result"]["body"]["status"] == "paid"
    assert t["reserve_stock"]["result"] == {"rowcount": 1, "rows": [{"sku": "WIDGET-2", "qty": 47}]}
    assert (t["notify"]["state"], t["release_stock"]["state"]) == ("succeeded", "skipped")
    with shop.engine.connect() as conn:
        qty = conn.execute(sa.text("SELECT qty FROM inventory WHERE sku = 'WIDGET-2'")).scalar()
    assert qty == 47
    receipt = Path(cluster.env["FLOWQ_FILE_ROOT"]) / "receipts" / "4242.json"
    assert json.loads(receipt.read_text())["amount"] == 73.5
    payment_url = t["open_shop"]["result"]["payment_url"]
    notes = requests.get(f"{payment_url}/notifications", timeout=5).json()
    assert [n["order_id"] for n in notes] == [4242]
