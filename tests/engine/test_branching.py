"""Branching and joins with Airflow's semantics, embedded: `when`, trigger rules, skipping."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from flowq import Client, Workflow
from tests.conftest import ROOT
from tests.engine.conftest import Run, py
from tests.history_check import assert_legal_history

BRANCHING = ROOT / "examples" / "branching.yaml"


def ts(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


def states(doc: dict[str, Any]) -> dict[str, str]:
    return {tid: task["state"] for tid, task in doc["tasks"].items()}


def transitions(client: Client, doc: dict[str, Any], task_id: str) -> list[tuple[str, str]]:
    return [
        (h["from"], h["to"]) for h in client.history(doc["execution_id"]) if h["task_id"] == task_id
    ]


def exclusive_choice(route: str) -> dict[str, Any]:
    return {
        "id": f"xor_{route}",
        "tasks": [
            py("decide", "value", params={"value": {"route": route}}),
            py("branch_a", "echo", ("decide",), when="results.decide.route == 'a'"),
            py("branch_b", "echo", ("decide",), when="results.decide.route == 'b'"),
            py(
                "merge",
                "echo",
                ("branch_a", "branch_b"),
                trigger_rule="none_failed_min_one_success",
            ),
            py("after", "echo", ("merge",)),
        ],
    }


@pytest.mark.parametrize(
    ("route", "runs", "skipped"), [("a", "branch_a", "branch_b"), ("b", "branch_b", "branch_a")]
)
def test_exclusive_choice_runs_one_branch_and_merges_once(
    run: Run, client: Client, route: str, runs: str, skipped: str
) -> None:
    doc = run(exclusive_choice(route))
    assert doc["state"] == "completed"
    assert states(doc) == {
        "decide": "succeeded",
        runs: "succeeded",
        skipped: "skipped",
        "merge": "succeeded",
        "after": "succeeded",
    }
    assert doc["tasks"][skipped]["attempts"] == 0 and doc["tasks"][skipped]["started_at"] is None
    merge = doc["tasks"]["merge"]
    assert merge["attempts"] == 1
    assert merge["result"]["results"] == {runs: doc["tasks"][runs]["result"]}
    assert transitions(client, doc, "merge").count(("queued", "running")) == 1
    skip_reason = [
        h["reason"]
        for h in client.history(doc["execution_id"])
        if h["task_id"] == skipped and h["to"] == "skipped"
    ]
    assert skip_reason == [f"when is false: results.decide.route == '{skipped[-1]}'"]
    assert ts(merge["started_at"]) >= ts(doc["tasks"][runs]["finished_at"])
    assert_legal_history(client.history(doc["execution_id"]))


def test_exclusive_choice_with_no_branch_taken_skips_the_merge(run: Run) -> None:
    doc = run(exclusive_choice("c"))
    assert doc["state"] == "completed"
    assert states(doc) == {
        "decide": "succeeded",
        "branch_a": "skipped",
        "branch_b": "skipped",
        "merge": "skipped",  # none_failed_min_one_success needs one success
        "after": "skipped",  # all_success under a skipped upstream: skipped
    }


def test_multi_choice_runs_every_chosen_branch(run: Run, client: Client) -> None:
    branches = ["email", "sms", "push", "fax"]
    doc = run(
        {
            "id": "multi",
            "tasks": [
                py("decide", "value", params={"value": ["email", "push"]}),
                *[
                    py(
                        name,
                        "sleep",
                        ("decide",),
                        when=f"'{name}' in results.decide",
                        params={"seconds": 0.3},
                    )
                    for name in branches
                ],
                py("merge", "echo", tuple(branches), trigger_rule="none_failed_min_one_success"),
            ],
        }
    )
    assert doc["state"] == "completed"
    assert states(doc) == {
        "decide": "succeeded",
        "email": "succeeded",
        "sms": "skipped",
        "push": "succeeded",
        "fax": "skipped",
        "merge": "succeeded",
    }
    assert sorted(doc["tasks"]["merge"]["result"]["results"]) == ["email", "push"]
    t = doc["tasks"]
    # the chosen branches ran side by side, and the merge waited for both
    assert ts(t["push"]["started_at"]) < ts(t["email"]["finished_at"])
    assert ts(t["merge"]["started_at"]) >= max(
        ts(t["email"]["finished_at"]), ts(t["push"]["finished_at"])
    )
    assert transitions(client, doc, "merge").count(("queued", "running")) == 1


def test_all_done_join_runs_after_a_failure(run: Run, client: Client) -> None:
    doc = run(
        {
            "id": "all_done",
            "tasks": [
                py("ok", "sleep", params={"seconds": 0.3}),
                py("bad", "boom"),
                py("cleanup", "echo", ("ok", "bad"), trigger_rule="all_done"),
                py("strict", "echo", ("ok", "bad")),
            ],
        }
    )
    assert doc["state"] == "failed"  # a task failed for good, even though cleanup ran
    assert states(doc) == {
        "ok": "succeeded",
        "bad": "failed",
        "cleanup": "succeeded",
        "strict": "upstream_failed",
    }
    assert doc["tasks"]["cleanup"]["result"]["results"] == {"ok": doc["tasks"]["ok"]["result"]}
    # all_done waits for every upstream, the slow success included
    assert ts(doc["tasks"]["cleanup"]["started_at"]) >= ts(doc["tasks"]["ok"]["finished_at"])
    assert doc["error"] == "task 'bad' failed: ValueError: boom"
    assert_legal_history(client.history(doc["execution_id"]))


@pytest.mark.parametrize("fails", [True, False])
def test_one_failed_is_an_error_handler_branch(run: Run, client: Client, fails: bool) -> None:
    doc = run(
        {
            "id": f"handler_{fails}",
            "tasks": [
                py("work", "boom" if fails else "noop"),
                py("on_error", "echo", ("work",), trigger_rule="one_failed"),
                py("next", "noop", ("work",)),
            ],
        }
    )
    if fails:
        assert states(doc) == {"work": "failed", "on_error": "succeeded", "next": "upstream_failed"}
        assert doc["state"] == "failed"
    else:
        assert states(doc) == {"work": "succeeded", "on_error": "skipped", "next": "succeeded"}
        assert doc["state"] == "completed"  # a skipped error handler does not fail anything
    assert_legal_history(client.history(doc["execution_id"]))


def test_skipped_propagates_under_all_success_but_not_other_rules(run: Run, client: Client) -> None:
    doc = run(
        {
            "id": "skip_chain",
            "tasks": [
                py("gate", when="vars.enabled"),
                py("ok"),
                py("child", deps=("gate",)),
                py("grandchild", deps=("child",)),
                py("mixed", deps=("gate", "ok")),
                py("tolerant", "echo", ("gate", "ok"), trigger_rule="none_failed"),
                py("any", "echo", ("gate", "ok"), trigger_rule="one_success"),
                py("done", "echo", ("gate", "ok"), trigger_rule="all_done"),
            ],
        },
        vars={"enabled": False},
    )
    assert doc["state"] == "completed"  # skipped counts as done: nothing failed
    assert states(doc) == {
        "gate": "skipped",
        "ok": "succeeded",
        "child": "skipped",
        "grandchild": "skipped",
        "mixed": "skipped",
        "tolerant": "succeeded",
        "any": "succeeded",
        "done": "succeeded",
    }
    for task_id in ("child", "grandchild", "mixed"):
        assert doc["tasks"][task_id]["started_at"] is None
    reasons = {
        h["task_id"]: h["reason"]
        for h in client.history(doc["execution_id"])
        if h["to"] == "skipped"
    }
    assert reasons["child"] == "gate skipped" and reasons["grandchild"] == "child skipped"
    assert_legal_history(client.history(doc["execution_id"]))


def test_one_success_runs_at_the_first_success(run: Run) -> None:
    doc = run(
        {
            "id": "first_wins",
            "tasks": [
                py("fast", "sleep", params={"seconds": 0.05}),
                py("slow", "sleep", params={"seconds": 1.5}),
                py("race", "echo", ("fast", "slow"), trigger_rule="one_success"),
            ],
        }
    )
    assert doc["state"] == "completed"
    t = doc["tasks"]
    assert ts(t["race"]["started_at"]) < ts(t["slow"]["finished_at"])
    assert list(t["race"]["result"]["results"]) == ["fast"]


def test_upstream_failed_versus_skipped_under_all_success(run: Run) -> None:
    doc = run(
        {
            "id": "failed_beats_skipped",
            "tasks": [
                py("gate", when="false"),
                py("bad", "permanent"),
                py("both", deps=("gate", "bad")),
            ],
        }
    )
    assert states(doc) == {"gate": "skipped", "bad": "failed", "both": "upstream_failed"}
    assert doc["state"] == "failed"


# -- examples/branching.yaml ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "expected", "final"),
    [
        (
            {"amount": 120, "region": "eu"},
            {"auto_approve": "succeeded", "manual_review": "skipped", "fraud_check": "skipped",
             "sanctions_check": "skipped", "vat_check": "succeeded", "alert": "skipped"},
            "completed",
        ),
        (
            {"amount": 2500, "region": "ch"},
            {"auto_approve": "skipped", "manual_review": "succeeded", "fraud_check": "succeeded",
             "sanctions_check": "succeeded", "vat_check": "skipped", "alert": "skipped"},
            "completed",
        ),
        (
            {"amount": 80, "region": "us", "fail_booking": True},
            {"auto_approve": "succeeded", "manual_review": "skipped", "fraud_check": "skipped",
             "sanctions_check": "skipped", "vat_check": "skipped", "alert": "succeeded"},
            "failed",
        ),
    ],
)  # fmt: skip
def test_branching_example(
    client: Client, variables: dict[str, Any], expected: dict[str, str], final: str
) -> None:
    wf = Workflow.from_file(BRANCHING)
    client.register(wf, replace=True)
    doc = client.wait(client.start(wf.id, variables), timeout=60)
    assert doc["state"] == final
    got = states(doc)
    assert {k: got[k] for k in expected} == expected
    assert got["decision"] == "succeeded" and got["checks_done"] == "succeeded"
    assert got["cleanup"] == "succeeded"
    assert got["book"] == ("failed" if variables.get("fail_booking") else "succeeded")
    ran = [k for k in ("auto_approve", "manual_review") if got[k] == "succeeded"]
    assert doc["tasks"]["decision"]["result"]["upstream"] == ran
    assert_legal_history(client.history(doc["execution_id"]))


def test_branching_example_through_flowq_run(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "FLOWQ_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
    res = subprocess.run(
        [sys.executable, "-m", "flowq.cli", "run", str(BRANCHING), "--json",
         "--var", "amount=2500", "--var", "region=ch"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["state"] == "completed"
    assert states(doc)["manual_review"] == "succeeded" and states(doc)["auto_approve"] == "skipped"
