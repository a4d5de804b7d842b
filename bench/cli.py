"""``python -m bench``: set up, measure both sides interleaved, print and record the figures."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import redis

from bench import marks, report
from bench.counters import PgCommits, measure_floor
from bench.cpu import CpuMeter
from bench.env import ROOT, Env
from bench.plan import MODES, Mode, Runner
from bench.sides import FlowqSide, PlainSide
from workers.app import CLAIM_HOLD_SECONDS, COMMIT_BATCH_SECONDS

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmark results

One section per run of `python -m bench` (`make bench`), appended by the bench itself, newest
last. What each figure means: `bench/README.md`.
"""
IDLE_SECONDS = 4.0
SHAPES = ("chain", "chord", "diamonds", "lattice", "many", "latency")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--mode",
        choices=sorted(MODES),
        default=os.environ.get("BENCH_MODE") or "quick",
        help="quick (under 5 minutes) or full; default $BENCH_MODE, else quick",
    )
    p.add_argument("--nodes", type=int, default=1, help="worker processes per side (default 1)")
    p.add_argument("--concurrency", type=int, default=2, help="prefork children per process")
    p.add_argument("--repeats", type=int, help="override the mode's repeats (A, B pairs)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(SHAPES)}")
    p.add_argument("--redis-url", help="use this Redis server instead of a private one")
    p.add_argument("--plain-timeout", type=float, help="seconds before a plain run is cut")
    p.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to append to")
    p.add_argument("--no-record", action="store_true", help="print only; do not append")
    p.add_argument("--keep", action="store_true", help="keep the database and worker logs")
    p.add_argument(
        "--claim-hold",
        type=float,
        default=CLAIM_HOLD_SECONDS,
        help=f"flowq workers' FLOWQ_CLAIM_HOLD_SECONDS (default {CLAIM_HOLD_SECONDS:g}, the "
        "workers' default; 0: every claim commits alone)",
    )
    p.add_argument(
        "--commit-batch",
        type=float,
        default=COMMIT_BATCH_SECONDS,
        help=f"flowq workers' FLOWQ_COMMIT_BATCH_SECONDS (default {COMMIT_BATCH_SECONDS:g}, the "
        "workers' default; 0: each success without successors commits alone)",
    )
    return p.parse_args(argv)


def mode_of(args: argparse.Namespace) -> Mode:
    mode = MODES[args.mode]
    if args.repeats:
        n = args.repeats
        mode = dataclasses.replace(
            mode, repeats=n, report_repeats=n, big_repeats=n, small_repeats=n
        )
    if args.plain_timeout:
        mode = dataclasses.replace(mode, plain_timeout=args.plain_timeout)
    return mode


def command() -> str:
    python = os.path.relpath(sys.executable, ROOT)
    return " ".join(
        [f"BENCH_MODE={os.environ.get('BENCH_MODE', '')}", python, "-m bench", *sys.argv[1:]]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    mode = mode_of(args)
    only = set(args.only.split(",")) if args.only else set(SHAPES)
    if only - set(SHAPES):
        print(f"--only: unknown shape(s): {', '.join(sorted(only - set(SHAPES)))}", file=sys.stderr)
        return 2
    began, load = time.monotonic(), os.getloadavg()[0]
    env = Env(
        nodes=args.nodes,
        concurrency=args.concurrency,
        redis_url=args.redis_url,
        keep=args.keep,
        worker_env={
            "FLOWQ_CLAIM_HOLD_SECONDS": str(args.claim_hold),
            "FLOWQ_COMMIT_BATCH_SECONDS": str(args.commit_batch),
        },
    )
    with env:
        os.environ[marks.ENV] = env.marks_url
        flowq, celery = FlowqSide(env), PlainSide(env)
        try:
            floor = measure_floor(flowq.broker, env.database_url, n_redis=2000, n_pg=300)
            print(
                f"floor: Redis round trip {1000 * floor.redis_rtt:.3f} ms, "
                f"Postgres INSERT + COMMIT {1000 * floor.pg_commit:.3f} ms",
                flush=True,
            )
            cpu = CpuMeter(env.admin, env.db_name, env.broker_pid, env.worker_pids)
            runner = Runner(flowq, celery, PgCommits(env.admin, env.db_name), mode, cpu)
            runner.warm_up()
            idle = runner.idle_commits(IDLE_SECONDS)
            sections, latency = runner.run(only)
            broker = "`" + args.redis_url + "`" if args.redis_url else "a private redis-server"
            record = report.Record(
                mode=mode.name,
                command=command(),
                seconds=time.monotonic() - began,
                setup=(
                    f"{args.nodes} worker process(es) x prefork {args.concurrency} per side, "
                    f"broker {broker}, Postgres database `{env.db_name}`, flowq claim hold "
                    f"{args.claim_hold:g} s, commit batches {args.commit_batch:g} s"
                ),
                versions=report.versions(redis.Redis.from_url(env.broker_server), env.admin),
                floor=floor,
                idle_commits=idle,
                sections=sections,
                latency=latency,
                load=(load, os.getloadavg()[0]),
            )
        finally:
            flowq.close()
            celery.close()
    text = report.render(record)
    print(text)
    if not args.no_record:
        if not args.results.exists():
            args.results.write_text(HEADER)
        with args.results.open("a") as out:
            out.write("\n" + text)
        print(f"appended to {args.results}")
    return 1 if record.problems else 0
