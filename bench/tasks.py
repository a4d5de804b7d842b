"""flowq's side of the work: python handlers, called as ``bench.tasks:NAME``."""

from __future__ import annotations

from bench import marks
from flowq.context import TaskContext


def noop(ctx: TaskContext) -> None:
    """Do nothing."""


def done(ctx: TaskContext) -> None:
    """The last task of a shape: tell the harness the run ended."""
    marks.done(ctx.vars["run"])


def tick(ctx: TaskContext) -> None:
    """One of ``vars.total`` independent tasks of a run."""
    marks.tick(ctx.vars["run"], int(ctx.vars["total"]))


def stamp(ctx: TaskContext) -> None:
    """Record when the task started (start latency)."""
    marks.stamp(ctx.vars["run"])
