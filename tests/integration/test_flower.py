"""`flowq flower`: Flower on the deployment's broker shows each flowq task with its ids."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowq import Workflow
from tests.api.conftest import free_port
from tests.conftest import ROOT
from tests.engine.conftest import py
from tests.integration.conftest import FLOWQ, Cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def flower(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """`flowq flower --port P` with the cluster's environment; yields Flower's URL."""
    port = free_port()
    log = tmp_path / "flower.log"
    worker_logs = {path: path.stat().st_size for path in cluster.logs.glob("*.log")}
    proc = subprocess.Popen(
        [*FLOWQ, "flower", "--port", str(port)],
        # Flower 2 serves its HTTP API only with auth configured, or with this set.
        env={**cluster.env, "FLOWER_UNAUTHENTICATED_API": "true"},
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"flower exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"flower did not answer: {log.read_text()}"
            try:
                if httpx.get(f"{url}/healthcheck", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        # Workers start with task events off; Flower switches them on by a broadcast every 5 s.
        while _events_enabled(worker_logs) < len(cluster.workers):
            assert time.monotonic() < deadline + 30, "Flower did not enable task events"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


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
