"""Nothing lost, nothing doubled: crashed workers, a flushed broker, duplicate messages."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from flowq import Client, WaitTimeout, Workflow
from flowq.coordinator import Dispatch
from tests.api.conftest import free_port
from tests.engine.conftest import py
from tests.history_check import assert_legal_history
from tests.integration.conftest import Cluster
from tests.integration.test_control import running_count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUEUE = "durability"
FAST_RECOVERY = {
    "FLOWQ_HEARTBEAT_SECONDS": "0.5",
    "FLOWQ_LEASE_SECONDS": "3",
    "FLOWQ_REDISPATCH_SECONDS": "3",
}


@pytest.fixture
def dedicated(cluster: Cluster) -> Iterator[list[Any]]:
    """Workers started by a test on the durability queue; stopped afterwards."""
    started: list[Any] = []
    yield started
    for proc in started:
        cluster.stop_worker(proc, signal.SIGKILL)


def start(
    cluster: Cluster,
    started: list[Any],
    name: str,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
) -> Any:
    env = {**FAST_RECOVERY, **(env or {})}
    proc = cluster.start_worker(name, "-Q", QUEUE, concurrency=concurrency, env=env)
    started.append(proc)
    return proc


def task(task_id: str, fn: str, deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return py(task_id, fn, deps, queue=QUEUE, **extra)


def test_worker_killed_mid_task_runs_again_elsewhere(
    cluster: Cluster, client: Client, dedicated: list[Any], tmp_path: Path
) -> None:
    victim = start(cluster, dedicated, "victim")
    pidfile = tmp_path / "pid"
    wf = Workflow.from_dict({"id": "k_main", "tasks": [
        task("work", "pid_then_sleep", params={"pidfile": str(pidfile), "seconds": 6},
             retries=1),
        task("after", "noop", ("work",))]})  # fmt: skip
    client.register(wf, replace=True)
    eid = client.start("k_main", {})
    wait_for(lambda: pidfile.exists(), what="the task to start on the victim")
    start(cluster, dedicated, "rescuer")
    assert client.status(eid)["tasks"]["work"]["state"] == "running"
    killed_at = time.monotonic()
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its pool: like a machine dying
    doc = client.wait(eid, timeout=60)
    assert time.monotonic() - killed_at < 30
    assert doc["state"] == "completed"
    assert doc["tasks"]["work"]["attempts"] == 2
    assert doc["tasks"]["work"]["result"]["attempt"] == 2
    history = client.history(eid)
    assert_legal_history(history)
    assert [h["to"] for h in history if h["task_id"] == "work"].count("succeeded") == 1
    lost = [h for h in history if h["task_id"] == "work" and h["from"] == "running"
            and h["to"] == "queued"]  # fmt: skip
    assert lost and "lost" in lost[0]["reason"]


def kill_mid_task(
    client: Client,
    tmp_path: Path,
    workflow_id: str,
    running: str,
    kill: Callable[[int], None] = lambda pid: os.kill(pid, signal.SIGKILL),
) -> list[dict[str, Any]]:
    """Run a task that sleeps, ``kill`` (by default: SIGKILL its pool process, given its pid)
    once it started, wait for the end: the task completed on its second attempt in another
    process. The history is returned.

    ``running``: the task's state the store shows while it sleeps (`queued` while its claim is
    held).
    """
    pidfile = tmp_path / "pid"
    wf = Workflow.from_dict({"id": workflow_id, "tasks": [
        task("work", "pid_then_sleep", params={"pidfile": str(pidfile), "seconds": 2},
             retries=1)]})  # fmt: skip
    client.register(wf, replace=True)
    eid = client.start(workflow_id, {})
    wait_for(lambda: pidfile.exists(), what="the task to start")
    assert client.status(eid)["tasks"]["work"]["state"] == running
    first_pid = int(pidfile.read_text())
    kill(first_pid)
    doc = client.wait(eid, timeout=60)
    assert doc["state"] == "completed"
    assert doc["tasks"]["work"]["attempts"] == 2
    assert doc["tasks"]["work"]["result"]["pid"] != first_pid
    history = client.history(eid)
    assert_legal_history(history)
    return history


def lost_before_commit(history: list[dict[str, Any]]) -> list[str]:
    """The reasons of the task's running -> queued steps."""
    return [h["reason"] for h in history if h["task_id"] == "work" and h["to"] == "queued"
            and h["from"] == "running"]  # fmt: skip


