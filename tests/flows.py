"""Python task functions used by the tests' workflows (importable as tests.flows:NAME)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from flowq.context import TaskContext
from flowq.errors import PermanentError


def noop(ctx: TaskContext) -> None:
    """Do nothing."""


def echo(ctx: TaskContext) -> dict[str, Any]:
    """Return what the task saw."""
    return {
        "task": ctx.task_id,
        "vars": ctx.vars,
        "params": ctx.params,
        "results": ctx.results,
        "attempt": ctx.attempt,
        "key": ctx.idempotency_key,
    }


def sleep(ctx: TaskContext) -> dict[str, Any]:
    """Sleep ``params.seconds`` (default 0.2) and report the process that ran it."""
    time.sleep(float(ctx.params.get("seconds", 0.2)))
    return {"task": ctx.task_id, "pid": os.getpid()}


def flaky(ctx: TaskContext) -> dict[str, int]:
    """Fail the first ``params.failures`` attempts, then succeed."""
    if ctx.attempt <= int(ctx.params.get("failures", 2)):
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


def boom(ctx: TaskContext) -> None:
    """Always fail with a retryable error."""
    raise ValueError("boom")


def permanent(ctx: TaskContext) -> None:
    """Fail without retrying."""
    raise PermanentError("card declined")


def until_flag(ctx: TaskContext) -> str:
    """Fail until the file named by ``params.flag`` exists."""
    if not Path(str(ctx.params["flag"])).exists():
        raise RuntimeError("flag file missing")
    return "flag found"


def add(ctx: TaskContext) -> int:
    """Sum the integer results of the upstream tasks plus ``params.n``."""
    return int(ctx.params.get("n", 1)) + sum(v for v in ctx.results.values() if isinstance(v, int))


def append_line(ctx: TaskContext) -> str:
    """Append one line to ``params.path`` (a side effect to count), after ``params.seconds``."""
    time.sleep(float(ctx.params.get("seconds", 0)))
    with open(str(ctx.params["path"]), "a") as fh:
        fh.write(f"{ctx.idempotency_key} attempt {ctx.attempt}\n")
    return ctx.idempotency_key


def kill_my_process(ctx: TaskContext) -> None:
    """A poison task: kill the process running it."""
    os.kill(os.getpid(), 9)


def pid_then_sleep(ctx: TaskContext) -> dict[str, Any]:
    """Write this process id to ``params.pidfile`` then sleep ``params.seconds``."""
    Path(str(ctx.params["pidfile"])).write_text(str(os.getpid()))
    time.sleep(float(ctx.params.get("seconds", 2)))
    return {"pid": os.getpid(), "attempt": ctx.attempt}
