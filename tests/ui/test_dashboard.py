"""The dashboard in a real browser: live DAG, controls, history, executions, definitions, auth.

Every test drives headless Chromium against the real API app (with ``mount_ui``) on an embedded
client, starts work through the HTTP API as any user would, and saves a screenshot per page.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flowq import Workflow
from flowq.compiler import compile_workflow
from tests.engine.conftest import py
from tests.ui.conftest import Dashboard, ServeDashboard

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips these tests, or fails them under CI
    expect = None  # type: ignore[assignment]

LIVE = {
    "id": "live",
    "version": 1,
    "tasks": [
        py("slow", "sleep", params={"seconds": 1.5}),
        py("after", "echo", ("slow",)),
        py("maybe", "noop", ("slow",), when="results.slow.task == 'not slow'"),
    ],
}


def stages(flag: Path) -> dict[str, Any]:
    """Three tasks in a row; the first blocks until ``flag`` exists."""
    return {
        "id": "stages",
        "version": 1,
        "tasks": [
            py("first", "wait_for_flag", params={"flag": str(flag)}),
            py("second", "noop", ("first",)),
            py("third", "noop", ("second",)),
        ],
    }


def node(dash: Dashboard, task: str) -> Any:
    return dash.page.locator(f'svg.dag .node[data-task="{task}"]')


def button(dash: Dashboard, action: str) -> Any:
    return dash.page.locator(f'#actions button[data-action="{action}"]')


def visible_actions(dash: Dashboard) -> list[str]:
    names: list[str] = dash.page.eval_on_selector_all(
        "#actions button", "els => els.filter(b => !b.hidden).map(b => b.dataset.action)"
    )
    return names


def mark_page(dash: Dashboard) -> None:
    """Leave a value in the page's window: it survives in-page updates, not a reload."""
    dash.page.evaluate("() => { window.flowqTestMark = 'same page'; }")


def assert_same_page(dash: Dashboard) -> None:
    assert dash.page.evaluate("() => window.flowqTestMark") == "same page", "the page reloaded"


def test_a_running_task_turns_succeeded_live_without_a_reload(dashboard: Dashboard) -> None:
    dash = dashboard
    dash.register(LIVE)
    dash.open("executions")
    expect(dash.page.locator("#executions-table tbody")).to_contain_text("No executions")
    mark_page(dash)

    eid = dash.start("live")
    dash.navigate(f"executions/{eid}")
    expect(node(dash, "slow")).to_have_attribute("data-state", "running")
    assert dash.status(eid)["tasks"]["slow"]["state"] == "running"
    expect(dash.page.locator("#execution-state")).to_have_text("running")
    dash.screenshot("execution-running")

    expect(node(dash, "slow")).to_have_attribute("data-state", "succeeded", timeout=15_000)
    expect(node(dash, "after")).to_have_attribute("data-state", "succeeded")
    expect(node(dash, "maybe")).to_have_attribute("data-state", "skipped")
    expect(dash.page.locator("#execution-state")).to_have_text("completed")
    expect(dash.page.locator("#execution-progress")).to_contain_text("3/3")
    assert_same_page(dash)
    assert visible_actions(dash) == [], "completed is final: no control applies"

    # edges come from depends_on; the one into the task with `when` is dashed
    edges = dash.page.locator("svg.dag path.edge")
    expect(edges).to_have_count(2)
    conditional = dash.page.locator('svg.dag path.edge[data-to="maybe"]')
    assert "conditional" in (conditional.get_attribute("class") or "")
    assert conditional.evaluate("e => getComputedStyle(e).strokeDasharray") not in ("", "none")
    plain = dash.page.locator('svg.dag path.edge[data-to="after"]')
    assert plain.evaluate("e => getComputedStyle(e).strokeDasharray") == "none"

    # the task's details: attempts, result, timestamps, its own events
    node(dash, "slow").click()
    panel = dash.page.locator("#task-panel")
    expect(panel.locator("#task-title")).to_have_text("slow")
    expect(panel.locator("#task-attempts dd")).to_have_text("1")
    expect(panel.locator("#task-result")).to_contain_text('"task": "slow"')
    doc = dash.status(eid)["tasks"]["slow"]
    for stamp in (doc["started_at"], doc["finished_at"]):
        expect(panel.locator(f'dl.facts time[datetime="{stamp}"]')).to_have_count(1)
    expect(panel.locator(".timeline li")).to_have_count(3)  # queued, running, succeeded

    # the history timeline: every event of the API's history, in order
    history = dash.http.get(f"/executions/{eid}/history").json()
    rows = dash.page.locator("#timeline li")
    expect(rows).to_have_count(len(history))
    shown = rows.evaluate_all("els => els.map(e => [e.dataset.task, e.dataset.to])")
    assert shown == [[e["task_id"] or "", e["to"]] for e in history]
    assert ["slow", "succeeded"] in shown and ["", "completed"] in shown
    dash.screenshot("execution-completed")

    dash.navigate("executions")
    row = dash.page.locator(f'#executions-table tr[data-execution="{eid}"]')
    expect(row).to_have_attribute("data-state", "completed")
    expect(row).to_contain_text("3/3")
    assert_same_page(dash)
    dash.screenshot("executions")


