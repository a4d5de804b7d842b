"""Executions over HTTP: start, status, history, list with a cursor, pause/resume/cancel/retry."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import Api
from tests.engine.conftest import py
from tests.history_check import assert_legal_history

CHAIN = {"id": "chain", "tasks": [py("a", "echo"), py("b", "echo", ("a",))]}


def test_start_answers_201_with_the_status_document_and_runs_it(api: Api) -> None:
    api.register(CHAIN)
    response = api.http.post(
        "/workflows/chain/executions", json={"vars": {"who": "api"}, "priority": 7}
    )
    assert response.status_code == 201, response.text
    doc = response.json()
    eid = doc["execution_id"]
    assert response.headers["location"] == f"/executions/{eid}"
    assert "idempotent-replayed" not in response.headers
    assert (doc["workflow_id"], doc["version"], doc["priority"]) == ("chain", 1, 7)
    assert doc["vars"] == {"who": "api"} and set(doc["tasks"]) == {"a", "b"}
    assert doc["state"] in ("running", "completed")

    done = api.wait(eid)
    assert done["state"] == "completed" and done["error"] is None
    assert done["tasks"]["b"]["result"]["vars"] == {"who": "api"}
    assert done["tasks"]["b"]["result"]["results"] == {"a": done["tasks"]["a"]["result"]}
    assert done == api.client.status(eid), "HTTP serves the status document unchanged"


def test_history_lists_every_change_and_follows_with_after(api: Api) -> None:
    api.register(CHAIN)
    eid = api.wait(api.start("chain")["execution_id"])["execution_id"]
    events = api.http.get(f"/executions/{eid}/history").json()
    assert events == api.client.history(eid)
    assert_legal_history(events)
    assert events[0]["task_id"] is None and events[0]["to"] == "created"
    assert events[-1] == {**events[-1], "task_id": None, "from": "running", "to": "completed"}
    tail = api.http.get(f"/executions/{eid}/history", params={"after": events[2]["id"]}).json()
    assert tail == events[3:]


def test_an_idempotent_start_returns_the_first_execution(api: Api) -> None:
    api.register(CHAIN)
    body = {"vars": {"n": 1}, "idempotency_key": "order-42"}
    first = api.http.post("/workflows/chain/executions", json=body)
    again = api.http.post("/workflows/chain/executions", json={**body, "vars": {"n": 2}})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.json()["execution_id"] == first.json()["execution_id"]
    assert again.json()["vars"] == {"n": 1}
    assert len(api.http.get("/executions").json()["items"]) == 1


def test_concurrent_idempotent_starts_make_one_execution_and_say_so(api: Api) -> None:
    """Only the start that created the execution answers without ``Idempotent-Replayed``,
    even when every start looked for the key before any of them had stored it."""
    api.register(CHAIN)
    body = {"vars": {"n": 1}, "idempotency_key": "order-43"}
    gate = threading.Barrier(8)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            gate.wait()
            return http.post("/workflows/chain/executions", json=body)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["execution_id"] for a in answers}) == 1
    fresh = [a for a in answers if "idempotent-replayed" not in a.headers]
    assert len(fresh) == 1, [dict(a.headers) for a in answers]
    assert len(api.http.get("/executions").json()["items"]) == 1


def test_version_picks_the_definition(api: Api) -> None:
    api.register({**CHAIN, "version": 1})
    api.register({"id": "chain", "version": 2, "tasks": [py("only", "echo")]})
    newest = api.wait(api.start("chain")["execution_id"])
    older = api.wait(api.start("chain", version=1)["execution_id"])
    assert (newest["version"], set(newest["tasks"])) == (2, {"only"})
    assert (older["version"], set(older["tasks"])) == (1, {"a", "b"})


def test_list_is_newest_first_filtered_and_paged_with_a_cursor(api: Api) -> None:
    api.register(CHAIN)
    api.register({"id": "boom", "tasks": [py("x", "boom")]})
    ids = [api.start("chain")["execution_id"] for _ in range(5)]
    failed = api.start("boom")["execution_id"]
    for eid in [*ids, failed]:
        api.wait(eid)

    seen: list[str] = []
    pages = 0
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = api.http.get("/executions", params=params).json()
        pages += 1
        seen += [item["execution_id"] for item in page["items"]]
        if page["next"] is None:
            break
        assert page["next"] == page["items"][-1]["execution_id"]
        params["cursor"] = page["next"]
    assert seen == [failed, *reversed(ids)], "newest first, each once"
    assert pages == 3, "the last page says next: null, with no empty page after it"

    only_chain = api.http.get("/executions", params={"workflow_id": "chain"}).json()
    assert [i["execution_id"] for i in only_chain["items"]] == list(reversed(ids))
    only_failed = api.http.get("/executions", params={"state": "failed"}).json()
    assert [i["execution_id"] for i in only_failed["items"]] == [failed]
    item = only_failed["items"][0]
    assert item["error"].startswith("task 'x' failed: ValueError: boom")
    assert (item["tasks_total"], item["tasks_remaining"]) == (1, 0)
    assert "tasks" not in item and only_failed["next"] is None


def test_pause_then_resume_continues_where_it_stopped(api: Api) -> None:
    api.register(
        {"id": "slow", "tasks": [py("a", "sleep", params={"seconds": 1.5}), py("b", deps=("a",))]}
    )
    eid = api.start("slow")["execution_id"]
    # pause once `a` runs: a task still queued would wait too
    api.wait_until(
        eid,
        lambda doc: doc["tasks"]["a"]["state"] == "running",
        lambda _: "a never started",
        every=0.02,
    )
    paused = api.http.post(f"/executions/{eid}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    time.sleep(2.0)  # past the end of `a`
    doc = api.http.get(f"/executions/{eid}").json()
    assert doc["state"] == "paused"
    assert doc["tasks"]["a"]["state"] == "succeeded", "a running task finishes"
    assert doc["tasks"]["b"]["state"] in ("pending", "queued"), "nothing starts while paused"

    resumed = api.http.post(f"/executions/{eid}/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    done = api.wait(eid)
    assert done["state"] == "completed" and done["tasks"]["a"]["attempts"] == 1


def test_cancel_ends_a_running_execution(api: Api) -> None:
    api.register(
        # long enough that the cancel always lands while `a` runs, even on a loaded machine
        {"id": "slow", "tasks": [py("a", "sleep", params={"seconds": 3}), py("b", deps=("a",))]}
    )
    eid = api.start("slow")["execution_id"]
    cancelled = api.http.post(f"/executions/{eid}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    doc = cancelled.json()
    assert doc["state"] == "cancelled" and doc["tasks"]["b"]["state"] == "cancelled"
    time.sleep(0.8)
    assert api.http.get(f"/executions/{eid}").json()["tasks"]["b"]["state"] == "cancelled"


def test_retry_runs_a_failed_execution_again(api: Api, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    api.register(
        {
            "id": "flagged",
            "tasks": [py("a", "echo"), py("b", "until_flag", ("a",), params={"flag": str(flag)})],
        }
    )
    eid = api.start("flagged")["execution_id"]
    failed = api.wait(eid)
    assert failed["state"] == "failed" and failed["tasks"]["b"]["state"] == "failed"
    flag.touch()
    retried = api.http.post(f"/executions/{eid}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] == "running"
    done = api.wait(eid)
    assert done["state"] == "completed"
    assert done["tasks"]["a"]["attempts"] == 1, "succeeded tasks are kept"
    assert done["tasks"]["b"]["result"] == "flag found"
