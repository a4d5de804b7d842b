"""The figures as Markdown: tables, targets with pass/miss, machine and versions."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata

import redis
import sqlalchemy as sa

from bench.counters import Floor, RedisCounts
from bench.cpu import ROLES
from bench.env import ROOT
from bench.plan import Latency, Section
from bench.stats import median, percentile, spread

CAP = 1.25  # "within 1.25x"
MANY_TIMES = 4.0  # "many times faster": at least this factor


@dataclass
class Figures:
    """What one section yields for the tables."""

    flowq_s: list[float]
    plain_s: list[float]
    ratios: list[float]
    ms_per_task: float
    commits_per_task: float


def figures(s: Section, idle: float = 0.0) -> Figures:
    """A section's figures; ``idle`` (commits/s with no work) is taken off the commit count."""
    fq = [o.seconds for o in s.flowq if o.seconds is not None]
    pl = [o.seconds for o in s.plain if o.seconds is not None]
    pairs = zip(s.flowq, s.plain, strict=False)
    ratios = [a.seconds / b.seconds for a, b in pairs if a.seconds and b.seconds]
    if s.plain_cap is not None and fq and not ratios:
        ratios = [x / s.plain_cap for x in fq]  # an upper bound: plain took longer than its cap
    tasks = s.flowq_tasks
    return Figures(
        fq,
        pl,
        ratios,
        1000 * median(fq) / s.tasks if fq else math.nan,
        (s.commits - idle * s.window) / tasks if tasks else math.nan,
    )


def _secs(values: list[float], cap: float | None = None) -> str:
    if not values:
        return f"> {cap:.0f} s (timed out)" if cap else "—"
    lo, hi = spread(values)
    text = f"{median(values):.2f} ({lo:.2f}-{hi:.2f})" if len(values) > 1 else f"{values[0]:.2f}"
    return f"{text}, > {cap:.0f} s once" if cap else text


def _ratio(f: Figures, s: Section) -> str:
    if not f.ratios:
        return "—"
    lo, hi = spread(f.ratios)
    bound = "< " if s.plain_cap is not None and not f.plain_s else ""
    if len(f.ratios) == 1:
        return f"{bound}{f.ratios[0]:.2f}"
    return f"{bound}{median(f.ratios):.2f} ({lo:.2f}-{hi:.2f})"


def _per_task(s: Section, side: str) -> tuple[float, float]:
    """Broker commands and bytes per task, over the runs that finished (a cut run did not)."""
    outcomes = [o for o in (s.flowq if side == "flowq" else s.plain) if o.seconds is not None]
    tasks = sum(o.tasks for o in outcomes)
    if not tasks:
        return math.nan, math.nan
    commands = sum(o.redis.commands for o in outcomes)
    return commands / tasks, sum(o.redis.net_in for o in outcomes) / tasks


