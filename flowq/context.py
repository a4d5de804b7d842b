"""What a task sees while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskContext:
    """Passed to a python task's function: its inputs and identity."""

    vars: dict[str, Any]
    params: dict[str, Any]
    results: dict[str, Any]
    execution_id: str
    task_id: str
    attempt: int = 1
    workflow_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        """The same on every attempt of this task in this execution."""
        return f"{self.execution_id}:{self.task_id}"
