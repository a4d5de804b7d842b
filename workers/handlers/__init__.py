"""Typed task handlers: one module per task type, each with ``execute(spec, ctx)``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from flowq.context import TaskContext

Handler = Callable[[Mapping[str, Any], TaskContext], Any]

TYPES = ("python", "http", "sql", "file")


@cache
def handler_for(task_type: str) -> Handler:
    """The ``execute`` function of a task type's handler module."""
    if task_type not in TYPES:
        raise KeyError(f"no handler for task type {task_type!r}")
    module = importlib.import_module(f"workers.handlers.{task_type}")
    fn: Handler = module.execute
    return fn
