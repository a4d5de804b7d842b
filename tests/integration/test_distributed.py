"""The engine distributed: Redis broker, Postgres store, separate `flowq worker` processes."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowq import Client, Workflow
from tests.engine.conftest import py
from tests.history_check import assert_legal_history
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


def ts(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


def run(
    client: Client,
    definition: dict[str, Any],
    vars: dict[str, Any] | None = None,
    timeout: float = 120,
) -> dict[str, Any]:
    wf = Workflow.from_dict(definition)
    client.register(wf, replace=True)
    return client.wait(client.start(wf.id, vars or {}), timeout=timeout)


def test_results_and_templates_across_workers(client: Client) -> None:
    doc = run(
        client,
        {
            "id": "d_sum",
            "tasks": [
                py("a", "add", params={"n": "{{ vars.start }}"}),
                py("b", "add", ("a",), params={"n": 10}),
                py("c", "add", ("a",), params={"n": 100}),
                py("d", "add", ("b", "c"), params={"n": 0}),
            ],
        },
        vars={"start": 1},
    )
    assert doc["state"] == "completed", doc
    assert {k: v["result"] for k, v in doc["tasks"].items()} == {
        "a": 1,
        "b": 11,
        "c": 101,
        "d": 112,
    }
    assert_legal_history(client.history(doc["execution_id"]))


def test_non_series_parallel_dag_slow_branch(client: Client) -> None:
    doc = run(
        client,
        {
            "id": "d_nsp",
            "tasks": [
                py("a", "sleep", params={"seconds": 0.05}),
                py("b", "sleep", params={"seconds": 1.5}),
                py("c", "sleep", ("a",), params={"seconds": 0.05}),
                py("d", "sleep", ("a", "b"), params={"seconds": 0.05}),
            ],
        },
    )
    assert doc["state"] == "completed"
    t = doc["tasks"]
    assert ts(t["c"]["finished_at"]) < ts(t["b"]["finished_at"])
    assert ts(t["d"]["started_at"]) >= ts(t["b"]["finished_at"])
    assert ts(t["d"]["started_at"]) >= ts(t["a"]["finished_at"])


def test_fan_out_of_50_uses_both_workers(client: Client) -> None:
    tasks = [py("start")] + [
        py(f"w{i}", "sleep", ("start",), params={"seconds": 0.2}) for i in range(50)
    ]
    tasks.append(py("join", deps=tuple(f"w{i}" for i in range(50))))
    doc = run(client, {"id": "d_fan", "tasks": tasks})
    assert doc["state"] == "completed"
    t = doc["tasks"]
    span = (ts(t["join"]["started_at"]) - ts(t["start"]["finished_at"])).total_seconds()
    assert span < 0.5 * 50 * 0.2, f"50 tasks of 0.2 s took {span:.2f}s"
    pids = {t[f"w{i}"]["result"]["pid"] for i in range(50)}
    assert len(pids) >= 3, f"expected the work spread over 2 workers x 2 processes, got {pids}"


def test_retries_distributed(client: Client) -> None:
    ok = run(
        client,
        {
            "id": "d_flaky",
            "tasks": [
                py(
                    "f",
                    "flaky",
                    params={"failures": 2},
                    retries=2,
                    retry_backoff=0.05,
                    retry_jitter=False,
                ),
                py("after", deps=("f",)),
            ],
        },
    )
    assert ok["state"] == "completed"
    assert (ok["tasks"]["f"]["state"], ok["tasks"]["f"]["attempts"]) == ("succeeded", 3)
    bad = run(
        client,
        {
            "id": "d_flaky1",
            "tasks": [
                py("f", "flaky", params={"failures": 2}, retries=1, retry_backoff=0.05),
                py("after", deps=("f",)),
            ],
        },
    )
    assert bad["state"] == "failed"
    assert (bad["tasks"]["f"]["state"], bad["tasks"]["f"]["attempts"]) == ("failed", 2)
    assert bad["tasks"]["after"]["state"] == "upstream_failed"
    assert bad["tasks"]["after"]["started_at"] is None
    assert "RuntimeError: flaky failure on attempt 2" in bad["error"]
    assert_legal_history(client.history(bad["execution_id"]))


def test_twenty_executions_at_once_on_two_workers(client: Client) -> None:
    wf = Workflow.from_dict(
        {
            "id": "d_many",
            "tasks": [
                py("a", "sleep", params={"seconds": 0.05}),
                py("b", "sleep", ("a",), params={"seconds": 0.05}),
                py("c", "sleep", ("a",), params={"seconds": 0.05}),
                py("d", "add", ("b", "c")),
            ],
        }
    )
    client.register(wf, replace=True)
    ids = [client.start("d_many", {"i": i}) for i in range(20)]
    docs = [client.wait(eid, timeout=120) for eid in ids]
    assert [d["state"] for d in docs] == ["completed"] * 20
    pids = {d["tasks"][t]["result"]["pid"] for d in docs for t in ("a", "b", "c")}
    assert len(pids) >= 2
    for eid in ids:
        assert_legal_history(client.history(eid))


def test_cli_register_start_status_history_list(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "cli_flow.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "id": "d_cli",
                "version": 1,
                "tasks": [
                    py("a", "echo", params={"order": "{{ vars.order_id }}"}),
                    py("b", deps=("a",)),
                ],
            }
        )
    )
    reg = cluster.flowq("register", str(path))
    assert reg.returncode == 0, reg.stderr
    assert "registered d_cli@1" in reg.stdout
    started = cluster.flowq("start", "d_cli@1", "--var", "order_id=42", "--wait", "--json")
    assert started.returncode == 0, started.stderr
    doc = json.loads(started.stdout)
    assert doc["state"] == "completed"
    assert doc["tasks"]["a"]["result"]["params"] == {"order": 42}
    eid = doc["execution_id"]
    status = cluster.flowq("status", eid, "--json")
    assert json.loads(status.stdout)["tasks"]["b"]["state"] == "succeeded"
    history = json.loads(cluster.flowq("history", eid, "--json").stdout)
    assert history[0]["to"] == "created" and history[-1]["to"] == "completed"
    assert_legal_history(history)
    listed = json.loads(cluster.flowq("list", "--workflow", "d_cli", "--json").stdout)
    assert [r["execution_id"] for r in listed] == [eid]
    plain = cluster.flowq("start", "d_cli", "--var", "order_id=7")
    assert plain.returncode == 0 and len(plain.stdout.strip()) == 36
    missing = cluster.flowq("status", "no-such-execution")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "flowq: execution no-such-execution not found"
    unknown = cluster.flowq("start", "nope")
    assert unknown.returncode == 1 and "workflow nope is not registered" in unknown.stderr


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["chain", "fan_out"])
def test_two_thousand_tasks(client: Client, shape: str) -> None:
    n = 2000
    if shape == "chain":
        tasks = [py("t0")] + [py(f"t{i}", deps=(f"t{i - 1}",)) for i in range(1, n)]
    else:
        tasks = [py("root")] + [py(f"t{i}", deps=("root",)) for i in range(n)]
        tasks.append(py("join", deps=tuple(f"t{i}" for i in range(n))))
    doc = run(client, {"id": f"d_{shape}_{n}", "tasks": tasks}, timeout=600)
    assert doc["state"] == "completed"
    assert sum(1 for t in doc["tasks"].values() if t["state"] == "succeeded") == len(tasks)
