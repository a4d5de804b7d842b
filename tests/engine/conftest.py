"""Fixtures for engine tests: an embedded client on a fresh SQLite store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowq import Client, Settings, Workflow

Run = Callable[..., dict[str, Any]]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    with Client(Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}")) as c:
        yield c


@pytest.fixture
def run(client: Client) -> Run:
    """Register a workflow given as a dict, run it to its end, return the status document."""

    def go(
        definition: dict[str, Any], vars: dict[str, Any] | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        wf = Workflow.from_dict(definition)
        client.register(wf, replace=True)
        eid = client.start(wf.id, vars or {})
        return client.wait(eid, timeout=timeout)

    return go


def py(task_id: str, fn: str = "noop", deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A python task calling tests.flows:<fn>."""
    return {
        "id": task_id,
        "type": "python",
        "handler": f"tests.flows:{fn}",
        "depends_on": list(deps),
        **extra,
    }