def table(sections: list[Section], floor: Floor, idle: float) -> list[str]:
    lines = [
        "| shape | tasks | flowq s: median (min-max) | Celery s | flowq ÷ Celery | "
        "flowq ms/task | x floor | PG commits/task: all / less idle | "
        "Redis cmds/task flowq / Celery | bytes to Redis/task flowq / Celery |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in sections:
        f, g = figures(s), figures(s, idle)
        fc, fb = _per_task(s, "flowq")
        pc, pb = _per_task(s, "celery")
        plain = _secs(f.plain_s, s.plain_cap) if s.has_plain else "no equivalent"
        floor_x = f.ms_per_task / (1000 * floor.per_task)
        lines.append(
            f"| {s.key} | {s.tasks:,} | {_secs(f.flowq_s)} | {plain} | {_ratio(f, s)} | "
            f"{f.ms_per_task:.2f} | {floor_x:.1f} | "
            f"{f.commits_per_task:.2f} / {g.commits_per_task:.2f} | "
            f"{_num(fc)} / {_num(pc)} | {_num(fb, 0)} / {_num(pb, 0)} |"
        )
    return lines


def _num(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def latency_lines(lat: Latency) -> list[str]:
    rows = ["| side | p50 ms | p95 ms | p99 ms |", "|---|--:|--:|--:|"]
    for name, values in (("flowq `Client.start`", lat.flowq), ("Celery `apply_async`", lat.plain)):
        ps = [1000 * percentile(values, q) for q in (50, 95, 99)]
        rows.append(f"| {name} | {ps[0]:.2f} | {ps[1]:.2f} | {ps[2]:.2f} |")
    n = len(lat.flowq)
    rows.append("")
    rows.append(
        f"{n} starts each side, interleaved; flowq spent {lat.commits / max(lat.tasks, 1):.2f} "
        "Postgres commits per start of a 1-task workflow (start, claim, success)."
    )
    return rows


def targets(sections: list[Section], lat: Latency, idle: float) -> list[str]:
    by = {(s.shape, s.size): s for s in sections}
    rows = ["| target | measured | |", "|---|---|---|"]

    def add(name: str, value: str, ok: bool | None) -> None:
        mark = "not measured" if ok is None else ("**pass**" if ok else "**miss**")
        rows.append(f"| {name} | {value} | {mark} |")

    def versus(name: str, shape: str, size: int, limit: float) -> None:
        """flowq ÷ Celery must be at most ``limit``. A cut plain run gives an upper bound."""
        s = by.get((shape, size))
        f = figures(s) if s is not None else None
        if s is None or f is None or not f.ratios:
            add(name, "—", None)
            return
        r = median(f.ratios)
        if s.plain_cap is not None and not f.plain_s:  # Celery took longer than its cap
            ok = True if r <= limit else None
            add(name, f"< {r:.2f}x (Celery cut at {s.plain_cap:.0f} s)", ok)
            return
        add(name, f"{r:.2f}x", r <= limit)

    def flat(shape: str) -> None:
        name = f"{shape} 10,000: flowq ms/task ≤ {CAP}x its ms/task at 100"
        a, b = by.get((shape, 10000)), by.get((shape, 100))
        if a is None or b is None or not a.flowq or not b.flowq:
            add(name, "—", None)
            return
        growth = figures(a).ms_per_task / figures(b).ms_per_task
        add(name, f"{growth:.2f}x", growth <= CAP)

    versus("chain 1,000: flowq faster than Celery (÷ < 1)", "chain", 1000, 0.999)
    versus("chain 10,000: flowq faster than Celery (÷ < 1)", "chain", 10000, 0.999)
    flat("chain")
    versus(f"chord 100: flowq ≤ {CAP}x Celery", "chord", 100, CAP)
    versus(f"chord 1,000: flowq ≤ {CAP}x Celery", "chord", 1000, CAP)
    many = f"chord 10,000: flowq ≥ {MANY_TIMES:.0f}x faster than Celery"
    versus(many, "chord", 10000, 1 / MANY_TIMES)
    flat("chord")
    versus(f"100 executions x 20: flowq ≤ {CAP}x a Celery group", "many", 2000, CAP)
    if lat.flowq and lat.plain:
        r = percentile(lat.flowq, 50) / percentile(lat.plain, 50)
        add("start latency p50: flowq ≤ 2x Celery", _x(r), r <= 2)
    else:
        add("start latency p50: flowq ≤ 2x Celery", "—", None)
    tasks = sum(s.flowq_tasks for s in sections)
    commits = sum(s.commits for s in sections)
    background = idle * sum(s.window for s in sections)
    if not tasks:
        add("Postgres commits per task ≤ 2", "—", None)
        return rows
    per, less = commits / tasks, (commits - background) / tasks
    add(
        "Postgres commits per task ≤ 2 (all shapes but latency; less idle heartbeats)",
        f"{less:.3f} ({per:.3f} with heartbeats)",
        less <= 2,
    )
    return rows


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def breakdown(sections: list[Section]) -> list[str]:
    """Redis commands per task by name, for the largest chain both sides finished."""
    chains = [s for s in sections if s.shape == "chain" and s.flowq and s.plain_cap is None]
    if not chains:
        return []
    s = max(chains, key=lambda c: c.tasks)
    lines = [f"Redis commands per task by name, {s.key}:", ""]
    for side, outcomes in (("flowq", s.flowq), ("celery", s.plain)):
        finished = [o for o in outcomes if o.seconds is not None]
        tasks = sum(o.tasks for o in finished)
        if not tasks:
            continue
        calls = sum((o.redis for o in finished), RedisCounts()).calls
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:10]
        lines.append(f"- {side}: " + ", ".join(f"{n} {c / tasks:.2f}" for n, c in top))
    return lines


def cpu_lines(sections: list[Section]) -> list[str]:
    """CPU milliseconds per task by process class, the median of each side's runs."""
    rows = []
    for s in sections:
        for side in ("flowq", "celery"):
            runs = s.cpu.get(side, [])
            if not runs:
                continue
            cells = []
            for role in ROLES:
                values = [r[role] for r in runs if role in r]
                cells.append(f"{median(values):.2f}" if values else "—")
            total = median([sum(r.values()) for r in runs])
            rows.append(f"| {s.key} | {side} | {' | '.join(cells)} | {total:.2f} |")
    if not rows:
        return []
    head = " | ".join(ROLE_NAMES[r] for r in ROLES)
    return [
        "CPU milliseconds per task by process (`/proc`, median of the runs; bench/cpu.py):",
        "",
        f"| shape | side | {head} | all |",
        "|---|---|" + "--:|" * (len(ROLES) + 1),
        *rows,
    ]


ROLE_NAMES = {
    "main": "worker main",
    "pool": "pool children",
    "postgres": "Postgres",
    "redis": "Redis",
    "producer": "producer",
}


def _first(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")  # noqa: SIM115
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.1f} GiB, Linux {platform.release()}"


def versions(broker: redis.Redis, admin: sa.Engine) -> str:
    with admin.connect() as conn:
        pg = str(conn.exec_driver_sql("SHOW server_version").scalar())
    server = broker.info("server")["redis_version"]
    libs = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("celery", "kombu", "redis", "SQLAlchemy", "psycopg")
    )
    return f"Python {platform.python_version()}, {libs}, Redis server {server}, PostgreSQL {pg}"


