"""The engine end to end on the embedded default: in-process Celery, SQLite."""

from __future__ import annotations

import threading
import time
from datetime import date, datetime
from types import MappingProxyType

import pytest

from flowq import Client, Settings, Workflow
from flowq import states as S
from flowq.control import Control
from flowq.errors import ValidationError
from flowq.store import Tx
from tests.engine.conftest import Run, py
from tests.history_check import assert_legal_history


def ts(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


def test_results_flow_downstream_and_execution_completes(run: Run, client: Client) -> None:
    doc = run(
        {
            "id": "sum",
            "tasks": [
                py("a", "add", params={"n": 1}),
                py("b", "add", ("a",), params={"n": 10}),
                py("c", "add", ("a",), params={"n": 100}),
                py("d", "add", ("b", "c"), params={"n": 0}),
                py("e", "echo", ("d",), params={"total": "{{ results.d }}"}),
            ],
        },
        vars={"who": "me"},
    )
    assert doc["state"] == "completed"
    assert {k: v["result"] for k, v in doc["tasks"].items() if k != "e"} == {
        "a": 1,
        "b": 11,
        "c": 101,
        "d": 112,
    }
    echo = doc["tasks"]["e"]["result"]
    assert echo["params"] == {"total": 112}  # a whole-string template keeps its type
    assert echo["results"] == {"d": 112}  # ctx.results: direct upstream only
    assert echo["vars"] == {"who": "me"}
    assert echo["key"] == f"{doc['execution_id']}:e"
    assert all(t["attempts"] == 1 for t in doc["tasks"].values())
    assert_legal_history(client.history(doc["execution_id"]))


def test_non_series_parallel_dag_has_no_false_dependency(run: Run, client: Client) -> None:
    # a -> c, a -> d, b -> d with b slow: c must not wait for b; d waits for a and b.
    doc = run(
        {
            "id": "nsp",
            "tasks": [
                py("a", "sleep", params={"seconds": 0.05}),
                py("b", "sleep", params={"seconds": 1.0}),
                py("c", "sleep", ("a",), params={"seconds": 0.05}),
                py("d", "sleep", ("a", "b"), params={"seconds": 0.05}),
            ],
        }
    )
    assert doc["state"] == "completed"
    t = doc["tasks"]
    assert ts(t["c"]["finished_at"]) < ts(t["b"]["finished_at"])
    assert ts(t["d"]["started_at"]) >= ts(t["b"]["finished_at"])
    assert ts(t["d"]["started_at"]) >= ts(t["a"]["finished_at"])
    assert ts(t["c"]["started_at"]) >= ts(t["a"]["finished_at"])
    assert_legal_history(client.history(doc["execution_id"]))


def test_fan_out_of_50_runs_concurrently(run: Run) -> None:
    tasks = [py("start")] + [
        py(f"w{i}", "sleep", ("start",), params={"seconds": 0.2}) for i in range(50)
    ]
    tasks.append(py("join", deps=tuple(f"w{i}" for i in range(50))))
    doc = run({"id": "fan", "tasks": tasks})
    assert doc["state"] == "completed"
    t = doc["tasks"]
    span = (ts(t["join"]["started_at"]) - ts(t["start"]["finished_at"])).total_seconds()
    assert span < 0.5 * 50 * 0.2, f"50 tasks of 0.2 s took {span:.2f}s: not run concurrently"
    assert ts(t["join"]["started_at"]) >= max(ts(t[f"w{i}"]["finished_at"]) for i in range(50))


def test_the_history_is_causal_and_each_task_reads_in_time_order(run: Run, client: Client) -> None:
    """Tasks that run side by side record their changes out of time order (a held claim's
    start is written with its task's end; concurrent transactions commit in another order than
    their times). The history keeps the order recorded: each task's changes, and the
    execution's, still chain legally in time order, and the execution's end comes last."""
    tasks = [py(f"w{i}", "sleep", params={"seconds": 0.02}) for i in range(30)]
    tasks.append(py("join", deps=tuple(f"w{i}" for i in range(30))))
    doc = run({"id": "timeline", "tasks": tasks})
    assert doc["state"] == "completed"
    history = client.history(doc["execution_id"])
    assert len(history) == 3 + 31 * 3  # created, running, completed; queued, running, succeeded
    assert_legal_history(history)
    assert [e["id"] for e in history] == sorted(e["id"] for e in history)
    for who in {e["task_id"] for e in history}:
        times = [ts(e["at"]) for e in history if e["task_id"] == who]
        assert times == sorted(times), who
    assert (history[-1]["task_id"], history[-1]["to"]) == (None, "completed")
    assert history[-1]["at"] == doc["tasks"]["join"]["finished_at"]
    last_task_change = [e for e in history if e["task_id"]][-1]
    assert (last_task_change["task_id"], last_task_change["to"]) == ("join", "succeeded")


def test_retries_then_success_counts_attempts(run: Run, client: Client) -> None:
    doc = run(
        {
            "id": "flaky",
            "tasks": [
                py("f", "flaky", params={"failures": 2}, retries=2, retry_backoff=0.01),
                py("after", deps=("f",)),
            ],
        }
    )
    assert doc["state"] == "completed"
    assert doc["tasks"]["f"]["state"] == "succeeded"
    assert doc["tasks"]["f"]["attempts"] == 3
    assert doc["tasks"]["f"]["result"] == {"attempt": 3}
    f_hist = [
        (h["from"], h["to"]) for h in client.history(doc["execution_id"]) if h["task_id"] == "f"
    ]
    assert f_hist == [
        ("pending", "queued"),
        ("queued", "running"),
        ("running", "retrying"),
        ("retrying", "running"),
        ("running", "retrying"),
        ("retrying", "running"),
        ("running", "succeeded"),
    ]


def test_retries_exhausted_fail_the_execution(run: Run, client: Client) -> None:
    doc = run(
        {
            "id": "flaky2",
            "tasks": [
                py("f", "flaky", params={"failures": 2}, retries=1, retry_backoff=0.01),
                py("after", deps=("f",)),
            ],
        }
    )
    assert doc["state"] == "failed"
    f = doc["tasks"]["f"]
    assert (f["state"], f["attempts"]) == ("failed", 2)
    assert f["error"] == "RuntimeError: flaky failure on attempt 2"
    after = doc["tasks"]["after"]
    assert after["state"] == "upstream_failed" and after["started_at"] is None
    assert after["attempts"] == 0
    assert doc["error"] == "task 'f' failed: RuntimeError: flaky failure on attempt 2"
    assert_legal_history(client.history(doc["execution_id"]))


def test_permanent_error_does_not_retry(run: Run) -> None:
    doc = run({"id": "perm", "tasks": [py("p", "permanent", retries=5, retry_backoff=0.01)]})
    assert doc["state"] == "failed"
    assert doc["tasks"]["p"]["attempts"] == 1
    assert doc["tasks"]["p"]["error"] == "PermanentError: card declined"


def test_independent_branch_keeps_running_after_a_failure(run: Run) -> None:
    doc = run(
        {
            "id": "branches",
            "tasks": [
                py("bad", "boom"),
                py("bad_child", deps=("bad",)),
                py("good", "sleep", params={"seconds": 0.1}),
                py("good_child", deps=("good",)),
            ],
        }
    )
    assert doc["state"] == "failed"
    states = {k: v["state"] for k, v in doc["tasks"].items()}
    assert states == {
        "bad": "failed",
        "bad_child": "upstream_failed",
        "good": "succeeded",
        "good_child": "succeeded",
    }


def test_idempotent_start_returns_the_first_execution(client: Client) -> None:
    wf = Workflow.from_dict({"id": "idem", "tasks": [py("a")]})
    client.register(wf)
    first = client.start("idem", {}, idempotency_key="order-42")
    second = client.start("idem", {}, idempotency_key="order-42")
    other = client.start("idem", {}, idempotency_key="order-43")
    assert first == second != other
    assert client.wait(first, timeout=30)["state"] == "completed"
    assert len(client.list(workflow_id="idem")) == 2


def test_a_start_refuses_vars_that_are_not_json_and_stores_nothing(client: Client) -> None:
    wf = Workflow.from_dict({"id": "jsonvars", "tasks": [py("a")]})
    client.register(wf)
    cases = [
        ({"x": float("nan")}, ["vars.x: nan is not a JSON number"]),
        (
            {"s": "a\x00", "t\x00": 1},
            [
                "vars.s: a string holds the character U+0000, which cannot be stored",
                "vars: a key holds the character U+0000, which cannot be stored",
            ],
        ),
        (
            {"when": date(2024, 1, 1), "rows": [1, {"at": b"raw"}], "k": {3: "x"}},
            [
                "vars.when: not a JSON value (a Python date)",
                "vars.rows[1].at: not a JSON value (a Python bytes)",
                "vars.k: key 3 is not a string",
            ],
        ),
        ([1, 2], ["vars: must be a mapping (got list)"]),
        ({"m": MappingProxyType({})}, ["vars.m: not a JSON value (a Python mappingproxy)"]),
    ]
    for values, problems in cases:
        with pytest.raises(ValidationError) as info:
            client.start("jsonvars", values)  # type: ignore[arg-type]
        assert info.value.problems == problems
    with pytest.raises(ValidationError) as info:
        client.start("jsonvars", {}, idempotency_key=42)  # type: ignore[arg-type]
    assert info.value.problems == ["idempotency_key: must be a string (got int)"]
    for key, length in (("", 0), ("k" * 201, 201)):  # as the HTTP API's schema says
        with pytest.raises(ValidationError) as info:
            client.start("jsonvars", {}, idempotency_key=key)
        assert info.value.problems == [
            f"idempotency_key: must be 1 to 200 characters long (got {length})"
        ]
    assert client.list(workflow_id="jsonvars") == []
    eid = client.start("jsonvars", {"n": 1.5, "t": (1, "x"), "ok": None})
    assert client.wait(eid, timeout=30)["vars"] == {"n": 1.5, "t": [1, "x"], "ok": None}


def test_starts_follow_definitions_registered_by_another_process(client: Client) -> None:
    """A start runs the newest version, also one registered elsewhere since the last start."""
    client.register(Workflow.from_dict({"id": "vers", "tasks": [py("a")]}))
    first = client.start("vers")
    again = client.start("vers")  # this process knows the definition now
    with Client(Settings(database_url=client.store.url)) as other:
        other.register(Workflow.from_dict({"id": "vers", "version": 2, "tasks": [py("b")]}))
    newer = client.start("vers")
    pinned = client.start("vers", version=1)
    docs = {eid: client.wait(eid, timeout=30) for eid in (first, again, newer, pinned)}
    assert [sorted(docs[e]["tasks"]) for e in (first, again, newer, pinned)] == [
        ["a"],
        ["a"],
        ["b"],
        ["a"],
    ]
    assert all(d["state"] == "completed" for d in docs.values())
    for eid in docs:
        assert_legal_history(client.history(eid))


def test_a_result_the_store_cannot_hold_fails_the_task_for_good(run: Run) -> None:
    """NaN, U+0000 (which Postgres's JSON refuses) and Python-only values fail the task at once,
    with a one-line reason, on every store; keys that JSON writes as strings are fine."""
    kinds = ["nan", "nul", "nul key", "set", "loop", "proxy", "int keys"]
    doc = run(
        {
            "id": "odd",
            "tasks": [
                py(k.replace(" ", "_"), "odd_result", params={"kind": k}, retries=2) for k in kinds
            ],
        }
    )
    tasks = doc["tasks"]
    assert doc["state"] == S.FAILED
    assert {k: (v["state"], v["attempts"]) for k, v in tasks.items() if k != "int_keys"} == {
        "nan": (S.FAILED, 1),
        "nul": (S.FAILED, 1),
        "nul_key": (S.FAILED, 1),
        "set": (S.FAILED, 1),
        "loop": (S.FAILED, 1),
        "proxy": (S.FAILED, 1),
    }
    prefix = "PermanentError: the result is not JSON: "
    assert tasks["nan"]["error"] == prefix + "result.ratio: nan is not a JSON number"
    assert tasks["nul"]["error"] == (
        prefix + "result: a string holds the character U+0000, which cannot be stored"
    )
    assert tasks["nul_key"]["error"] == (
        prefix + "result: a key holds the character U+0000, which cannot be stored"
    )
    assert tasks["set"]["error"] == prefix + "result[0]: not a JSON value (a Python set)"
    assert tasks["loop"]["error"] == (
        prefix + "result[1]: refers back to a value that holds it (a cycle)"
    )
    assert tasks["proxy"]["error"] == prefix + "result.x: not a JSON value (a Python mappingproxy)"
    assert tasks["int_keys"]["state"] == S.SUCCEEDED
    assert tasks["int_keys"]["result"] == {"1": "one", "n": [1.5, None]}


def test_a_request_racing_another_is_judged_from_the_state_that_won(client: Client) -> None:
    """A cancel that read `paused` while a resume was committing is judged again from
    `running` (legal), not refused for the state it read."""
    wf = Workflow.from_dict(
        {"id": "racing", "tasks": [py("a", "sleep", params={"seconds": 0.3}), py("b", deps=("a",))]}
    )
    client.register(wf)
    eid = client.start("racing", {})
    client.pause(eid)
    resumed = threading.Event()

    def resume_slowly(tx: Tx) -> None:  # the resume's compare-and-set, committed 1 s later
        Control._control(tx, eid, "resume", "resumed")
        resumed.set()
        time.sleep(1.0)

    resumer = threading.Thread(target=client.coordinator.store.transact, args=(resume_slowly,))
    resumer.start()
    assert resumed.wait(10)
    client.cancel(eid)  # reads `paused`, then waits on the resume's row lock
    resumer.join()
    doc = client.wait(eid, timeout=30)
    assert doc["state"] == S.CANCELLED
    moves = [(h["from"], h["to"]) for h in client.history(eid) if h["task_id"] is None]
    assert moves[-3:] == [("running", "paused"), ("paused", "running"), ("running", "cancelled")]


def test_list_is_newest_first_and_filters(run: Run, client: Client) -> None:
    ok = run({"id": "l_ok", "tasks": [py("a")]})
    bad = run({"id": "l_bad", "tasks": [py("a", "boom")]})
    rows = client.list()
    assert [r["execution_id"] for r in rows[:2]] == [bad["execution_id"], ok["execution_id"]]
    mine = (ok["execution_id"], bad["execution_id"])  # the Postgres store is shared by tests
    failed = [r["execution_id"] for r in client.list(state="failed")]
    assert [e for e in failed if e in mine] == [bad["execution_id"]]
    assert [r["execution_id"] for r in client.list(workflow_id="l_ok")] == [ok["execution_id"]]


def test_chain_of_500_completes(run: Run) -> None:
    tasks = [py("t0")] + [py(f"t{i}", deps=(f"t{i - 1}",)) for i in range(1, 500)]
    doc = run({"id": "chain500", "tasks": tasks}, timeout=120)
    assert doc["state"] == "completed"
    assert all(t["state"] == S.SUCCEEDED for t in doc["tasks"].values())
