"""Regression guard on the bench's deterministic counters: store commits and broker commands per
task. Never wall time. A private redis-server and a fresh Postgres database keep the servers'
own counters to this test's traffic; heartbeats are slowed so that only task work commits.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench import shapes
from bench.counters import PgCommits, RedisCounts, redis_counts
from bench.cpu import ROLES, CpuMeter
from bench.env import Env
from bench.plan import Section
from bench.report import cpu_lines
from bench.sides import FlowqSide
from tests.conftest import IN_CI, PG_ADMIN_URL, require_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A task costs one commit (its claim, held, commits with its success and its successors'
# dispatch) and a start one: a 50-task chain and a 50-wide fan-in with its join measure about
# 1.03 (2.03 to 2.04 with FLOWQ_CLAIM_HOLD_SECONDS=0). Issue 6 aims at 2 at most.
COMMITS_PER_TASK = 1.1
# Tasks without successors commit several at a time (commit batches, FLOWQ_COMMIT_BATCH_SECONDS):
# 10 executions of 20 such tasks, started at once, measure 0.10-0.12 with their 10 starts (0.30-0.32
# with the 0.01 s window that was the default until 2026-12-05, 1.05 with
# FLOWQ_COMMIT_BATCH_SECONDS=0); the bound leaves room for a machine twice as slow.
LEAF_COMMITS_PER_TASK = 0.4
# Broker commands per task: publish, fetch, the unacked bookkeeping of acks_late, and the held
# claim's mark (SET ... GET, DEL): measured 12.0 with one worker process idling on BRPOP.
REDIS_COMMANDS_PER_TASK = 12.5
SIZE = 50
PUBLISHED_AFTER = 11.0  # an idle Postgres session publishes its counts within 10 s


@pytest.fixture(scope="module")
def side() -> Iterator[FlowqSide]:
    require_service("Redis", "127.0.0.1", 6379)
    require_service("Postgres", "127.0.0.1", 5432)
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (the guard runs a private one)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    quiet = {"FLOWQ_HEARTBEAT_SECONDS": "3600"}
    with Env(plain=False, admin_url=PG_ADMIN_URL, worker_env=quiet) as env:
        flowq = FlowqSide(env)
        try:
            yield flowq
        finally:
            flowq.close()


def measure(
    side: FlowqSide,
    definition: dict[str, Any],
    tasks: int,
    executions: int = 1,
    extra: dict[str, Any] | None = None,
) -> tuple[int, RedisCounts]:
    """Store commits and broker counters of two runs of ``definition`` (``executions`` of it
    started at once, each with ``extra`` in its vars).

    Settling the counters ends the store sessions, and reconnecting costs commits of its own;
    so the window opens after a warm-up run, once idle sessions have published their counts.
    """
    workflow_id = side.register(definition)
    pg = PgCommits(side.env.admin, side.env.db_name)
    side.release()
    pg.flush()
    runs = {"executions": executions, "extra": extra, "timeout": 120}
    assert side.run(workflow_id, tasks, **runs).seconds is not None
    time.sleep(PUBLISHED_AFTER)  # sessions stay open: a new one would commit as it starts
    start, polls = pg.read(), side.polls
    before = redis_counts(side.broker)
    for _ in range(2):
        assert side.run(workflow_id, tasks, **runs).seconds is not None
    broker = redis_counts(side.broker) - before
    side.release()
    commits = pg.settled() - start - (side.polls - polls)
    assert side.verify() == []
    return commits, broker


@pytest.mark.parametrize(
    ("definition", "tasks"),
    [(shapes.chain_def(SIZE), SIZE), (shapes.fan_in_def(SIZE), SIZE + 1)],
    ids=["chain", "fan-in"],
)
def test_counters_per_task_stay_within_bounds(
    side: FlowqSide, definition: dict[str, Any], tasks: int
) -> None:
    commits, broker = measure(side, definition, tasks)
    assert commits > 0, "no commit counted: the sessions' statistics were not published"
    per_task = commits / (2 * tasks)
    assert per_task <= COMMITS_PER_TASK, f"{commits} commits for {2 * tasks} tasks"
    commands = broker.commands / (2 * tasks)
    assert commands <= REDIS_COMMANDS_PER_TASK, f"{commands:.2f} per task: {broker.calls}"


def test_tasks_without_successors_commit_in_batches(side: FlowqSide) -> None:
    executions, per_execution = 10, 20
    tasks = executions * per_execution
    definition = shapes.ticks_def(per_execution)
    commits, _ = measure(side, definition, tasks, executions, {"total": tasks})
    assert commits > 0, "no commit counted: the sessions' statistics were not published"
    per_task = commits / (2 * tasks)
    assert per_task <= LEAF_COMMITS_PER_TASK, f"{commits} commits for {2 * tasks} tasks"


def test_vacuum_analyzes_the_bench_database(side: FlowqSide) -> None:
    side.register(shapes.chain_def(3))
    PgCommits(side.env.admin, side.env.db_name).vacuum()
    conn = side._poll_conn()
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE relname = %s",
        ("flowq_task_runs",),
    ).fetchone()
    assert row is not None and None not in row, row


def test_cpu_is_split_by_process_class(side: FlowqSide) -> None:
    env = side.env
    meter = CpuMeter(env.admin, env.db_name, env.broker_pid, env.worker_pids)
    if not meter.available:
        pytest.skip("no /proc: CPU per process is read from it")
    wide = 300  # /proc counts in clock ticks (10 ms): enough work for every class to show
    workflow_id = side.register(shapes.fan_in_def(wide))
    before = meter.take("flowq")
    out = side.run(workflow_id, wide + 1, timeout=120)
    assert out.seconds is not None
    used = meter.since(before, "flowq", out.tasks)
    assert set(used) == set(ROLES)
    # every class did work for these tasks: the pool ran them, Postgres recorded them, the
    # broker carried them, the main process fetched them, the producer started them
    assert all(used[role] > 0 for role in ROLES), used
    section = Section("chord 300", "chord", wide, wide + 1, cpu={"flowq": [used, used]})
    lines = cpu_lines([section])
    assert lines[2] == (
        "| shape | side | worker main | pool children | Postgres | Redis | producer | all |"
    )
    assert lines[-1].startswith("| chord 300 | flowq | ")
    assert lines[-1].endswith(f" | {sum(used.values()):.2f} |")


def test_store_cost_counts_one_commit_per_task_and_the_server_side(
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_service("Postgres", "127.0.0.1", 5432)
    from bench import store_cost

    assert store_cost.main(["--tasks", "40"]) == 0
    out = capsys.readouterr().out
    # a claim and a success are one statement each; held, the success commits both
    starts = {"bench_chain_40": "1", "bench_chord_40": "1", "bench_ticks_20": "2"}
    for shape, executions in starts.items():
        section = out.split(shape, 1)[1].split("bench_", 1)[0]
        rows = {
            line.split("|")[1].strip(): line.split("|")
            for line in section.splitlines()
            if "|" in line
        }
        assert rows["start"][2].strip() == executions  # "100 x 20": executions of 20 ticks
        assert [c.strip() for c in rows["claim"][3:5]] == ["1.00", "0.00"]
        assert [c.strip() for c in rows["succeeded"][3:5]] == ["1.00", "1.00"]
        cpu, wal = section.split("Per task: Postgres backends' CPU ", 1)[1].split(" ms, WAL ")
        assert float(cpu) >= 0 and int(wal.split()[0]) > 0
