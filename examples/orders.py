"""Handlers of the order-processing example (``examples/order_processing.yaml``).

Each one sleeps briefly so that ``flowq run`` shows the tasks progressing, and the parallel
branches (charge_payment, reserve_stock) visibly overlap.
"""

from __future__ import annotations

import time
from typing import Any, TypeGuard

from flowq.context import TaskContext
from flowq.errors import PermanentError

UNIT_PRICES: dict[str, float] = {"WIDGET-1": 9.99, "WIDGET-2": 24.50, "GADGET-1": 99.00}
DEFAULT_UNIT_PRICE = 10.00
"""Price of a SKU missing from ``UNIT_PRICES``: the example has no real catalogue."""


def validate_order(ctx: TaskContext) -> dict[str, Any]:
    """Check the order's vars and price it; an invalid order fails at once, without retry."""
    time.sleep(0.05)
    order_id, sku, quantity = (
        ctx.vars.get("order_id"),
        ctx.vars.get("sku"),
        ctx.vars.get("quantity"),
    )
    if not _is_int(order_id):
        raise PermanentError(f"order_id must be an integer, got {order_id!r}")
    if not isinstance(sku, str) or not sku:
        raise PermanentError(f"sku must be a non-empty string, got {sku!r}")
    if not _is_int(quantity) or quantity < 1:
        raise PermanentError(f"quantity must be an integer >= 1, got {quantity!r}")
    unit_price = UNIT_PRICES.get(sku, DEFAULT_UNIT_PRICE)
    total = round(quantity * unit_price, 2)
    return {"order_id": order_id, "sku": sku, "quantity": quantity, "total": total}


def charge_payment(ctx: TaskContext) -> dict[str, Any]:
    """Charge the order's total (a real gateway would get ``ctx.idempotency_key``)."""
    time.sleep(0.2)
    order = ctx.results["validate_order"]
    return {"status": "paid", "charge_id": f"ch_{order['order_id']}", "amount": order["total"]}


def reserve_stock(ctx: TaskContext) -> dict[str, Any]:
    """Reserve the ordered quantity of the SKU."""
    time.sleep(0.15)
    order = ctx.results["validate_order"]
    return {"sku": order["sku"], "reserved": order["quantity"]}


def write_receipt(ctx: TaskContext) -> dict[str, Any]:
    """Join of the two branches: one receipt from the charge and the reservation."""
    time.sleep(0.1)
    charge, stock = ctx.results["charge_payment"], ctx.results["reserve_stock"]
    order_id = ctx.vars["order_id"]
    return {
        "receipt_id": f"rcpt_{order_id}",
        "order_id": order_id,
        "charge_id": charge["charge_id"],
        "amount": charge["amount"],
        "sku": stock["sku"],
        "quantity": stock["reserved"],
    }


def send_notification(ctx: TaskContext) -> dict[str, Any]:
    """Tell the customer; runs only when the payment went through (see ``when`` in the YAML)."""
    time.sleep(0.05)
    receipt = ctx.results["write_receipt"]
    message = (
        f"Order {receipt['order_id']}: {receipt['quantity']} x {receipt['sku']}, "
        f"charged {receipt['amount']:.2f} ({receipt['receipt_id']})"
    )
    return {"sent": True, "order_id": receipt["order_id"], "message": message}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
