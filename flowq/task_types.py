"""The keys of a workflow definition's tasks, by type, with their checks (pydantic models).

``retry_backoff_max`` and ``timeout`` are at most ``MAX_BROKER_WAIT`` seconds: Redis redelivers a
message that stayed unacknowledged longer than its ``visibility_timeout`` (3600 s in
``workers/config.py``), so a longer retry countdown (held as an ETA message) or a longer attempt
(acknowledged late) would run twice (celery#2481, kombu#337). Keeping every wait below it by
construction needs no second place to hold delayed work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

# fmt: off
TRIGGER_RULES: Final[tuple[str, ...]] = (
    "all_success", "all_done", "one_success", "one_failed", "none_failed",
    "none_failed_min_one_success",
)
FILE_OPERATIONS: Final[tuple[str, ...]] = (
    "read", "write", "append", "copy", "move", "delete", "mkdir", "list",
)
HTTP_METHODS: Final[tuple[str, ...]] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
DEFAULTABLE: Final[tuple[str, ...]] = (
    "retries", "retry_backoff", "retry_backoff_max", "retry_jitter",
    "timeout", "priority", "queue", "trigger_rule",
)
# fmt: on
TASK_TYPES: Final[tuple[str, ...]] = ("python", "http", "sql", "file")
MAX_BROKER_WAIT: Final = 3000.0
"""Longest retry delay or attempt, in seconds: below Redis' visibility_timeout (3600 s), with room
for the hard time limit's grace and clock skew between workers."""
CONNECTION_ENV_PREFIX: Final = "FLOWQ_CONN_"
_IDENT: Final = r"[A-Za-z_][A-Za-z0-9_]*"


# -- field types ------------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A short rendering of a bad value for a one-line message."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


ID_MAX = 200  # the store's id columns (flowq.store.tables) hold this many characters


def _matching(pattern: str, hint: str = "", longest: int | None = None) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if longest is not None and len(value) > longest:
            raise PydanticCustomError(
                "flowq", f"must be at most {longest} characters long (got {len(value)})"
            )
        if not compiled.fullmatch(value):
            wanted = hint or pattern
            raise PydanticCustomError("flowq", f"must match {wanted} (got {shown(value)})")
        return value

    return AfterValidator(check)


def _one_of(key: str, allowed: tuple[str, ...], fold: Callable[[str], str] = str) -> AfterValidator:
    def check(value: str) -> str:
        if fold(value) not in allowed:
            expected = ", ".join(allowed)
            raise PydanticCustomError(
                "flowq_named", f"unknown {key} {value!r} (expected {expected})"
            )
        return fold(value)

    return AfterValidator(check)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _broker_wait(value: float) -> float:
    if value > MAX_BROKER_WAIT:
        raise PydanticCustomError(
            "flowq",
            f"must be <= {MAX_BROKER_WAIT:g} seconds (got {value:g}): a longer wait would "
            "outlive the broker's visibility timeout (3600 s) and run the task twice",
        )
    return value