def test_pool_child_killed_mid_task_is_redelivered(
    cluster: Cluster, client: Client, dedicated: list[Any], tmp_path: Path
) -> None:
    # claims committed at once: the redelivered message finds its task `running`
    start(cluster, dedicated, "child_victim", env={"FLOWQ_CLAIM_HOLD_SECONDS": "0"})
    kill_mid_task(client, tmp_path, "k_child", running="running")


def test_an_attempt_killed_before_its_held_claim_was_committed_is_counted(
    cluster: Cluster, client: Client, dedicated: list[Any], tmp_path: Path
) -> None:
    # a long hold: the claim is certainly uncommitted when the pool process dies, and
    # Postgres rolls it back; the claim's mark in Redis makes the redelivery count the attempt
    # no republishing by the reconciler: its duplicate message could run the task first
    held = {"FLOWQ_CLAIM_HOLD_SECONDS": "60", "FLOWQ_REDISPATCH_SECONDS": "600"}
    start(cluster, dedicated, "held_victim", env=held)
    history = kill_mid_task(client, tmp_path, "k_held", running="queued")
    lost = lost_before_commit(history)
    assert len(lost) == 1 and "before its claim was committed" in lost[0]


def test_an_attempt_killed_holding_is_counted_when_a_duplicate_runs_first(
    cluster: Cluster, client: Client, dedicated: list[Any], tmp_path: Path
) -> None:
    # the whole worker dies while its claim is held: its message waits for Redis' visibility
    # timeout (an hour), so the rescuer's recovery republishes the task (queued for 3 s) and
    # that duplicate, another message id, claims it first, under the dead attempt's number
    held = {"FLOWQ_CLAIM_HOLD_SECONDS": "60"}
    alone = {**held, "FLOWQ_REDISPATCH_SECONDS": "600"}  # the victim republishes nothing
    victim = start(cluster, dedicated, "dup_victim", env=alone)

    def machine_dies(_: int) -> None:
        os.killpg(victim.pid, signal.SIGKILL)
        start(cluster, dedicated, "dup_rescuer", env=held)

    history = kill_mid_task(client, tmp_path, "k_dup", running="queued", kill=machine_dies)
    lost = lost_before_commit(history)
    assert len(lost) == 1 and "attempt 1, before its claim was committed" in lost[0]


def test_a_claim_held_by_a_lost_worker_is_dispatched_again_after_the_lease(
    cluster: Cluster, client: Client, dedicated: list[Any], tmp_path: Path
) -> None:
    # as above, but nothing republishes waiting tasks for 10 minutes: the rescuer finds the
    # dead worker's mark of the claim Postgres rolled back, once the worker's lease is over
    held = {"FLOWQ_CLAIM_HOLD_SECONDS": "60", "FLOWQ_REDISPATCH_SECONDS": "600"}
    victim = start(cluster, dedicated, "orphan_victim", env=held)
    killed_at: list[float] = []

    def machine_dies(_: int) -> None:
        os.killpg(victim.pid, signal.SIGKILL)
        killed_at.append(time.monotonic())
        start(cluster, dedicated, "orphan_rescuer", env=held)

    history = kill_mid_task(client, tmp_path, "k_orphan", running="queued", kill=machine_dies)
    assert time.monotonic() - killed_at[0] < 30  # the lease is 3 s; a republish took 600 s
    lost = lost_before_commit(history)
    assert len(lost) == 1 and "attempt 1, before its claim was committed" in lost[0]
    republished = [h for h in history if h["task_id"] == "work" and h["to"] == "queued"]
    assert len(republished) == 2, republished  # the first dispatch, and the lost attempt's