def engine_revision() -> str:
    head = _first(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = _first(["git", "-C", str(ROOT), "status", "--porcelain", "--", "flowq", "workers"])
    return f"{head}" + (" plus uncommitted changes in flowq/ or workers/" if dirty else "")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class Record:
    """Everything one run reports."""

    mode: str
    command: str
    seconds: float
    setup: str
    versions: str
    floor: Floor
    idle_commits: float  # store commits per second with no work (heartbeats)
    sections: list[Section]
    latency: Latency
    load: tuple[float, float]

    @property
    def problems(self) -> list[str]:
        return [p for s in self.sections for p in s.problems] + self.latency.problems


def render(r: Record) -> str:
    """The dated Markdown section of one run."""
    f = r.floor
    lines = [
        f"## {now()}: {r.mode} mode",
        "",
        f"- Command: `{r.command}` (took {r.seconds:.0f} s)",
        f"- Machine: {machine()}; load average (1 min) {r.load[0]:.2f} at start, "
        f"{r.load[1]:.2f} at end",
        f"- Versions: {r.versions}",
        f"- Engine: git {engine_revision()}",
        f"- Set-up: {r.setup}",
        f"- Floor: Redis round trip {1000 * f.redis_rtt:.3f} ms, one-row Postgres INSERT + COMMIT "
        f"{1000 * f.pg_commit:.3f} ms; floor per task (their sum) {1000 * f.per_task:.3f} ms",
        f"- Idle: flowq's workers commit {r.idle_commits:.2f} times a second with no work "
        "(heartbeats); these land in the commit counts below too",
        "",
        *table(r.sections, f, r.idle_commits),
        "",
    ]
    cpu = cpu_lines(r.sections)
    if cpu:
        lines += [*cpu, ""]
    if r.latency.flowq:
        lines += ["Start latency, from the start call to the first task's body:", ""]
        lines += [*latency_lines(r.latency), ""]
    lines += ["Targets (issue 6):", "", *targets(r.sections, r.latency, r.idle_commits), ""]
    detail = breakdown(r.sections)
    if detail:
        lines += [*detail, ""]
    if r.problems:
        lines += ["Problems:", "", *(f"- {p}" for p in r.problems[:20]), ""]
    return "\n".join(lines)
