"""GET /metrics: counters, gauges and histograms read back after running real workflows."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowq import Client
from flowq.api import create_api
from tests.api.conftest import Api, ServeApi, free_port, served
from tests.engine.conftest import py

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def ran(serve_api: ServeApi) -> Iterator[Api]:
    """Three finished executions (completed, completed after retries, failed), one paused."""
    with serve_api() as api:
        nap = py("b", "sleep", ("a",), params={"seconds": 0.3})
        api.register({"id": "ok", "tasks": [py("a"), nap]})
        retry = {"retries": 2, "retry_backoff": 0.01, "retry_jitter": False}
        api.register({"id": "flaky", "tasks": [py("f", "flaky", params={"failures": 2}, **retry)]})
        api.register({"id": "bad", "tasks": [py("x", "boom", retries=1, retry_backoff=0.01)]})
        api.register({"id": "slow", "tasks": [py("s", "sleep", params={"seconds": 0.4})]})
        for wf in ("ok", "ok", "flaky", "bad"):
            api.wait(api.start(wf)["execution_id"])
        paused = api.start("slow")["execution_id"]
        assert api.http.post(f"/executions/{paused}/pause").json()["state"] == "paused"
        # a pause lets a started task end, and its run time lands in the histograms then:
        # wait for that, so that no test races it
        api.wait_until(
            paused,
            lambda doc: all(task["state"] != "running" for task in doc["tasks"].values()),
            lambda _: "a task still running after 30s",
        )
        yield api


def test_execution_counters_and_gauges(ran: Api) -> None:
    samples = scrape(ran.http)
    assert value(samples, "flowq_store_up") == 1
    started = "flowq_executions_started_total"
    assert [value(samples, started, workflow_id=w) for w in ("ok", "flaky", "bad", "slow")] == [
        2,
        1,
        1,
        1,
    ]
    finished = "flowq_executions_finished_total"
    assert value(samples, finished, workflow_id="ok", state="completed") == 2
    assert value(samples, finished, workflow_id="flaky", state="completed") == 1
    assert value(samples, finished, workflow_id="bad", state="failed") == 1
    assert value(samples, finished, workflow_id="bad", state="completed") == 0
    assert value(samples, "flowq_executions_paused", workflow_id="slow") == 1
    assert value(samples, "flowq_executions_running", workflow_id="slow") == 0


def test_task_attempts_and_failures_by_workflow_and_type(ran: Api) -> None:
    samples = scrape(ran.http)
    attempts, failures = "flowq_task_attempts_total", "flowq_task_failures_total"
    assert value(samples, attempts, workflow_id="ok", task_type="python") == 4
    assert value(samples, attempts, workflow_id="flaky", task_type="python") == 3
    assert value(samples, failures, workflow_id="flaky", task_type="python") == 2
    assert value(samples, attempts, workflow_id="bad", task_type="python") == 2
    assert value(samples, failures, workflow_id="bad", task_type="python") == 2
    assert value(samples, failures, workflow_id="ok", task_type="python") == 0


def test_run_time_and_queue_wait_histograms(ran: Api) -> None:
    samples = scrape(ran.http)
    run = "flowq_task_run_seconds"
    ok = {"workflow_id": "ok"}
    assert value(samples, f"{run}_count", **ok) == 4
    assert value(samples, f"{run}_bucket", le="0.25", **ok) == 2, "the two noop tasks"
    assert value(samples, f"{run}_bucket", le="0.5", **ok) == 4, "and the two 0.3 s sleeps"
    assert value(samples, f"{run}_bucket", le="+Inf", **ok) == 4
    assert 0.6 <= value(samples, f"{run}_sum", **ok) < 1.2
    wait = "flowq_task_queue_wait_seconds"
    assert value(samples, f"{wait}_count", **ok) == 4
    assert value(samples, f"{wait}_count", workflow_id="flaky") == 0, "first attempts only"
    assert value(samples, f"{wait}_bucket", le="5", **ok) == 4
    assert 0 <= value(samples, f"{wait}_sum", **ok) < 5


def test_numbers_come_from_the_store_not_from_the_serving_process(ran: Api) -> None:
    before = scrape(ran.http)
    with (
        Client(ran.client.settings) as other,
        served(create_api(other)) as url,
        httpx.Client(base_url=url) as http,
    ):
        fresh = scrape(http)
    assert fresh == before, "a second API process over the same store reports the same"


def test_counters_grow_as_executions_run(ran: Api) -> None:
    before = scrape(ran.http)
    ran.wait(ran.start("ok")["execution_id"])
    time.sleep(0.05)
    after = scrape(ran.http)
    started = "flowq_executions_started_total"
    assert value(after, started, workflow_id="ok") == value(before, started, workflow_id="ok") + 1
    attempts = "flowq_task_attempts_total"
    assert value(after, attempts, workflow_id="ok", task_type="python") == 6


def test_a_down_store_is_reported_not_a_500(serve_api: ServeApi) -> None:
    url = f"postgresql+psycopg://flowq@127.0.0.1:{free_port()}/flowq"
    with serve_api(database_url=url) as api:
        samples = scrape(api.http)
    assert value(samples, "flowq_store_up") == 0
    assert not [name for name, _ in samples if name.startswith("flowq_executions")]