def test_successes_in_a_commit_batch_lost_with_their_worker_run_again_and_count(
    cluster: Cluster, client: Client, dedicated: list[Any], tmp_path: Path
) -> None:
    # tasks without successors that ended but whose commit batch was still open (a window as
    # long as the hold here) when the whole worker died: Postgres rolls them back, they are
    # `queued` again, and the rescuer, once the lease is over, finds their marks, counts each
    # dead attempt and runs each task again
    held = {"FLOWQ_CLAIM_HOLD_SECONDS": "60", "FLOWQ_COMMIT_BATCH_SECONDS": "60"}
    victim = start(
        cluster, dedicated, "batch_victim", env={**held, "FLOWQ_REDISPATCH_SECONDS": "600"}
    )
    lines = tmp_path / "lines"
    leaves = [f"l{i}" for i in range(3)]
    tasks = [task(t, "append_line", params={"path": str(lines)}, retries=1) for t in leaves]
    wf = Workflow.from_dict({"id": "k_batch", "tasks": tasks})
    client.register(wf, replace=True)
    eid = client.start("k_batch", {})
    wait_for(
        lambda: lines.exists() and len(lines.read_text().splitlines()) == 3,
        what="the three tasks to run",
    )
    time.sleep(0.5)  # their successes sit in the open batch
    doc = client.status(eid)
    assert [doc["tasks"][t]["state"] for t in leaves] == ["queued"] * 3, "nothing committed yet"
    os.killpg(victim.pid, signal.SIGKILL)
    start(cluster, dedicated, "batch_rescuer", env=held)
    doc = client.wait(eid, timeout=60)
    assert doc["state"] == "completed", doc
    assert all(doc["tasks"][t]["attempts"] == 2 for t in leaves), doc["tasks"]
    assert sorted(lines.read_text().splitlines()) == sorted(
        f"{eid}:{t} attempt {n}" for t in leaves for n in (1, 2)
    )
    history = client.history(eid)
    assert_legal_history(history)
    for t in leaves:
        lost = [h["reason"] for h in history if h["task_id"] == t and h["from"] == "running"
                and h["to"] == "queued"]  # fmt: skip
        assert len(lost) == 1 and "attempt 1, before its claim was committed" in lost[0], lost
    assert (history[-1]["task_id"], history[-1]["to"]) == (None, "completed")


def test_poison_task_fails_after_its_attempts(
    cluster: Cluster, client: Client, dedicated: list[Any]
) -> None:
    start(cluster, dedicated, "poisoned")
    wf = Workflow.from_dict(
        {
            "id": "k_poison",
            "tasks": [
                task("poison", "kill_my_process", retries=1),
                task("after", "noop", ("poison",)),
            ],
        }
    )
    client.register(wf, replace=True)
    doc = client.wait(client.start("k_poison", {}), timeout=90)
    assert doc["state"] == "failed"
    assert doc["tasks"]["poison"]["state"] == "failed"
    assert doc["tasks"]["poison"]["attempts"] == 2
    assert doc["tasks"]["poison"]["error"].startswith("WorkerLostError: worker process lost")
    assert doc["tasks"]["after"]["state"] == "upstream_failed"
    assert_legal_history(client.history(doc["execution_id"]))


def test_flushed_broker_loses_nothing(
    cluster: Cluster, client: Client, dedicated: list[Any], tmp_path: Path
) -> None:
    start(cluster, dedicated, "flushed", concurrency=2)
    effects = tmp_path / "effects.txt"
    tasks = [task("root", "noop")] + [
        task(f"t{i}", "append_line", ("root",), params={"path": str(effects), "seconds": 0.5})
        for i in range(12)
    ]
    tasks.append(task("join", "noop", tuple(f"t{i}" for i in range(12))))
    client.register(Workflow.from_dict({"id": "k_flush", "tasks": tasks}), replace=True)
    eid = client.start("k_flush", {})
    wait_for(lambda: effects.exists(), what="the first side effect")
    redis.Redis.from_url(cluster.env["FLOWQ_BROKER_URL"]).flushdb()  # queued messages vanish
    doc = client.wait(eid, timeout=120)
    assert doc["state"] == "completed"
    lines = effects.read_text().splitlines()
    keys = [line.split(" ")[0] for line in lines]
    assert sorted(set(keys)) == sorted(f"{eid}:t{i}" for i in range(12))
    history = client.history(eid)
    for i in range(12):
        assert [h["to"] for h in history if h["task_id"] == f"t{i}"].count("succeeded") == 1
    assert_legal_history(history)


