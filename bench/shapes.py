"""The workloads, each as a flowq definition and (where one exists) as plain Celery canvas."""

from __future__ import annotations

from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

HANDLER = "bench.tasks:{}"


def _task(task_id: str, handler: str = "noop", deps: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "python",
        "handler": HANDLER.format(handler),
        "depends_on": deps or [],
    }


def _ids(prefix: str, n: int) -> list[str]:
    width = len(str(n))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


# -- flowq definitions ----------------------------------------------------------------------------


def chain_def(n: int) -> dict[str, Any]:
    """``n`` tasks, each after the one before; the last marks the run done."""
    ids = _ids("t", n)
    tasks = [_task(tid, deps=[ids[i - 1]] if i else None) for i, tid in enumerate(ids)]
    tasks[-1]["handler"] = HANDLER.format("done")
    return {"id": f"bench_chain_{n}", "tasks": tasks}


def fan_in_def(n: int) -> dict[str, Any]:
    """``n`` independent tasks, then one join after all of them (a chord): ``n + 1`` tasks."""
    ids = _ids("t", n)
    return {
        "id": f"bench_chord_{n}",
        "tasks": [*(_task(tid) for tid in ids), _task("join", "done", ids)],
    }


def diamonds_def(layers: int, width: int) -> dict[str, Any]:
    """``layers`` diamonds in series: ``width`` tasks, then a join that the next layer follows."""
    tasks: list[dict[str, Any]] = []
    before: list[str] = []
    for layer in range(layers):
        wide = _ids(f"l{layer}_", width)
        tasks += [_task(tid, deps=before) for tid in wide]
        join = f"j{layer}"
        tasks.append(_task(join, "done" if layer == layers - 1 else "noop", wide))
        before = [join]
    return {"id": f"bench_diamonds_{layers}x{width}", "tasks": tasks}


def lattice_def(layers: int, width: int) -> dict[str, Any]:
    """A non-series-parallel DAG: task (l, i) follows (l-1, i) and (l-1, i+1); then one sink.

    It holds the "N" pattern (a->c, b->c, b->d without a->d) at every step, so no nesting of
    chains and groups (Celery canvas) expresses it without adding waits.
    """
    tasks: list[dict[str, Any]] = []
    prev: list[str] = []
    for layer in range(layers):
        row = _ids(f"l{layer}_", width)
        for i, tid in enumerate(row):
            deps = prev[i : i + 2] if prev else []
            tasks.append(_task(tid, deps=deps))
        prev = row
    tasks.append(_task("sink", "done", prev))
    return {"id": f"bench_lattice_{layers}x{width}", "tasks": tasks}


def ticks_def(n: int) -> dict[str, Any]:
    """``n`` independent tasks, each counting itself toward the run's total."""
    return {"id": f"bench_ticks_{n}", "tasks": [_task(tid, "tick") for tid in _ids("t", n)]}


def stamp_def() -> dict[str, Any]:
    """One task that records when it started."""
    return {"id": "bench_stamp", "tasks": [_task("stamp", "stamp")]}


# -- plain Celery canvas --------------------------------------------------------------------------


def _sig(app: Celery, name: str, *args: Any) -> Signature:
    return app.signature(f"bench.{name}", args=args, immutable=True)


def chain_canvas(app: Celery, n: int, run: str) -> Signature:
    return chain(*(_sig(app, "noop") for _ in range(n - 1)), _sig(app, "done", run))


def fan_in_canvas(app: Celery, n: int, run: str) -> Signature:
    return chord(group(_sig(app, "noop") for _ in range(n)), _sig(app, "done", run))


def diamonds_canvas(app: Celery, layers: int, width: int, run: str) -> Signature:
    steps = [
        chord(
            group(_sig(app, "noop") for _ in range(width)),
            _sig(app, "done", run) if layer == layers - 1 else _sig(app, "noop"),
        )
        for layer in range(layers)
    ]
    return chain(*steps)


def ticks_canvas(app: Celery, n: int, run: str) -> Signature:
    return group(_sig(app, "tick", run, n) for _ in range(n))


def stamp_canvas(app: Celery, run: str) -> Signature:
    return _sig(app, "stamp", run)
