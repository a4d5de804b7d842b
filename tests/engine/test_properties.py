"""Property: random DAGs with `when`, trigger rules and failures always end as the rules say."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowq import Client, Workflow
from flowq import rules as R
from flowq.definition import TRIGGER_RULES
from tests.history_check import assert_legal_history

DECISION_STATE = {R.SKIP: "skipped", R.UPSTREAM_FAILED: "upstream_failed"}


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 30))
    tasks = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 3)))) if i else []
        task: dict[str, Any] = {
            "id": f"t{i}", "type": "python",
            "handler": "tests.flows:" + draw(st.sampled_from(["noop", "noop", "noop", "boom"])),
            "depends_on": [f"t{d}" for d in deps],
            "trigger_rule": draw(st.sampled_from(TRIGGER_RULES)),
        }  # fmt: skip
        if draw(st.integers(0, 4)) == 0:
            task["when"] = draw(st.sampled_from(["vars.go", "not vars.go", "vars.n > 1"]))
        tasks.append(task)
    return {"id": "prop", "tasks": tasks}


def expected_states(definition: dict[str, Any], vars: dict[str, Any]) -> dict[str, str]:
    """The reference: settle tasks in topological (definition) order by the rules."""
    states: dict[str, str] = {}
    for task in definition["tasks"]:
        ups = [states[d] for d in task["depends_on"]]
        failed = sum(s in ("failed", "upstream_failed") for s in ups)
        decision = R.decide(
            task["trigger_rule"], len(ups), 0, ups.count("succeeded"), failed, ups.count("skipped")
        )
        if decision in DECISION_STATE:
            states[task["id"]] = DECISION_STATE[decision]
            continue
        when = task.get("when")
        if when is not None and not eval(when, {}, {"vars": type("V", (), vars)}):
            states[task["id"]] = "skipped"
            continue
        states[task["id"]] = "failed" if task["handler"].endswith(":boom") else "succeeded"
    return states


def ts(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(definition=dags(), go=st.booleans(), n=st.integers(0, 3))
def test_random_dags_end_as_the_rules_say(
    client: Client, definition: dict[str, Any], go: bool, n: int
) -> None:
    vars = {"go": go, "n": n}
    client.register(Workflow.from_dict(definition), replace=True)
    doc = client.wait(client.start("prop", vars), timeout=60)  # every execution terminates
    want = expected_states(definition, vars)
    got = {tid: t["state"] for tid, t in doc["tasks"].items()}
    assert got == want
    ok = all(s in ("succeeded", "skipped") for s in got.values())
    assert doc["state"] == ("completed" if ok else "failed")
    assert_legal_history(client.history(doc["execution_id"]))
    by_id = {t["id"]: t for t in definition["tasks"]}
    for tid, t in doc["tasks"].items():
        if t["started_at"] is None:
            continue
        ups = [doc["tasks"][d] for d in by_id[tid]["depends_on"]]
        rule = by_id[tid]["trigger_rule"]
        ended = [ts(u["finished_at"]) for u in ups if u["finished_at"] is not None]
        if rule in ("one_success", "one_failed"):
            assert ups == [] or min(ended) <= ts(t["started_at"])
        else:
            assert len(ended) == len(ups), f"{tid} started before all its upstream ended"
            assert all(e <= ts(t["started_at"]) for e in ended)
