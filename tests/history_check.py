"""Checks that a history contains only transitions the SPEC section 2 tables allow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowq import states as S


def assert_legal_history(history: Sequence[dict[str, Any]]) -> None:
    """Every recorded change is legal and starts from the state the previous one ended in."""
    current: dict[str | None, str | None] = {}
    for event in history:
        who = event["task_id"]
        if event["from"] == event["to"]:  # a note (e.g. a late result ignored), not a change
            assert event["to"] == current.get(who), f"{who}: note about a state it is not in"
            continue
        before = current.get(who, None if who is None else S.PENDING)
        assert event["from"] == before, f"{who}: recorded from {event['from']!r}, was {before!r}"
        if who is None:
            if event["from"] is not None:
                assert S.can_execution(event["from"], event["to"]), event
        else:
            assert S.can_task(event["from"], event["to"]), event
        current[who] = event["to"]