def test_pause_and_resume_with_the_buttons(dashboard: Dashboard, tmp_path: Path) -> None:
    dash, flag = dashboard, tmp_path / "release-first"
    dash.register(stages(flag))
    eid = dash.start("stages")
    try:
        dash.open(f"executions/{eid}")
        expect(node(dash, "first")).to_have_attribute("data-state", "running")
        expect(button(dash, "pause")).to_be_visible()
        assert visible_actions(dash) == ["pause", "cancel"]

        button(dash, "pause").click()
        expect(dash.page.locator("#execution-state")).to_have_text("paused")
        expect(dash.page.locator("#action-message")).to_contain_text("Paused at")
        assert visible_actions(dash) == ["resume", "cancel"]
        assert dash.status(eid)["state"] == "paused"

        flag.touch()  # the running task finishes; nothing more may start while paused
        expect(node(dash, "first")).to_have_attribute("data-state", "succeeded")
        dash.page.wait_for_timeout(1500)  # time enough for `second` to start, were it allowed
        doc = dash.status(eid)
        assert doc["state"] == "paused"
        second = doc["tasks"]["second"]
        assert (second["state"] in ("pending", "queued"), second["attempts"]) == (True, 0)
        expect(node(dash, "second")).to_have_attribute("data-state", second["state"])
        expect(node(dash, "third")).to_have_attribute("data-state", "pending")
        dash.screenshot("execution-paused")

        button(dash, "resume").click()
        expect(node(dash, "third")).to_have_attribute("data-state", "succeeded")
        expect(dash.page.locator("#execution-state")).to_have_text("completed")
        assert visible_actions(dash) == []
        assert dash.status(eid)["state"] == "completed"
        # the page reads the status and the history in two requests: the history's `completed`
        # may come with the next poll (every 5 s once the execution ended)
        timeline = dash.page.locator('#timeline li[data-task=""]')
        expect(timeline.and_(dash.page.locator('[data-to="completed"]'))).to_have_count(
            1, timeout=10_000
        )
        changes = timeline.evaluate_all("els => els.map(e => e.dataset.to)")
        assert changes == ["created", "running", "paused", "running", "completed"]
        dash.screenshot("execution-resumed")
    finally:
        flag.touch()


