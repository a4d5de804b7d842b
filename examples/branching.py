"""Python tasks of the branching example (``examples/branching.yaml``)."""

from __future__ import annotations

from typing import Any

from flowq.context import TaskContext
from flowq.errors import PermanentError

MANUAL_FROM = 1000.0
"""Expenses from this amount on need a manual review."""


def classify(ctx: TaskContext) -> dict[str, Any]:
    """Pick one approval route and any number of checks for the expense in ``vars``."""
    amount = float(ctx.vars["amount"])
    region = str(ctx.vars["region"])
    checks = [
        name
        for name, needed in (
            ("fraud", amount > 500),
            ("sanctions", region not in ("eu", "us")),
            ("vat", region == "eu"),
        )
        if needed
    ]
    return {"route": "manual" if amount >= MANUAL_FROM else "auto", "checks": checks}


def step(ctx: TaskContext) -> dict[str, Any]:
    """One step of the example: says which task ran and which upstream results it saw."""
    return {"task": ctx.task_id, "upstream": sorted(k for k, v in ctx.results.items() if v)}


def book(ctx: TaskContext) -> dict[str, Any]:
    """Book the expense; ``vars.fail_booking`` makes the ledger refuse it (no retry)."""
    if ctx.vars.get("fail_booking"):
        raise PermanentError("the ledger refused the booking")
    return {"booked": float(ctx.vars["amount"])}