def test_a_start_the_broker_missed_runs_at_the_next_reconciler_pass(
    cluster: Cluster, client: Client, dedicated: list[Any]
) -> None:
    # a producer whose broker does not answer: the start stands, its first task waits overdue
    # and a worker's reconciler (every 0.5 s here; republishing after 600 s otherwise) sends it
    start(cluster, dedicated, "catcher", env={"FLOWQ_REDISPATCH_SECONDS": "600"})
    cut_off = replace(cluster.settings, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    client.register(Workflow.from_dict({"id": "k_nobroker", "tasks": [task("a", "noop")]}))
    with Client(cut_off) as producer:
        eid = producer.start("k_nobroker", {})
    began = time.monotonic()
    assert client.wait(eid, timeout=60)["state"] == "completed"
    assert time.monotonic() - began < 20


def test_duplicate_message_is_recorded_once(
    cluster: Cluster, client: Client, dedicated: list[Any], tmp_path: Path
) -> None:
    start(cluster, dedicated, "dup", concurrency=2)
    effects = tmp_path / "effects.txt"
    wf = Workflow.from_dict(
        {
            "id": "k_dup",
            "tasks": [task("once", "append_line", params={"path": str(effects), "seconds": 1.0})],
        }
    )
    client.register(wf, replace=True)
    eid = client.start("k_dup", {})
    wait_for(lambda: client.status(eid)["tasks"]["once"]["state"] == "running", what="start")
    dup = Dispatch(eid, "once", "k_dup", 1, wf.digest(), 5, QUEUE)
    client.coordinator.dispatcher.send([dup])  # while it runs
    doc = client.wait(eid, timeout=30)
    client.coordinator.dispatcher.send([dup])  # after it finished
    time.sleep(1.5)
    assert doc["state"] == "completed"
    assert effects.read_text().count(f"{eid}:once") == 1
    assert client.status(eid)["tasks"]["once"]["attempts"] == 1
    history = client.history(eid)
    assert running_count(history, "once") == 1
    assert_legal_history(history)


def _wait_port(port: int, up: bool, timeout: float = 30) -> None:
    import socket

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(lambda: answers() == up, timeout, f"port {port} {'up' if up else 'down'}")


def _need(tool: str) -> None:
    import shutil

    if shutil.which(tool) is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{tool} is needed to restart the service under CI")
        pytest.skip(f"{tool} not installed: cannot restart the service here")


def restart_redis() -> None:
    """Stop the Redis server and start it again, empty (it keeps nothing on disk here)."""
    import subprocess

    _need("redis-server")
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], check=False,
                   capture_output=True)  # fmt: skip
    _wait_port(6379, up=False)
    os.makedirs("/var/lib/redis", exist_ok=True)
    os.makedirs("/var/log/redis", exist_ok=True)
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
         "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
         "--logfile", "/var/log/redis/ci.log"],
        check=True,
    )  # fmt: skip
    _wait_port(6379, up=True)


def restart_postgres() -> None:
    """Restart the Postgres cluster (every connection is dropped)."""
    import subprocess

    _need("pg_ctlcluster")
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   check=True, capture_output=True)  # fmt: skip
    _wait_port(5432, up=True)


