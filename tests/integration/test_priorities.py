"""Priorities and queue routing on Redis, with real `flowq worker` processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from flowq import Client, Workflow
from tests.engine.conftest import py
from tests.history_check import assert_legal_history
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


def ts(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


def wait_for_task_state(
    client: Client, execution_id: str, task_id: str, state: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.status(execution_id)["tasks"][task_id]["state"] == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"{task_id} never became {state}: {client.status(execution_id)}")


def workers_of(client: Client, execution_id: str) -> dict[str, str]:
    return client.store.read(lambda tx: {r.task_id: r.worker for r in tx.tasks(execution_id)})


def register(client: Client, definition: dict[str, Any]) -> None:
    client.register(Workflow.from_dict(definition), replace=True)


@pytest.fixture
def prio_worker(cluster: Cluster) -> Iterator[None]:
    proc = cluster.start_worker("prio", "-Q", "prio_q", concurrency=1)
    try:
        yield
    finally:
        cluster.stop_worker(proc)


def test_priority_9_overtakes_a_backlog_of_priority_0(
    client: Client, prio_worker: None, tmp_path: Path
) -> None:
    flag = tmp_path / "release"
    register(
        client,
        {
            "id": "p_block",
            "tasks": [py("block", "wait_for_flag", params={"flag": str(flag)}, queue="prio_q")],
        },
    )
    register(client, {"id": "p_low", "tasks": [py("t", queue="prio_q")]})
    register(client, {"id": "p_urgent", "tasks": [py("t", queue="prio_q", priority=9)]})

    blocker = client.start("p_block", {})
    wait_for_task_state(client, blocker, "block", "running")  # the only worker slot is taken
    low = [client.start("p_low", {"n": i}, priority=0) for i in range(50)]  # execution priority
    urgent = client.start("p_urgent", {})  # task priority 9, enqueued last
    assert client.status(blocker)["tasks"]["block"]["state"] == "running"
    flag.touch()

    assert client.wait(blocker, timeout=60)["state"] == "completed"
    urgent_doc = client.wait(urgent, timeout=120)
    low_docs = [client.wait(eid, timeout=120) for eid in low]
    assert [d["state"] for d in low_docs] == ["completed"] * 50
    urgent_start = ts(urgent_doc["tasks"]["t"]["started_at"])
    overtaken = sum(1 for d in low_docs if ts(d["tasks"]["t"]["started_at"]) > urgent_start)
    assert overtaken >= 45, f"the priority-9 task started after {50 - overtaken} of 50 priority-0"
    # one worker of concurrency 1: the tasks ran one at a time, none on the general workers
    starts = sorted(ts(d["tasks"]["t"]["started_at"]) for d in [*low_docs, urgent_doc])
    assert len(set(starts)) == 51
    assert {w.split("@")[0] for w in workers_of(client, urgent).values()} == {"prio"}
    assert_legal_history(client.history(urgent))


def test_queue_routes_a_task_only_to_workers_of_that_queue(
    cluster: Cluster, client: Client
) -> None:
    register(
        client,
        {
            "id": "q_route",
            "tasks": [
                py("general", "whoami"),
                py("special", "whoami", ("general",), queue="special"),
                py("after", "whoami", ("special",)),
            ],
        },
    )
    eid = client.start("q_route", {})
    wait_for_task_state(client, eid, "general", "succeeded")
    time.sleep(2.0)  # the general workers had every chance to take it
    assert client.status(eid)["tasks"]["special"]["state"] == "queued"

    proc = cluster.start_worker("special", "-Q", "special", concurrency=1)
    try:
        doc = client.wait(eid, timeout=60)
        pid = doc["tasks"]["special"]["result"]["pid"]
        assert _parent_pid(pid) == proc.pid  # a pool process of the worker started with -Q special
    finally:
        cluster.stop_worker(proc)
    assert doc["state"] == "completed"
    workers = {tid: name.split("@")[0] for tid, name in workers_of(client, eid).items()}
    assert workers["special"] == "special"
    assert workers["general"] in ("w1", "w2") and workers["after"] in ("w1", "w2")
    assert doc["tasks"]["general"]["result"]["pid"] != pid


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])