def test_a_refused_action_shows_the_api_error(dashboard: Dashboard, tmp_path: Path) -> None:
    """The page showed Pause, but the execution was cancelled elsewhere meanwhile: 409."""
    dash, flag = dashboard, tmp_path / "release-first"
    dash.register(stages(flag))
    eid = dash.start("stages")
    try:
        dash.open(f"executions/{eid}")
        expect(button(dash, "pause")).to_be_visible()

        # hold the page's view at "running" while another client cancels the execution
        stale = dash.status(eid)
        status_url = re.compile(rf"/executions/{re.escape(eid)}$")
        dash.page.route(status_url, lambda route: route.fulfill(json=stale))
        cancelled = dash.http.post(f"/executions/{eid}/cancel")
        assert cancelled.json()["state"] == "cancelled"
        refused = dash.http.post(f"/executions/{eid}/pause")
        assert refused.status_code == 409
        detail = refused.json()["detail"]
        assert "cancelled" in detail

        button(dash, "pause").click()
        message = dash.page.locator("#action-message [role=alert]")
        expect(message).to_have_text(detail)
        dash.screenshot("refused")

        dash.page.unroute(status_url)  # the page catches up, and the controls go
        expect(dash.page.locator("#execution-state")).to_have_text("cancelled")
        expect(message).to_have_text(detail)  # the refusal stays until the next action
        assert visible_actions(dash) == []
    finally:
        flag.touch()


def test_executions_are_filtered_and_paginated_newest_first(dashboard: Dashboard) -> None:
    dash = dashboard
    dash.register({"id": "alpha", "version": 1, "tasks": [py("a")]})
    dash.register({"id": "beta", "version": 1, "tasks": [py("b", "permanent")]})
    started = [dash.start("alpha") for _ in range(3)] + [dash.start("beta") for _ in range(2)]
    started += [dash.start("alpha") for _ in range(2)]
    for eid in started:
        dash.wait(eid)

    def api_page(cursor: str | None = None, **query: str) -> tuple[list[str], str | None]:
        params = {"limit": "3", **query, **({"cursor": cursor} if cursor else {})}
        body = dash.http.get("/executions", params=params).json()
        return [e["execution_id"] for e in body["items"]], body["next"]

    def shown() -> list[str]:
        ids: list[str] = dash.page.locator("#executions-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.execution)"
        )
        return ids

    def expect_rows(ids: list[str]) -> None:
        rows = dash.page.locator("#executions-table tbody tr[data-execution]")
        expect(rows).to_have_count(len(ids))
        expect(rows.first).to_have_attribute("data-execution", ids[0])
        assert shown() == ids

    first, cursor = api_page()
    assert first == started[::-1][:3]  # newest first
    second, cursor2 = api_page(cursor)
    third, last = api_page(cursor2)
    assert (len(third), last) == (1, None)

    dash.open("executions?limit=3")
    expect_rows(first)
    expect(dash.page.locator("#page-newer")).to_be_disabled()
    dash.page.click("#page-older")
    expect_rows(second)
    dash.page.click("#page-older")
    expect_rows(third)
    expect(dash.page.locator("#page-older")).to_be_disabled()
    dash.page.click("#page-newer")
    expect_rows(second)
    dash.screenshot("executions-page-2")

    dash.page.select_option("#filter-state", "failed")
    expect(dash.page).to_have_url(re.compile(r"state=failed"))
    expect_rows(api_page(state="failed")[0])
    states = dash.page.locator("#executions-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.state)"
    )
    assert states == ["failed", "failed"]

    dash.page.select_option("#filter-state", "")
    expect(dash.page.locator('#filter-workflow option[value="alpha"]')).to_have_count(1)
    dash.page.select_option("#filter-workflow", "alpha")
    expect_rows(api_page(workflow_id="alpha")[0])
    expect(dash.page.locator("#executions-table tbody")).not_to_contain_text("beta")
    expect(dash.page.locator("#page-older")).to_be_enabled()
    dash.screenshot("executions-filtered")


