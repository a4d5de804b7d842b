"""Python task functions used by the tests' workflows (importable as tests.flows:NAME)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

from flowq.context import TaskContext
from flowq.errors import PermanentError


def noop(ctx: TaskContext) -> None:
    """Do nothing."""


def chatty(ctx: TaskContext) -> str:
    """Prints, as handlers do, then returns."""
    print("a line a handler printed")
    return "said"


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


def value(ctx: TaskContext) -> Any:
    """Return ``params.value``: a decision for downstream ``when`` conditions."""
    return ctx.params.get("value")


LOOP: list[Any] = [1]
LOOP.append(LOOP)
ODD_RESULTS: dict[str, Any] = {
    "loop": LOOP,
    "proxy": {"x": MappingProxyType({"a": 1})},
    "nan": {"ratio": float("nan")},
    "nul": "a\x00b",
    "nul key": {"k\x00": 1},
    "set": [{1, 2}],
    "int keys": {1: "one", "n": [1.5, None]},
}


def odd_result(ctx: TaskContext) -> Any:
    """Return ``ODD_RESULTS[params.kind]``."""
    return ODD_RESULTS[ctx.params["kind"]]


def slow_first(ctx: TaskContext) -> dict[str, int]:
    """Sleep ``params.seconds`` on the first ``params.slow_attempts`` attempts, then return."""
    if ctx.attempt <= int(ctx.params.get("slow_attempts", 1)):
        time.sleep(float(ctx.params.get("seconds", 5)))
    return {"attempt": ctx.attempt}


def stubborn(ctx: TaskContext) -> None:
    """Sleep ``params.seconds`` in total, swallowing Celery's soft time limit."""
    deadline = time.monotonic() + float(ctx.params.get("seconds", 30))
    while time.monotonic() < deadline:
        try:
            time.sleep(max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # SoftTimeLimitExceeded, ignored on purpose
            if "flag" in ctx.params:
                Path(str(ctx.params["flag"])).write_text(type(exc).__name__)


def whoami(ctx: TaskContext) -> dict[str, Any]:
    """The host and process that ran the task."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "task": ctx.task_id}


def wait_for_flag(ctx: TaskContext) -> str:
    """Block until the file ``params.flag`` exists (at most ``params.max`` seconds, default 60)."""
    deadline = time.monotonic() + float(ctx.params.get("max", 60))
    flag = Path(str(ctx.params["flag"]))
    while not flag.exists():
        if time.monotonic() > deadline:
            raise PermanentError(f"{flag} did not appear")
        time.sleep(0.02)
    return "released"
