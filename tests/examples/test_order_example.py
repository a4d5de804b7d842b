"""The order example end to end, embedded: python, http, sql (SQLite), file, a conditional http."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flowq import Client, Settings, Workflow
from tests.conftest import ROOT
from tests.history_check import assert_legal_history

EXAMPLE = ROOT / "examples" / "order_processing.yaml"


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example's environment: an inventory database and a file root, both fresh."""
    db = tmp_path / "shop.db"
    monkeypatch.setenv("FLOWQ_CONN_SHOP", f"sqlite:///{db}")
    monkeypatch.setenv("FLOWQ_FILE_ROOT", str(tmp_path / "files"))
    return db


@pytest.fixture
def client(tmp_path: Path, shop: Path) -> Iterator[Client]:
    with Client(Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}")) as c:
        c.register(Workflow.from_file(EXAMPLE))
        yield c


def stock(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT sku, qty FROM inventory").fetchall())


def receipt(tmp_path: Path, order_id: int) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (tmp_path / "files" / "receipts" / f"{order_id}.json").read_text()
    )
    return loaded


def notifications(doc: dict[str, Any]) -> list[dict[str, Any]]:
    url = doc["tasks"]["open_shop"]["result"]["payment_url"]
    found: list[dict[str, Any]] = requests.get(f"{url}/notifications", timeout=5).json()
    return found


def test_spec_section_6_start_with_only_an_order_id(
    client: Client, shop: Path, tmp_path: Path
) -> None:
    eid = client.start(
        "order_processing", vars={"order_id": 42}, priority=7, idempotency_key="order-42"
    )
    assert (
        client.start("order_processing", vars={"order_id": 42}, idempotency_key="order-42") == eid
    )
    doc = client.wait(eid, timeout=60)
    assert doc["state"] == "completed", doc
    t = doc["tasks"]
    assert t["validate_order"]["result"] == {
        "order_id": 42,
        "sku": "WIDGET-1",
        "quantity": 2,
        "total": 19.98,
    }
    charge = t["charge"]["result"]
    assert charge["status"] == 200 and charge["body"]["status"] == "paid"
    assert charge["body"]["amount"] == 19.98
    assert t["reserve_stock"]["result"] == {"rowcount": 1, "rows": [{"sku": "WIDGET-1", "qty": 98}]}
    assert t["write_receipt"]["result"]["path"] == "receipts/42.json"
    assert receipt(tmp_path, 42) == {
        "order_id": 42,
        "sku": "WIDGET-1",
        "quantity": 2,
        "amount": 19.98,
        "payment": "paid",
        "charge_id": charge["body"]["charge_id"],
    }
    assert (t["notify"]["state"], t["notify"]["result"]["status"]) == ("succeeded", 202)
    assert (t["release_stock"]["state"], doc["priority"]) == ("skipped", 7)
    assert stock(shop) == {"WIDGET-1": 98, "WIDGET-2": 50, "GADGET-1": 25}
    sent = [n for n in notifications(doc) if n["order_id"] == 42]
    assert len(sent) == 1 and sent[0]["message"].startswith("Order 42: 2 x WIDGET-1, charged 19.98")
    assert_legal_history(client.history(eid))


def test_a_declined_charge_writes_the_receipt_releases_stock_and_sends_nothing(
    client: Client, shop: Path, tmp_path: Path
) -> None:
    doc = client.wait(
        client.start("order_processing", {"order_id": 43, "sku": "GADGET-1", "quantity": 6}),
        timeout=60,
    )
    assert doc["state"] == "completed", doc
    t = doc["tasks"]
    assert t["charge"]["result"]["body"]["status"] == "declined"  # 594.00 is above the card limit
    assert receipt(tmp_path, 43)["payment"] == "declined"
    assert t["notify"]["state"] == "skipped"
    assert t["release_stock"]["state"] == "succeeded"
    assert stock(shop)["GADGET-1"] == 25  # reserved, then put back
    assert [n for n in notifications(doc) if n["order_id"] == 43] == []


def test_out_of_stock_fails_the_reservation_without_retry(client: Client, shop: Path) -> None:
    doc = client.wait(
        client.start("order_processing", {"order_id": 44, "sku": "WIDGET-2", "quantity": 51}),
        timeout=60,
    )
    assert doc["state"] == "failed"
    t = doc["tasks"]
    assert (t["reserve_stock"]["state"], t["reserve_stock"]["attempts"]) == ("failed", 1)
    assert t["reserve_stock"]["error"] == (
        "PermanentError: sql connection 'shop': expected rowcount 1, got 0; rolled back"
    )
    assert (t["write_receipt"]["state"], t["notify"]["state"]) == (
        "upstream_failed",
        "upstream_failed",
    )
    assert t["release_stock"]["state"] == "skipped"  # nothing was reserved
    assert stock(shop)["WIDGET-2"] == 50


