"""Request and response bodies of the HTTP API (SPEC section 5), as pydantic models."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from flowq import states as S

WORKFLOW_ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
EXECUTION_ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
KEY_PATTERN = r"^[^\x00-\x1f\x7f]+$"
MAX_VERSION = 2**31 - 1  # the store's version columns are 32-bit integers

ExecutionState = Literal["created", "running", "paused", "completed", "failed", "cancelled"]
TaskState = Literal[
    "pending",
    "queued",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "skipped",
    "upstream_failed",
    "cancelled",
]
assert set(get_args(ExecutionState)) == set(S.EXECUTION_STATES), "schemas lag flowq.states"
assert set(get_args(TaskState)) == set(S.TASK_STATES), "schemas lag flowq.states"

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200, pattern=KEY_PATTERN)]


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- errors ------------------------------------------------------------------------------------


class ErrorBody(_Out):
    """Every 4xx/5xx answer: one readable line, plus each problem for 422."""

    detail: str = Field(description="what was wrong, in one line")
    problems: list[str] | None = Field(
        default=None, description="422 only: one line per problem (definition, vars or request)"
    )
    state: ExecutionState | None = Field(
        default=None, description="409 on a state change only: the execution's current state"
    )


# -- workflows ---------------------------------------------------------------------------------


class Registered(_Out):
    """A stored definition."""

    id: str
    version: int


class WorkflowSummary(_Out):
    """One workflow id with its newest version."""

    id: str
    name: str | None
    version: int = Field(description="the newest version")
    versions: list[int] = Field(description="every stored version, ascending")
    updated_at: Timestamp


class WorkflowPage(_Out):
    """A page of workflows, by id; pass ``next`` as ``cursor`` for the following page."""

    items: list[WorkflowSummary]
    next: str | None


class WorkflowDetail(_Out):
    """One version of a definition, its compiled Celery canvas and the versions stored."""

    id: str
    version: int
    name: str | None
    digest: str = Field(description="sha256 of the canonical definition JSON")
    versions: list[int]
    definition: dict[str, Any] = Field(description="the definition, as POST /workflows takes it")
    plan: dict[str, Any] = Field(description="the compiled Celery canvas (`flowq plan --json`)")


# -- executions --------------------------------------------------------------------------------


class StartRequest(_In):
    """Body of POST /workflows/{id}/executions."""

    vars: dict[str, Any] = Field(
        default_factory=dict, description="must satisfy the definition's `inputs` schema"
    )
    priority: Annotated[int, Field(ge=0, le=9)] | None = Field(
        default=None, description="0 (least urgent) to 9 (most urgent); 5 when null"
    )
    idempotency_key: IdempotencyKey | None = Field(
        default=None, description="a second start with the same key returns the first execution"
    )
    version: Annotated[int, Field(ge=1, le=MAX_VERSION)] | None = Field(
        default=None, description="the definition version; the newest when null"
    )


class TaskStatus(_Out):
    """One task of the status document."""

    state: TaskState
    attempts: int
    result: Any = None
    error: str | None
    started_at: Timestamp | None
    finished_at: Timestamp | None


class StatusDocument(_Out):
    """The status document of SPEC section 2."""

    execution_id: str
    workflow_id: str
    version: int
    state: ExecutionState
    vars: dict[str, Any]
    priority: int
    idempotency_key: str | None = None
    created_at: Timestamp
    updated_at: Timestamp
    error: str | None
    tasks: dict[str, TaskStatus]


class ExecutionSummary(_Out):
    """One execution in a list, without its tasks."""

    execution_id: str
    workflow_id: str
    version: int
    state: ExecutionState
    priority: int
    created_at: Timestamp
    updated_at: Timestamp
    error: str | None
    tasks_total: int
    tasks_remaining: int


class ExecutionPage(_Out):
    """A page of executions, newest first; pass ``next`` as ``cursor`` for the following page."""

    items: list[ExecutionSummary]
    next: str | None


class HistoryEvent(_Out):
    """One state change of an execution (``task_id`` null) or of one of its tasks."""

    id: int = Field(
        description="increasing in the order recorded (the list's order); `after` returns "
        "only larger ids (two tasks' changes can commit out of id order: to follow a running "
        "execution, ask from a little below the largest seen and skip the ids you have)"
    )
    at: Timestamp
    task_id: str | None
    from_: str | None = Field(alias="from")
    to: str
    reason: str | None


# -- service -----------------------------------------------------------------------------------


class Health(_Out):
    """GET /healthz: ``{"status": "ok"}``, or 503 naming what failed."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] | None = Field(
        default=None, description="503 only: `ok` or the one-line error of `broker` and `store`"
    )
