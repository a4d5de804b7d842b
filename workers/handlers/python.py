"""The ``python`` task type: call ``package.module:function(ctx)``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from flowq.context import TaskContext
from flowq.errors import PermanentError


@lru_cache(maxsize=512)
def load(handler: str) -> Callable[[TaskContext], Any]:
    """Import ``module:function``; a missing one is a permanent error."""
    module_name, _, attr = handler.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PermanentError(f"cannot import handler module {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise PermanentError(f"handler {handler!r}: {module_name} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def execute(spec: Mapping[str, Any], ctx: TaskContext) -> Any:
    """Run the function with the task's context; its return value is the result."""
    return load(str(spec["handler"]))(ctx)