TaskId = Annotated[str, _matching(r"[A-Za-z0-9_-]+", longest=ID_MAX)]
WorkflowId = Annotated[str, _matching(r"[A-Za-z0-9_.-]+", longest=ID_MAX)]
Handler = Annotated[str, _matching(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}", "'module.path:function'")]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0)]
Delay = Annotated[float, Field(ge=0)]
MaxDelay = Annotated[float, Field(ge=0), AfterValidator(_broker_wait)]
Timeout = Annotated[float, Field(gt=0), AfterValidator(_broker_wait)]
Priority = Annotated[int, Field(ge=0, le=9)]
TriggerRule = Annotated[str, _one_of("trigger_rule", TRIGGER_RULES)]
Queue = Annotated[str, Field(min_length=1)]


def _condition(value: Any) -> Any:
    """A YAML ``true`` / ``false`` as ``when`` is the condition ``"true"`` / ``"false"``."""
    return ("true" if value else "false") if isinstance(value, bool) else value


Condition = Annotated[str, BeforeValidator(_condition)]


class Strict(BaseModel):
    """A frozen, strict model that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


# -- tasks ------------------------------------------------------------------------------------


class TaskBase(Strict):
    """Keys every task has (SPEC "Keys of every task")."""

    TEMPLATED: ClassVar[tuple[str, ...]] = ()  # spec names (``json``, not ``json_``)

    id: TaskId
    name: str | None = None
    type: str
    depends_on: Annotated[list[str], AfterValidator(_unique)] = []
    when: Condition | None = None
    trigger_rule: TriggerRule = "all_success"
    retries: Count = 0
    retry_backoff: Delay = 1.0
    retry_backoff_max: MaxDelay = 60.0
    retry_jitter: bool = True
    timeout: Timeout | None = None
    priority: Priority | None = None
    queue: Queue = "flowq"

    @property
    def display_name(self) -> str:
        """The name, else the id."""
        return self.name or self.id

    def spec(self) -> dict[str, Any]:
        """This task as a user would write it (``json``, not ``json_``), without None values.

        A new dict each call over values dumped once (the model is frozen): replace a key's
        value rather than change it in place (``render`` builds new containers).
        """
        return dict(self._spec)

    @cached_property
    def _spec(self) -> dict[str, Any]:
        dumped = self.model_dump(mode="json", by_alias=True)
        return {key: value for key, value in dumped.items() if value is not None}

    def templated_values(self) -> dict[str, Any]:
        """The templated keys this task sets, by spec name, e.g. ``{"url": "{{ vars.u }}"}``."""
        spec = self.spec()
        return {key: spec[key] for key in self.TEMPLATED if key in spec}


class PythonTask(TaskBase):
    """Calls ``handler(ctx)`` in a worker."""

    TEMPLATED: ClassVar[tuple[str, ...]] = ("params",)
    type: Literal["python"]
    handler: Handler
    params: dict[str, Any] = {}


class HttpTask(TaskBase):
    """One HTTP request; the result is status, headers and body."""

    TEMPLATED: ClassVar[tuple[str, ...]] = ("url", "headers", "json", "body", "params")
    type: Literal["http"]
    method: Annotated[str, _one_of("method", HTTP_METHODS, str.upper)] = "GET"
    url: Annotated[str, Field(min_length=1)]
    headers: dict[str, str] | None = None
    json_: Any = Field(default=None, alias="json")
    body: str | None = None
    params: dict[str, Any] | None = None
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] | None = None
    request_timeout: Seconds | None = None

    @model_validator(mode="after")
    def _json_or_body(self) -> HttpTask:
        if self.json_ is not None and self.body is not None:
            raise PydanticCustomError("flowq", "give either 'json' or 'body', not both")
        return self


class SqlTask(TaskBase):
    """One SQL statement with bound parameters on a named connection."""

    TEMPLATED: ClassVar[tuple[str, ...]] = ("params",)
    type: Literal["sql"]
    connection: Annotated[str, _matching(r"[A-Za-z0-9_]+")]
    query: Annotated[str, Field(min_length=1)]
    params: dict[str, Any] = {}
    expect_rowcount: Count | None = None


class FileTask(TaskBase):
    """One file operation inside ``FLOWQ_FILE_ROOT``."""

    TEMPLATED: ClassVar[tuple[str, ...]] = ("path", "to", "content")
    type: Literal["file"]
    operation: Annotated[str, _one_of("operation", FILE_OPERATIONS)]
    path: Annotated[str, Field(min_length=1)]
    to: str | None = None
    content: Any | None = None

    @model_validator(mode="after")
    def _needs_operands(self) -> FileTask:
        if self.operation in ("copy", "move") and self.to is None:
            raise PydanticCustomError("flowq", f"operation {self.operation!r} needs 'to'")
        if self.operation in ("write", "append") and self.content is None:
            raise PydanticCustomError("flowq", f"operation {self.operation!r} needs 'content'")
        return self


Task = Annotated[PythonTask | HttpTask | SqlTask | FileTask, Field(discriminator="type")]
# each type's model, and the keys each model knows (for "did you mean")
MODELS: Final[dict[str, type[TaskBase]]] = {
    "python": PythonTask, "http": HttpTask, "sql": SqlTask, "file": FileTask,
}  # fmt: skip
_MODEL_LIST: Final[list[type[TaskBase]]] = [TaskBase, *MODELS.values()]
KEYS: Final[dict[type[TaskBase], tuple[str, ...]]] = {
    model: tuple(field.alias or name for name, field in model.model_fields.items())
    for model in _MODEL_LIST
}


# The keys ``defaults:`` may set, checked like a task's: TaskBase's own fields, not copies.
Defaults: Final[type[Strict]] = create_model(
    "Defaults",
    __base__=Strict,
    **{  # type: ignore[call-overload]
        key: (TaskBase.model_fields[key].rebuild_annotation(), TaskBase.model_fields[key])
        for key in DEFAULTABLE
    },
)
