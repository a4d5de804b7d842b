"""Python tasks of the order-processing example (``examples/order_processing.yaml``).

The rest of that workflow is typed tasks: an ``http`` charge, an ``sql`` stock reservation, a
``file`` receipt and an ``http`` notification.
"""

from __future__ import annotations

import os
from typing import Any, TypeGuard

import sqlalchemy

from examples import payment_service
from flowq.context import TaskContext
from flowq.errors import PermanentError

UNIT_PRICES: dict[str, float] = {"WIDGET-1": 9.99, "WIDGET-2": 24.50, "GADGET-1": 99.00}
INITIAL_STOCK: dict[str, int] = {"WIDGET-1": 100, "WIDGET-2": 50, "GADGET-1": 25}
SHOP_CONNECTION = "FLOWQ_CONN_SHOP"

_CREATE = (
    "CREATE TABLE IF NOT EXISTS inventory ("
    "sku VARCHAR(64) PRIMARY KEY, qty INTEGER NOT NULL CHECK (qty >= 0))"
)
_STOCK = "INSERT INTO inventory (sku, qty) VALUES (:sku, :qty) ON CONFLICT (sku) DO NOTHING"


def open_shop(ctx: TaskContext) -> dict[str, Any]:
    """The example's scaffolding: a payment service to charge, an inventory table to update.

    Uses ``vars.payment_url`` when given, else starts the example's own payment service in this
    worker process (``examples/payment_service.py``). Creates and stocks the ``inventory`` table
    on the ``shop`` connection when it is missing; existing rows are left as they are.
    """
    url = os.environ.get(SHOP_CONNECTION)
    if not url:
        raise PermanentError(f"set {SHOP_CONNECTION} to the inventory's SQLAlchemy URL")
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(_CREATE))
            conn.execute(
                sqlalchemy.text(_STOCK),
                [{"sku": sku, "qty": qty} for sku, qty in INITIAL_STOCK.items()],
            )
    finally:
        engine.dispose()
    payment_url = str(ctx.vars.get("payment_url") or "") or payment_service.ensure_running()
    return {"payment_url": payment_url.rstrip("/")}


def validate_order(ctx: TaskContext) -> dict[str, Any]:
    """Check the order's vars and price it; an invalid order fails at once, without retry."""
    order_id, sku, quantity = (
        ctx.vars.get("order_id"),
        ctx.vars.get("sku"),
        ctx.vars.get("quantity"),
    )
    if not _is_int(order_id):
        raise PermanentError(f"order_id must be an integer, got {order_id!r}")
    if not isinstance(sku, str) or not sku:
        raise PermanentError(f"sku must be a non-empty string, got {sku!r}")
    if sku not in UNIT_PRICES:
        raise PermanentError(f"unknown sku {sku!r} (the catalogue has {', '.join(UNIT_PRICES)})")
    if not _is_int(quantity) or quantity < 1:
        raise PermanentError(f"quantity must be an integer >= 1, got {quantity!r}")
    total = round(quantity * UNIT_PRICES[sku], 2)
    return {"order_id": order_id, "sku": sku, "quantity": quantity, "total": total}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