def test_redis_restarted_while_tasks_queued_and_running(
    cluster: Cluster, client: Client, dedicated: list[Any], tmp_path: Path
) -> None:
    start(cluster, dedicated, "redis_restart", concurrency=2)
    effects = tmp_path / "effects.txt"
    tasks = [task("root", "noop")] + [
        task(f"t{i}", "append_line", ("root",), params={"path": str(effects), "seconds": 0.5})
        for i in range(8)
    ]
    tasks.append(task("join", "noop", tuple(f"t{i}" for i in range(8))))
    client.register(Workflow.from_dict({"id": "k_redis", "tasks": tasks}), replace=True)
    eid = client.start("k_redis", {})
    wait_for(lambda: effects.exists(), what="the first side effect")
    restart_redis()
    try:
        doc = client.wait(eid, timeout=120)
    except WaitTimeout as exc:  # say where it stopped: the tasks, and what the worker logged
        pytest.fail(_stuck(exc, client, eid, cluster.log_of("redis_restart")))
    assert doc["state"] == "completed"
    history = client.history(eid)
    for i in range(8):
        assert [h["to"] for h in history if h["task_id"] == f"t{i}"].count("succeeded") == 1
    keys = {line.split(" ")[0] for line in effects.read_text().splitlines()}
    assert keys == {f"{eid}:t{i}" for i in range(8)}
    assert_legal_history(history)


def _stuck(exc: Exception, client: Client, eid: str, log: Path) -> str:
    """What an execution that did not end was doing: each task's state and attempts, then
    the worker's warnings and errors and its last lines."""
    tasks = client.status(eid)["tasks"]
    states = ", ".join(f"{t}: {v['state']} ({v['attempts']})" for t, v in sorted(tasks.items()))
    lines = log.read_text(errors="replace").splitlines()
    noted = [line for line in lines if "WARNING/" in line or "ERROR/" in line or "Error" in line]
    tail = "\n".join([*noted[-30:], "-- last lines --", *lines[-20:]])
    return f"{exc}\ntasks: {states}\nworker log ({log}):\n{tail}"


def test_postgres_restarted_while_a_workflow_runs(
    cluster: Cluster, client: Client, dedicated: list[Any]
) -> None:
    start(cluster, dedicated, "pg_restart", concurrency=2)
    tasks = [task("s0", "sleep", params={"seconds": 0.4})] + [
        task(f"s{i}", "sleep", (f"s{i - 1}",), params={"seconds": 0.4}) for i in range(1, 8)
    ]
    client.register(Workflow.from_dict({"id": "k_pg", "tasks": tasks}), replace=True)
    eid = client.start("k_pg", {})
    wait_for(lambda: client.status(eid)["tasks"]["s2"]["state"] == "running", what="s2")
    restart_postgres()
    doc = client.wait(eid, timeout=120)
    assert doc["state"] == "completed"
    history = client.history(eid)
    for i in range(8):
        assert [h["to"] for h in history if h["task_id"] == f"s{i}"].count("succeeded") == 1
    assert_legal_history(history)


def test_pool_processes_exiting_after_each_task_lose_no_success(
    cluster: Cluster, client: Client, dedicated: list[Any], tmp_path: Path
) -> None:
    # a held claim's success commits on the pool process's finisher thread, after the task
    # returned: a pool process that exits after each task (worker_max_tasks_per_child = 1)
    # must commit it first; no reconciler republish here to make up for a lost one
    (tmp_path / "one_task_per_child.py").write_text("worker_max_tasks_per_child = 1\n")
    env = {
        "FLOWQ_CELERY_CONFIG": "one_task_per_child",
        "PYTHONPATH": os.pathsep.join([cluster.env["PYTHONPATH"], str(tmp_path)]),
        "FLOWQ_REDISPATCH_SECONDS": "600",
        "FLOWQ_CLAIM_HOLD_SECONDS": "30",  # every claim stays held until its success
    }
    start(cluster, dedicated, "one_task_children", concurrency=2, env=env)
    chain = [task(f"c{i}", "whoami", (f"c{i - 1}",) if i else ()) for i in range(4)]
    fan = [task(f"f{i}", "whoami", ("c3",)) for i in range(4)]
    wf = Workflow.from_dict({"id": "k_child_exits", "tasks": [*chain, *fan]})
    client.register(wf, replace=True)
    doc = client.wait(client.start("k_child_exits", {}), timeout=60)
    assert doc["state"] == "completed", doc
    tasks = doc["tasks"]
    assert all(t["attempts"] == 1 for t in tasks.values())
    pids = [tasks[f"c{i}"]["result"]["pid"] for i in range(4)]
    assert len(set(pids)) == 4, "each task ran in a new pool process"
    assert_legal_history(client.history(doc["execution_id"]))
