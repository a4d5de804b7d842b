"""Retries with exponential backoff, the broker-safe bound on delays, and timeouts (embedded)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowq import Client, ValidationError, Workflow
from flowq.definition import MAX_BROKER_WAIT
from tests.conftest import ROOT
from tests.engine.conftest import Run, py
from tests.history_check import assert_legal_history
from workers import config
from workers.app import HARD_LIMIT_GRACE


def ts(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


def attempt_windows(
    client: Client, execution_id: str, task_id: str
) -> tuple[list[float], list[float]]:
    """(seconds each attempt ran, seconds waited between attempts), from the history."""
    events = [h for h in client.history(execution_id) if h["task_id"] == task_id]
    ran, waited = [], []
    started: datetime | None = None
    stopped: datetime | None = None
    for event in events:
        if event["to"] == "running":
            started = ts(event["at"])
            if stopped is not None:
                waited.append((started - stopped).total_seconds())
        elif event["from"] == "running":
            assert started is not None
            stopped = ts(event["at"])
            ran.append((stopped - started).total_seconds())
    return ran, waited


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_delays_double_and_stop_at_the_cap(run: Run, client: Client) -> None:
    doc = run(
        {
            "id": "backoff",
            "tasks": [
                py(
                    "f",
                    "flaky",
                    params={"failures": 4},
                    retries=4,
                    retry_backoff=0.25,
                    retry_backoff_max=0.6,
                    retry_jitter=False,
                )
            ],
        }
    )
    f = doc["tasks"]["f"]
    assert (doc["state"], f["state"], f["attempts"]) == ("completed", "succeeded", 5)
    _, waited = attempt_windows(client, doc["execution_id"], "f")
    expected = [0.25, 0.5, 0.6, 0.6]  # 0.25 * 2**n, capped at 0.6
    assert len(waited) == 4
    # Each wait lasted at least its delay (the exact delays are the recorded countdowns below:
    # a wall-clock upper bound would only measure how loaded the machine is).
    for got, want in zip(waited, expected, strict=True):
        assert got >= want - 0.02, (waited, expected)
    # the delays double, then the cap holds them
    reasons = [h["reason"] for h in client.history(doc["execution_id"]) if h["to"] == "retrying"]
    assert [r.rsplit("retrying in ", 1)[1] for r in reasons] == ["0.25s", "0.50s", "0.60s", "0.60s"]
    assert_legal_history(client.history(doc["execution_id"]))


def test_jittered_delays_stay_within_their_bound(run: Run, client: Client) -> None:
    doc = run(
        {
            "id": "jitter",
            "tasks": [
                py("f", "flaky", params={"failures": 3}, retries=3, retry_backoff=0.3),
            ],
        }
    )
    assert doc["tasks"]["f"]["attempts"] == 4
    reasons = [h["reason"] for h in client.history(doc["execution_id"]) if h["to"] == "retrying"]
    delays = [float(r.rsplit("retrying in ", 1)[1].rstrip("s")) for r in reasons]
    for delay, bound in zip(delays, [0.3, 0.6, 1.2], strict=True):
        assert 0 <= delay <= bound
    _, waited = attempt_windows(client, doc["execution_id"], "f")
    for got, delay in zip(waited, delays, strict=True):
        assert got >= delay - 0.02, (waited, delays)


# -- delays below the broker's visibility timeout ---------------------------------------------


def test_the_bound_stays_below_the_redis_visibility_timeout() -> None:
    visibility = config.broker_transport_options["visibility_timeout"]
    assert isinstance(visibility, int | float)
    assert visibility > MAX_BROKER_WAIT + HARD_LIMIT_GRACE


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ("task", "retry_backoff_max"),
        ("task", "timeout"),
        ("defaults", "retry_backoff_max"),
        ("defaults", "timeout"),
    ],
)
def test_waits_longer_than_the_bound_are_rejected(where: str, key: str) -> None:
    task = py("a")
    definition: dict[str, Any] = {"id": "too_long", "tasks": [task]}
    if where == "task":
        task[key] = MAX_BROKER_WAIT + 1
    else:
        definition["defaults"] = {key: MAX_BROKER_WAIT + 1}
    with pytest.raises(ValidationError) as info:
        Workflow.from_dict(definition, source="wf.yaml")
    prefix = "wf.yaml: task 'a': " if where == "task" else "wf.yaml: defaults: "
    assert info.value.problems == [
        f"{prefix}{key}: must be <= 3000 seconds (got 3001): a longer wait would outlive the "
        "broker's visibility timeout (3600 s) and run the task twice"
    ]
    task[key] = MAX_BROKER_WAIT  # the bound itself is fine
    definition.pop("defaults", None)
    assert Workflow.from_dict(definition).task("a").model_dump()[key] == MAX_BROKER_WAIT


def test_flowq_validate_reports_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump({"id": "slow", "tasks": [py("a", retry_backoff_max=7200)]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWQ_")}
    res = subprocess.run(
        [sys.executable, "-m", "flowq.cli", "validate", str(path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"{path}: task 'a': retry_backoff_max: must be <= 3000 seconds (got 7200): a longer wait "
        "would outlive the broker's visibility timeout (3600 s) and run the task twice"
    ]


# -- timeouts ---------------------------------------------------------------------------------


def test_an_attempt_past_its_timeout_fails_and_is_retried(run: Run, client: Client) -> None:
    doc = run(
        {
            "id": "timeout",
            "tasks": [
                py(
                    "slow",
                    "sleep",
                    params={"seconds": 5},
                    timeout=0.5,
                    retries=1,
                    retry_backoff=0.1,
                    retry_jitter=False,
                ),
                py("after", deps=("slow",)),
            ],
        }
    )
    slow = doc["tasks"]["slow"]
    assert (doc["state"], slow["state"], slow["attempts"]) == ("failed", "failed", 2)
    assert slow["error"] == "TaskTimeout: the attempt ran longer than the task's timeout of 0.5s"
    assert doc["tasks"]["after"]["state"] == "upstream_failed"
    ran, _ = attempt_windows(client, doc["execution_id"], "slow")
    assert len(ran) == 2 and all(0.45 <= r < 4.0 for r in ran), ran
    history = client.history(doc["execution_id"])
    retrying = [h["reason"] for h in history if h["task_id"] == "slow" and h["to"] == "retrying"]
    assert retrying == [
        "TaskTimeout: the attempt ran longer than the task's timeout of 0.5s; retrying in 0.10s"
    ]
    assert_legal_history(history)


def test_a_timed_out_attempt_is_retried_and_can_succeed(run: Run) -> None:
    doc = run(
        {
            "id": "timeout_then_ok",
            "tasks": [
                py(
                    "f",
                    "slow_first",
                    params={"seconds": 5},
                    timeout=0.4,
                    retries=2,
                    retry_backoff=0.05,
                ),
                py("quick", "sleep", params={"seconds": 0.05}, timeout=5),
            ],
        }
    )
    assert doc["state"] == "completed"
    f = doc["tasks"]["f"]
    assert (f["state"], f["attempts"], f["result"]) == ("succeeded", 2, {"attempt": 2})
    assert doc["tasks"]["quick"]["result"]["task"] == "quick"  # within its timeout: the result


class _SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self.stop.set()
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[_SilentServer]:
    server = _SilentServer()
    try:
        yield server
    finally:
        server.close()


def test_http_task_against_a_server_that_never_answers(
    run: Run, client: Client, silent: _SilentServer
) -> None:
    common = {"type": "http", "retries": 1, "retry_backoff": 0.05}
    doc = run(
        {
            "id": "http_hang",
            "tasks": [
                # request_timeout defaults to the task's timeout: whichever fires first ends it
                {"id": "by_default", "url": f"{silent.url}/a", "timeout": 0.5, **common},
                # requests gives up on its own
                {"id": "by_request", "url": f"{silent.url}/b", "timeout": 5,
                 "request_timeout": 0.5, **common},
                # the attempt's timeout stops waiting before requests would
                {"id": "by_attempt", "url": f"{silent.url}/c", "timeout": 0.5,
                 "request_timeout": 30, **common},
            ],
        }
    )  # fmt: skip
    assert doc["state"] == "failed"
    tasks = doc["tasks"]
    assert {t["state"] for t in tasks.values()} == {"failed"}
    assert {t["attempts"] for t in tasks.values()} == {2}
    gave_up = f"TaskError: GET {silent.url}/%s: no response within 0.5s"
    timed_out = "TaskTimeout: the attempt ran longer than the task's timeout of 0.5s"
    assert tasks["by_default"]["error"] in (gave_up % "a", timed_out)
    assert tasks["by_request"]["error"] == gave_up % "b"
    assert tasks["by_attempt"]["error"] == timed_out
    for task_id in tasks:
        ran, _ = attempt_windows(client, doc["execution_id"], task_id)
        assert len(ran) == 2 and all(0.45 <= r < 4.0 for r in ran), (task_id, ran)
    assert len(silent.conns) == 6  # each attempt reached the server
