"""Pause, resume, cancel, retry and idempotent start, distributed (Redis, Postgres, workers)."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import pytest

from flowq import Client, InvalidTransition, Workflow
from tests.engine.conftest import py
from tests.history_check import assert_legal_history
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running_count(history: list[dict[str, Any]], task_id: str) -> int:
    return sum(1 for h in history if h["task_id"] == task_id and h["to"] == "running")


def test_pause_stops_new_tasks_and_resume_continues(client: Client) -> None:
    wf = Workflow.from_dict({"id": "c_pause", "tasks": [
        py("s1a", "sleep", params={"seconds": 1.5}), py("s1b", "sleep", params={"seconds": 1.5}),
        py("s2a", "sleep", ("s1a", "s1b"), params={"seconds": 0.3}),
        py("s2b", "sleep", ("s1a", "s1b"), params={"seconds": 0.3}),
        py("s3", "noop", ("s2a", "s2b")),
    ]})  # fmt: skip
    client.register(wf, replace=True)
    eid = client.start("c_pause", {})
    # pause once both stage-1 tasks run: a task still queued when the pause lands waits too
    wait_for(
        lambda: (
            [client.status(eid)["tasks"][t]["state"] for t in ("s1a", "s1b")]
            == ["running", "running"]
        ),
        what="stage 1",
    )
    paused = client.pause(eid)
    assert paused["state"] == "paused"
    time.sleep(3.0)  # longer than the rest of stage 1 plus all of stage 2
    doc = client.status(eid)
    assert doc["state"] == "paused"
    assert [doc["tasks"][t]["state"] for t in ("s1a", "s1b")] == ["succeeded", "succeeded"]
    for t in ("s2a", "s2b", "s3"):
        assert doc["tasks"][t]["started_at"] is None, f"{t} started while paused"
    with pytest.raises(InvalidTransition, match="'paused'"):
        client.pause(eid)
    client.resume(eid)
    final = client.wait(eid, timeout=60)
    assert final["state"] == "completed"
    history = client.history(eid)
    assert_legal_history(history)
    for t in final["tasks"]:
        assert final["tasks"][t]["attempts"] == 1
        assert running_count(history, t) == 1, f"{t} ran more than once"


def test_cancel_revokes_running_and_starts_nothing(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "side_effects.txt"
    wf = Workflow.from_dict({"id": "c_cancel", "tasks": [
        py("long", "append_line", params={"path": str(marker), "seconds": 3}),
        py("quick", "noop"),
        py("after", "append_line", ("long",), params={"path": str(marker)}),
    ]})  # fmt: skip
    client.register(wf, replace=True)
    eid = client.start("c_cancel", {})
    wait_for(lambda: client.status(eid)["tasks"]["long"]["state"] == "running", what="long")
    doc = client.cancel(eid)
    assert doc["state"] == "cancelled"
    assert doc["tasks"]["long"]["state"] == "cancelled"
    assert doc["tasks"]["after"]["state"] == "cancelled"
    time.sleep(4)  # past the moment the task would have written, had it not been terminated
    assert not marker.exists(), "the revoked task went on running"
    with pytest.raises(InvalidTransition, match="'cancelled'"):
        client.resume(eid)
    assert_legal_history(client.history(eid))


def test_cancel_from_paused(client: Client) -> None:
    wf = Workflow.from_dict(
        {
            "id": "c_cancel_p",
            # long enough that the pause always lands first, even on a loaded CI machine
            # (0.5 s was not: the execution once completed before the pause); cancel
            # terminates it, so the test does not wait for it
            "tasks": [py("a", "sleep", params={"seconds": 10}), py("b", "noop", ("a",))],
        }
    )
    client.register(wf, replace=True)
    eid = client.start("c_cancel_p", {})
    client.pause(eid)
    doc = client.cancel(eid)
    assert doc["state"] == "cancelled"
    assert doc["tasks"]["a"]["state"] == "cancelled"
    assert doc["tasks"]["b"]["state"] == "cancelled"
    time.sleep(1)
    assert client.status(eid)["state"] == "cancelled"
    assert_legal_history(client.history(eid))


def test_retry_reruns_failed_and_keeps_succeeded(client: Client, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    wf = Workflow.from_dict({"id": "c_retry", "tasks": [
        py("upstream", "echo"),
        py("gate", "until_flag", ("upstream",), params={"flag": str(flag)}),
        py("downstream", "noop", ("gate",)),
    ]})  # fmt: skip
    client.register(wf, replace=True)
    eid = client.start("c_retry", {})
    failed = client.wait(eid, timeout=60)
    assert failed["state"] == "failed"
    assert failed["tasks"]["downstream"]["state"] == "upstream_failed"
    first_result = failed["tasks"]["upstream"]["result"]
    with pytest.raises(InvalidTransition, match="'failed'"):
        client.resume(eid)
    flag.write_text("go")
    client.retry(eid)
    done = client.wait(eid, timeout=60)
    assert done["state"] == "completed"
    assert done["tasks"]["upstream"]["attempts"] == 1
    assert done["tasks"]["upstream"]["result"] == first_result
    assert done["tasks"]["gate"]["attempts"] == 2
    assert done["tasks"]["downstream"]["state"] == "succeeded"
    history = client.history(eid)
    assert running_count(history, "upstream") == 1
    assert_legal_history(history)


def test_idempotent_start_races_from_ten_processes(cluster: Cluster, client: Client) -> None:
    client.register(Workflow.from_dict({"id": "c_idem", "tasks": [py("a")]}), replace=True)

    def start(_: int) -> str:
        res = cluster.flowq("start", "c_idem", "--idempotency-key", "race-1")
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(start, range(10)))
    assert len(set(ids)) == 1, ids
    assert len(client.list(workflow_id="c_idem")) == 1
    assert client.wait(ids[0], timeout=30)["state"] == "completed"


def test_refused_transitions_name_the_state_over_cli(cluster: Cluster, client: Client) -> None:
    client.register(Workflow.from_dict({"id": "c_refuse", "tasks": [py("a")]}), replace=True)
    eid = client.start("c_refuse", {})
    client.wait(eid, timeout=30)
    for action in ("pause", "resume", "cancel", "retry"):
        res = cluster.flowq(action, eid)
        assert res.returncode == 1
        assert "'completed'" in res.stderr and action in res.stderr
