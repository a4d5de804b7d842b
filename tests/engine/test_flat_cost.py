"""No message and no per-task database work grows with the workflow (chains and fan-ins)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals
from sqlalchemy import event

from flowq import Client, Workflow
from flowq.store import hotpath
from tests.engine.conftest import py


def chain(n: int) -> dict[str, Any]:
    return {
        "id": f"chain{n}",
        "tasks": [py("t0")] + [py(f"t{i}", deps=(f"t{i - 1}",)) for i in range(1, n)],
    }


def fan_in(n: int) -> dict[str, Any]:
    tasks = [py("root")] + [py(f"t{i}", deps=("root",)) for i in range(n)]
    return {"id": f"fan{n}", "tasks": [*tasks, py("join", deps=tuple(f"t{i}" for i in range(n)))]}


class Meter:
    """Counts published message bytes and SQL statements while a workflow runs."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.sizes: list[int] = []
        self.statements = 0
        self._lock = threading.Lock()

    def _published(self, body: Any = None, headers: Any = None, **_: Any) -> None:
        with self._lock:
            self.sizes.append(len(json.dumps(body)) + len(json.dumps(headers, default=str)))

    def _executed(self, *_: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            return  # the test's own polling, not the engine's work
        with self._lock:
            self.statements += 1

    def run(self, definition: dict[str, Any]) -> dict[str, Any]:
        wf = Workflow.from_dict(definition)
        self.client.register(wf, replace=True)
        self.sizes, self.statements = [], 0
        engine = self.client.store.engine
        signals.before_task_publish.connect(self._published, weak=False)
        event.listen(engine, "before_cursor_execute", self._executed)
        hotpath.observers.append(self._executed)  # statements sent beneath SQLAlchemy
        try:
            state = self.client.wait(self.client.start(wf.id, {}), timeout=300)["state"]
        finally:
            signals.before_task_publish.disconnect(self._published)
            event.remove(engine, "before_cursor_execute", self._executed)
            hotpath.observers.remove(self._executed)
        assert state == "completed"
        return {"max_message": max(self.sizes), "per_task": self.statements / len(wf.task_ids)}


@pytest.fixture
def meter(client: Client) -> Iterator[Meter]:
    yield Meter(client)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [chain, fan_in])
def test_cost_per_task_stays_flat(meter: Meter, shape: Any) -> None:
    small = meter.run(shape(20))
    large = meter.run(shape(1000))
    # a message names one task: only the longer task ids may add a few bytes
    assert large["max_message"] <= small["max_message"] + 8, (small, large)
    # the same statements per task (start and end of the workflow spread over more tasks)
    assert large["per_task"] <= small["per_task"] * 1.05, (small, large)
    # the meter saw the workers' statements: at least a claim and an end per task (Postgres
    # sends one statement for each; SQLite's generic path sends several)
    assert large["per_task"] >= 2
