"""`flowq flower`: Flower on the deployment's broker shows each flowq task with its ids."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowq import Workflow
from tests.api.conftest import free_port
from tests.conftest import server_process
from tests.engine.conftest import py
from tests.integration.conftest import FLOWQ, Cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def flower(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """`flowq flower --port P` with the cluster's environment; yields Flower's URL."""
    port = free_port()
    log = tmp_path / "flower.log"
    worker_logs = {path: path.stat().st_size for path in cluster.logs.glob("*.log")}
    url = f"http://127.0.0.1:{port}"
    # Flower 2 serves its HTTP API only with auth configured, or with this set.
    env = {**cluster.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    argv = [*FLOWQ, "flower", "--port", str(port)]
    with server_process("flower", argv, env, log, f"{url}/healthcheck", timeout=60):
        # Workers start with task events off; Flower switches them on by a broadcast every 5 s.
        deadline = time.monotonic() + 30
        while _events_enabled(worker_logs) < len(cluster.workers):
            assert time.monotonic() < deadline, "Flower did not enable task events"
            time.sleep(0.2)
        yield url


def _events_enabled(logs: dict[Path, int]) -> int:
    """How many worker logs say, since their recorded offset, that events were switched on."""
    enabled = 0
    for path, offset in logs.items():
        with path.open("rb") as handle:
            handle.seek(offset)
            enabled += b"Events of group {task} enabled by remote" in handle.read()
    return enabled


def test_flower_lists_the_tasks_of_a_run_with_their_ids(cluster: Cluster, flower: str) -> None:
    wf = Workflow.from_dict(
        {"id": "flower_wf", "tasks": [py("first"), py("second", deps=("first",))]}
    )
    with cluster.client() as client:
        client.register(wf, replace=True)
        eid = client.start(wf.id)
        assert client.wait(eid, timeout=120)["state"] == "completed"

    ours: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while set(ours) != {"first", "second"} or any(t["state"] != "SUCCESS" for t in ours.values()):
        assert time.monotonic() < deadline, f"Flower shows {ours}"
        time.sleep(0.3)
        tasks = httpx.get(f"{flower}/api/tasks", params={"limit": 1000}, timeout=10).json()
        for task in tasks.values():
            kwargs = str(task.get("kwargs") or "")
            if f"'execution_id': '{eid}'" in kwargs:
                ours[kwargs.split("'task_id': '")[1].split("'")[0]] = task

    for task_id, task in ours.items():
        assert task["name"] == "flowq.run"
        assert f"'workflow_id': '{wf.id}'" in task["kwargs"]
        assert f"'task_id': '{task_id}'" in task["kwargs"]
        assert task["worker"], "Flower names the worker that ran it"
