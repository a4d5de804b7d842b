"""The trigger-rule decision table: Airflow's meanings, independent of arrival order."""

from __future__ import annotations

import itertools

import pytest

from flowq.rules import decide

OUTCOMES = ("succeeded", "failed", "skipped")


def final(rule: str, ends: tuple[str, ...]) -> str:
    """Feed upstream ends one by one, as the coordinator does; the first decision wins."""
    total, succ, failed, skipped = len(ends), 0, 0, 0
    for i, end in enumerate(ends):
        succ += end == "succeeded"
        failed += end == "failed"
        skipped += end == "skipped"
        decision = decide(rule, total, total - i - 1, succ, failed, skipped)
        if decision != "wait":
            return decision
    raise AssertionError("no decision once every upstream ended")


EXPECTED = {
    # rule: {frozenset of upstream outcomes present: decision}
    "all_success": lambda s: (
        "upstream_failed" if "failed" in s else ("skip" if "skipped" in s else "run")
    ),
    "all_done": lambda s: "run",
    "one_success": lambda s: (
        "run" if "succeeded" in s else ("upstream_failed" if "failed" in s else "skip")
    ),
    "one_failed": lambda s: "run" if "failed" in s else "skip",
    "none_failed": lambda s: "upstream_failed" if "failed" in s else "run",
    "none_failed_min_one_success": lambda s: (
        "upstream_failed" if "failed" in s else ("run" if "succeeded" in s else "skip")
    ),
}


@pytest.mark.parametrize("rule", sorted(EXPECTED))
def test_decisions_match_airflow_and_ignore_order(rule: str) -> None:
    for n in (1, 2, 3):
        for ends in itertools.product(OUTCOMES, repeat=n):
            expected = EXPECTED[rule](frozenset(ends))
            for order in set(itertools.permutations(ends)):
                assert final(rule, order) == expected, (rule, order)


def test_no_upstream_runs() -> None:
    assert decide("all_success", 0, 0, 0, 0, 0) == "run"


def test_early_decisions() -> None:
    assert decide("one_success", 3, 2, 1, 0, 0) == "run"
    assert decide("one_failed", 3, 2, 0, 1, 0) == "run"
    assert decide("all_success", 3, 2, 0, 1, 0) == "upstream_failed"
    assert decide("all_success", 3, 2, 0, 0, 1) == "wait"


def test_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown trigger rule"):
        decide("sometimes", 1, 0, 1, 0, 0)
