"""The HTTP API in the distributed set-up: `flowq api` on Redis and Postgres, tasks on workers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ApiProcess, flowq_api_process
from tests.engine.conftest import py
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration

FAN = {
    "id": "api_fan",
    "tasks": [
        py("a", "sleep", params={"seconds": 0.2}),
        py("b", "sleep", ("a",), params={"seconds": 0.2}),
        py("c", "sleep", ("a",), params={"seconds": 0.2}),
        py("d", "add", ("b", "c"), params={"n": 1}),
    ],
}


@pytest.fixture
def api(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[ApiProcess, httpx.Client]]:
    with (
        flowq_api_process(cluster.env, tmp_path / "api.log") as proc,
        httpx.Client(base_url=proc.url, timeout=30) as http,
    ):
        yield proc, http


def wait(http: httpx.Client, eid: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc: dict[str, Any] = http.get(f"/executions/{eid}").json()
        if doc["state"] in ("completed", "failed", "cancelled"):
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)


def test_an_execution_started_over_http_completes_on_the_workers(
    api: tuple[ApiProcess, httpx.Client],
) -> None:
    proc, http = api
    assert http.get("/healthz").json() == {"status": "ok"}, "real Redis and Postgres answer"
    assert http.post("/workflows", json=FAN).status_code == 201
    started = http.post("/workflows/api_fan/executions", json={"priority": 8})
    assert started.status_code == 201, started.text
    doc = wait(http, started.json()["execution_id"])
    assert doc["state"] == "completed", doc
    assert doc["priority"] == 8 and doc["tasks"]["d"]["result"] == 1
    pids = {doc["tasks"][t]["result"]["pid"] for t in ("a", "b", "c")}
    assert proc.pid not in pids, "the API only dispatches; worker processes run the tasks"

    listed = http.get("/executions", params={"workflow_id": "api_fan", "limit": 5}).json()
    assert doc["execution_id"] in [i["execution_id"] for i in listed["items"]]
    history = http.get(f"/executions/{doc['execution_id']}/history").json()
    assert history[-1]["to"] == "completed" and history[-1]["task_id"] is None


def test_metrics_read_from_postgres(api: tuple[ApiProcess, httpx.Client]) -> None:
    _, http = api
    assert http.post("/workflows", json=FAN).status_code == 201
    eid = http.post("/workflows/api_fan/executions", json={}).json()["execution_id"]
    assert wait(http, eid)["state"] == "completed"
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(http.get("/metrics").text)
        for s in family.samples
    }
    wf = ("workflow_id", "api_fan")
    assert samples[("flowq_store_up", frozenset())] == 1
    assert samples[("flowq_executions_finished_total", frozenset({wf, ("state", "completed")}))]
    attempts = samples[("flowq_task_attempts_total", frozenset({wf, ("task_type", "python")}))]
    assert attempts >= 4
    run_count = samples[("flowq_task_run_seconds_count", frozenset({wf}))]
    fast = samples[("flowq_task_run_seconds_bucket", frozenset({wf, ("le", "0.1")}))]
    assert run_count >= 4 and run_count - fast >= 3, "the 0.2 s sleeps land above 0.1 s"
    assert samples[("flowq_task_queue_wait_seconds_count", frozenset({wf}))] >= 4


def test_pause_resume_and_cancel_over_http(api: tuple[ApiProcess, httpx.Client]) -> None:
    _, http = api
    slow = {
        "id": "api_slow",
        "tasks": [py("a", "sleep", params={"seconds": 1.0}), py("b", deps=("a",))],
    }
    assert http.post("/workflows", json=slow).status_code == 201
    eid = http.post("/workflows/api_slow/executions", json={}).json()["execution_id"]
    assert http.post(f"/executions/{eid}/pause").json()["state"] == "paused"
    refused = http.post(f"/executions/{eid}/pause")
    assert refused.status_code == 409 and refused.json()["state"] == "paused"
    assert http.post(f"/executions/{eid}/resume").json()["state"] == "running"
    assert wait(http, eid)["state"] == "completed"

    other = http.post("/workflows/api_slow/executions", json={}).json()["execution_id"]
    cancelled = http.post(f"/executions/{other}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
