"""Execution and task state machines: the transition tables of SPEC section 2, nothing else."""

from __future__ import annotations

from typing import Final

from flowq.errors import InvalidTransition

# -- executions -------------------------------------------------------------------------------
CREATED: Final = "created"
RUNNING: Final = "running"
PAUSED: Final = "paused"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"

EXECUTION_STATES: Final = (CREATED, RUNNING, PAUSED, COMPLETED, FAILED, CANCELLED)
EXECUTION_FINAL: Final = frozenset({COMPLETED, CANCELLED})
EXECUTION_ENDED: Final = frozenset({COMPLETED, FAILED, CANCELLED})

EXECUTION_TRANSITIONS: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (CREATED, RUNNING),
        (CREATED, CANCELLED),
        (RUNNING, PAUSED),
        (RUNNING, COMPLETED),
        (RUNNING, FAILED),
        (RUNNING, CANCELLED),
        (PAUSED, RUNNING),
        (PAUSED, CANCELLED),
        (FAILED, RUNNING),
    }
)

# -- tasks ------------------------------------------------------------------------------------
PENDING: Final = "pending"
QUEUED: Final = "queued"
# RUNNING is shared with executions
RETRYING: Final = "retrying"
SUCCEEDED: Final = "succeeded"
# FAILED is shared with executions
SKIPPED: Final = "skipped"
UPSTREAM_FAILED: Final = "upstream_failed"
# CANCELLED is shared with executions

TASK_STATES: Final = (
    PENDING,
    QUEUED,
    RUNNING,
    RETRYING,
    SUCCEEDED,
    FAILED,
    SKIPPED,
    UPSTREAM_FAILED,
    CANCELLED,
)
TASK_TERMINAL: Final = frozenset({SUCCEEDED, FAILED, SKIPPED, UPSTREAM_FAILED, CANCELLED})
TASK_OK: Final = frozenset({SUCCEEDED, SKIPPED})
TASK_FAILED_LIKE: Final = frozenset({FAILED, UPSTREAM_FAILED})

TASK_TRANSITIONS: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        # dispatch, or settled without running by `when` / trigger rules
        (PENDING, QUEUED),
        (PENDING, SKIPPED),
        (PENDING, UPSTREAM_FAILED),
        (PENDING, CANCELLED),
        (PENDING, FAILED),  # its `when` condition could not be evaluated
        # a worker takes it
        (QUEUED, RUNNING),
        (QUEUED, CANCELLED),
        (QUEUED, PENDING),  # execution retry resets a task whose message was dropped
        # an attempt ends
        (RUNNING, SUCCEEDED),
        (RUNNING, FAILED),
        (RUNNING, RETRYING),
        (RUNNING, CANCELLED),
        (RUNNING, QUEUED),  # recovery: its worker died, dispatched again
        (RETRYING, RUNNING),
        (RETRYING, CANCELLED),
        (RETRYING, FAILED),
        # execution retry: run again
        (FAILED, PENDING),
        (UPSTREAM_FAILED, PENDING),
        (CANCELLED, PENDING),
        (SKIPPED, PENDING),
    }
)


def can_execution(current: str, wanted: str) -> bool:
    """True when an execution may move from ``current`` to ``wanted``."""
    return (current, wanted) in EXECUTION_TRANSITIONS


def can_task(current: str, wanted: str) -> bool:
    """True when a task may move from ``current`` to ``wanted``."""
    return (current, wanted) in TASK_TRANSITIONS


def check_execution(ident: str, current: str, wanted: str, action: str = "") -> None:
    """Raise InvalidTransition unless the execution may move from ``current`` to ``wanted``."""
    if not can_execution(current, wanted):
        raise InvalidTransition("execution", ident, current, wanted, action)


def check_task(ident: str, current: str, wanted: str) -> None:
    """Raise InvalidTransition unless the task may move from ``current`` to ``wanted``."""
    if not can_task(current, wanted):
        raise InvalidTransition("task", ident, current, wanted)


# -- control requests: action -> (states it is accepted from, state it moves to) --------------
CONTROL: Final[dict[str, tuple[frozenset[str], str]]] = {
    "pause": (frozenset({RUNNING}), PAUSED),
    "resume": (frozenset({PAUSED}), RUNNING),
    "cancel": (frozenset({CREATED, RUNNING, PAUSED}), CANCELLED),
    "retry": (frozenset({FAILED}), RUNNING),
}


def check_control(ident: str, current: str, action: str) -> str:
    """The state ``action`` moves an execution to; InvalidTransition if refused from ``current``."""
    sources, target = CONTROL[action]
    if current not in sources or not can_execution(current, target):
        raise InvalidTransition("execution", ident, current, target, action)
    return target