def test_definitions_show_versions_graph_and_compiled_plan(dashboard: Dashboard) -> None:
    dash = dashboard
    tasks = [
        py("a"),
        py("b", deps=("a",)),
        py("c", deps=("a",), when="vars.go"),
        py("d", deps=("b", "c"), trigger_rule="none_failed"),
    ]
    v1 = {"id": "branchy", "name": "Branches", "version": 1, "tasks": tasks}
    v2 = {**v1, "version": 2, "tasks": [*tasks, py("e", deps=("a",))]}
    dash.register(v1)
    dash.register(v2)
    plans = {n: compile_workflow(Workflow.from_dict(wf)).render() for n, wf in ((1, v1), (2, v2))}

    dash.open("workflows")
    row = dash.page.locator('#workflows-table tr[data-workflow="branchy"]')
    expect(row).to_contain_text("Branches")
    expect(row.locator(".chip")).to_have_text(["v1", "v2"])
    dash.screenshot("definitions")

    row.locator("a").first.click()
    expect(dash.page.locator("#plan-text")).to_have_text(plans[2])
    expect(dash.page.locator("svg.dag .node")).to_have_count(5)
    expect(dash.page.locator("#tasks-table tbody tr")).to_have_count(5)
    conditional = dash.page.locator("svg.dag path.edge.conditional")
    expect(conditional).to_have_count(1)
    assert conditional.get_attribute("data-to") == "c"
    # layers by longest path: every edge points right, a's successors share a column
    x = dict(
        dash.page.locator("svg.dag .node").evaluate_all(
            "els => els.map(g => [g.dataset.task, g.transform.baseVal[0].matrix.e])"
        )
    )
    for task in [*tasks, py("e", deps=("a",))]:
        for up in task["depends_on"]:
            assert x[up] < x[task["id"]], (up, task["id"], x)
    assert x["b"] == x["c"] == x["e"] < x["d"]
    dash.screenshot("definition-v2")

    dash.page.select_option("#version-select", "1")
    expect(dash.page.locator("#plan-text")).to_have_text(plans[1])
    expect(dash.page.locator("svg.dag .node")).to_have_count(4)

    # start v1 from its page: the new execution's page opens and runs to its end
    dash.page.click("#start summary")
    dash.page.fill("#start-vars", '{"go": true}')
    dash.page.click("#start button[type=submit]")
    expect(dash.page).to_have_url(re.compile(r"#/executions/[0-9a-f-]{36}$"))
    expect(dash.page.locator("#execution-state")).to_have_text("completed")
    eid = dash.page.url.rsplit("/", 1)[1]
    doc = dash.status(eid)
    assert (doc["workflow_id"], doc["version"], doc["vars"]) == ("branchy", 1, {"go": True})
    expect(node(dash, "c")).to_have_attribute("data-state", "succeeded")
    dash.screenshot("started-from-definition")


TOKEN = "s3cret-Tök3n"  # non-ASCII: the API compares the token's UTF-8 bytes


def test_with_a_token_the_page_asks_once_and_sends_it(serve_dashboard: ServeDashboard) -> None:
    sent = f"Bearer {TOKEN}".encode()  # header bytes, as curl and the page send them
    with serve_dashboard(api_token=TOKEN, headers={"Authorization": sent}) as dash:
        dash.register(LIVE)
        eid = dash.start("live")
        page, dialog = dash.page, dash.page.locator("#token-dialog")

        dash.open("executions")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("needs a token")
        dash.screenshot("token-asked")

        page.fill("#token-input", "wrong")
        page.press("#token-input", "Enter")
        expect(dialog).to_contain_text("refused")
        expect(dialog).to_be_visible()

        page.fill("#token-input", TOKEN)
        page.press("#token-input", "Enter")
        expect(dialog).to_be_hidden()
        expect(page.locator(f'#executions-table tr[data-execution="{eid}"]')).to_be_visible()
        dash.screenshot("token-accepted")

        dash.requests.clear()
        page.reload()  # the same tab keeps the token: no second question
        expect(page.locator(f'#executions-table tr[data-execution="{eid}"]')).to_be_visible()
        expect(dialog).to_be_hidden()
        api_calls = [r for r in dash.requests if r.resource_type == "fetch"]
        assert api_calls
        assert all(r.all_headers()["authorization"] == sent.decode("latin-1") for r in api_calls)

        page.evaluate("() => sessionStorage.setItem('flowq.token', 'expired')")
        dash.navigate("workflows")  # a 401 asks again
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("refused")
        page.fill("#token-input", TOKEN)
        page.press("#token-input", "Enter")
        expect(page.locator('#workflows-table tr[data-workflow="live"]')).to_be_visible()