def test_an_invalid_order_fails_at_once(client: Client) -> None:
    doc = client.wait(
        client.start("order_processing", {"order_id": 45, "sku": "NOPE-1"}), timeout=60
    )
    assert doc["state"] == "failed"
    v = doc["tasks"]["validate_order"]
    assert (v["state"], v["attempts"]) == ("failed", 1)
    assert v["error"] == (
        "PermanentError: unknown sku 'NOPE-1' (the catalogue has WIDGET-1, WIDGET-2, GADGET-1)"
    )
    assert doc["tasks"]["charge"]["state"] == "upstream_failed"


def test_the_payment_service_charges_once_per_idempotency_key() -> None:
    from examples import payment_service

    server = payment_service.serve()
    try:
        order = {"order_id": 1, "amount": 10}
        first = requests.post(
            f"{server.url}/charge", json=order, headers={"Idempotency-Key": "k"}, timeout=5
        )
        again = requests.post(
            f"{server.url}/charge", json=order, headers={"Idempotency-Key": "k"}, timeout=5
        )
        other = requests.post(
            f"{server.url}/charge", json=order, headers={"Idempotency-Key": "k2"}, timeout=5
        )
        assert first.json() == again.json() != other.json()
        assert len(requests.get(f"{server.url}/charges", timeout=5).json()) == 2
    finally:
        server.shutdown()
        server.server_close()


# -- the command line and `make demo` ---------------------------------------------------------


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWQ_")}
    env.update(
        FLOWQ_DATABASE_URL=f"sqlite:///{tmp_path / 'state.db'}",
        FLOWQ_FILE_ROOT=str(tmp_path / "files"),
        **extra,
    )
    return env


def _run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )


def test_flowq_run_and_show_order(tmp_path: Path) -> None:
    env = _env(tmp_path, FLOWQ_CONN_SHOP=f"sqlite:///{tmp_path / 'shop.db'}")
    res = _run(env, sys.executable, "-m", "flowq.cli", "run", str(EXAMPLE), "--var", "order_id=42")
    assert res.returncode == 0, res.stderr
    assert "✓ charge succeeded" in res.stdout and "✓ notify succeeded" in res.stdout
    assert res.stdout.splitlines()[-8].endswith("order_processing@1  completed")
    shown = _run(env, sys.executable, "-m", "examples.show_order", "42")
    assert shown.returncode == 0, shown.stderr
    assert '"payment": "paid"' in shown.stdout
    assert "  WIDGET-1      98  (100)   <- this order" in shown.stdout.splitlines()


def test_flowq_run_without_the_shop_connection_says_what_to_set(tmp_path: Path) -> None:
    res = _run(
        _env(tmp_path),
        sys.executable,
        "-m",
        "flowq.cli",
        "run",
        str(EXAMPLE),
        "--var",
        "order_id=42",
    )
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"{EXAMPLE}: task '{task}': sql connection 'shop' is not configured: "
        "set FLOWQ_CONN_SHOP to its SQLAlchemy URL"
        for task in ("reserve_stock", "release_stock")
    ]


def test_make_demo(tmp_path: Path) -> None:
    env = _env(tmp_path, FLOWQ_CONN_SHOP=f"sqlite:///{tmp_path / 'shop.db'}")
    res = _run(env, "make", "--no-print-directory", "-o", ".venv/.installed", "demo")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "order_processing@1  completed" in res.stdout
    assert '"charge_id": "ch_42_' in res.stdout  # the receipt ...
    assert (
        "  WIDGET-1      98  (100)   <- this order" in res.stdout.splitlines()
    )  # ... and the stock


def test_schema_defaults_fill_only_missing_vars() -> None:
    wf = Workflow.from_file(EXAMPLE)
    given = {"order_id": 7, "quantity": 5}
    filled = wf.apply_defaults(given)
    assert filled == {"order_id": 7, "quantity": 5, "sku": "WIDGET-1", "payment_url": ""}
    assert given == {"order_id": 7, "quantity": 5}  # the caller's mapping is left alone
    wf.validate_vars(filled)
    bare = Workflow.from_dict(
        {"id": "bare", "tasks": [{"id": "a", "type": "python", "handler": "m:f"}]}
    )
    assert bare.apply_defaults({"x": 1}) == {"x": 1}
