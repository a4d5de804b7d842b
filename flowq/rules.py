"""Trigger rules (Airflow's meanings): may a task run, given how its upstream tasks ended?"""

from __future__ import annotations

from typing import Final, Literal

Decision = Literal["run", "skip", "upstream_failed", "wait"]

RUN: Final = "run"
SKIP: Final = "skip"
UPSTREAM_FAILED: Final = "upstream_failed"
WAIT: Final = "wait"


def decide(
    rule: str, total: int, remaining: int, succeeded: int, failed: int, skipped: int
) -> Decision:
    """Decide a pending task's fate from its upstream counters.

    ``failed`` counts upstream tasks that failed, were upstream_failed or cancelled. A decision
    other than ``wait`` may come before every upstream task has ended (Airflow does the same):
    ``one_success`` runs on the first success, ``all_success`` gives up on the first failure.
    Every decision is the same whatever order the upstream tasks end in.
    """
    done = remaining == 0
    if total == 0:
        return RUN
    if rule == "all_success":
        if failed:
            return UPSTREAM_FAILED
        if not done:
            return WAIT  # a skip waits for the rest: a later failure makes it upstream_failed
        return SKIP if skipped else RUN
    if rule == "all_done":
        return RUN if done else WAIT
    if rule == "one_success":
        if succeeded:
            return RUN
        if done:
            return UPSTREAM_FAILED if failed else SKIP
        return WAIT
    if rule == "one_failed":
        if failed:
            return RUN
        return SKIP if done else WAIT
    if rule == "none_failed":
        if failed:
            return UPSTREAM_FAILED
        return RUN if done else WAIT
    if rule == "none_failed_min_one_success":
        if failed:
            return UPSTREAM_FAILED
        if done:
            return RUN if succeeded else SKIP
        return WAIT
    raise ValueError(f"unknown trigger rule {rule!r}")
