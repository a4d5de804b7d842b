"""What a mode measures, and the interleaved A, B, A, B loop that measures it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from celery import Celery
from celery.canvas import Signature

from bench import shapes
from bench.counters import PgCommits
from bench.cpu import CpuMeter, Snapshot
from bench.sides import FlowqSide, Outcome, PlainSide

Canvas = Callable[[Celery, str], Signature]


@dataclass(frozen=True)
class Mode:
    """Sizes, repeats and time caps of one mode."""

    name: str
    chain_sizes: tuple[int, ...]
    chord_sizes: tuple[int, ...]
    repeats: int
    report_repeats: int  # shapes that have no target
    big_repeats: int  # sizes of 10,000 and more
    starts: int  # start-latency samples per side
    flowq_timeout: float
    plain_timeout: float
    # sizes of 100 and less: runs of a few tenths of a second, whose ratio a host's drift
    # moves by a tenth or more, so more pairs go into their median
    small_repeats: int


MODES = {
    "quick": Mode("quick", (100, 1000), (100, 1000), 4, 1, 1, 200, 300, 300, 6),
    "full": Mode("full", (100, 1000, 10000), (100, 1000, 10000), 5, 3, 2, 200, 1800, 300, 15),
}
DIAMOND_LAYERS, DIAMOND_WIDTH = 10, 99  # 10 x (99 + join) = 1,000 tasks
LATTICE_LAYERS, LATTICE_WIDTH = 27, 37  # 999 + a sink = 1,000 tasks
EXECUTIONS, PER_EXECUTION = 100, 20
SMALL = 100  # sizes up to this one are repeated ``small_repeats`` times
RECONNECT_TASKS = 9  # a fan-out of 8 and its join: wide enough to reach every pool child


@dataclass
class Section:
    """Every run of one shape and size, and flowq's store commits across them."""

    key: str
    shape: str
    size: int  # the shape's nominal size (a chord of 1,000 runs 1,001 tasks)
    tasks: int  # per run
    flowq: list[Outcome] = field(default_factory=list)
    plain: list[Outcome] = field(default_factory=list)
    has_plain: bool = True
    plain_cap: float | None = None  # set when a plain run hit its timeout
    commits: int = 0
    untimed_tasks: int = 0  # the reconnecting run after the counters were settled
    window: float = 0.0  # seconds between the settled commit counts
    problems: list[str] = field(default_factory=list)
    cpu: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # side -> per run

    @property
    def flowq_tasks(self) -> int:
        """Every flowq task run inside the section's commit window."""
        return sum(o.tasks for o in self.flowq) + self.untimed_tasks


@dataclass
class Latency:
    """Start-to-first-task-start samples of both sides, seconds."""

    flowq: list[float] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)
    commits: int = 0
    tasks: int = 0  # flowq tasks inside the commit window
    untimed_tasks: int = 0  # the reconnecting run after the counters were settled
    window: float = 0.0  # seconds between the settled commit counts
    problems: list[str] = field(default_factory=list)


class Runner:
    """Runs sections against one environment, keeping flowq's commit counts per section."""

    def __init__(
        self,
        flowq: FlowqSide,
        celery: PlainSide,
        pg: PgCommits,
        mode: Mode,
        cpu: CpuMeter | None = None,
    ) -> None:
        self.flowq, self.celery, self.pg, self.mode, self.cpu = flowq, celery, pg, mode, cpu
        self._reconnect_id = flowq.register(shapes.fan_in_def(RECONNECT_TASKS - 1))

    def _settled(self) -> int:
        self.flowq.release()
        return self.pg.settled()

    def _reconnect(self) -> int:
        """An untimed run right after settling: the workers' store sessions were just ended,
        and reconnecting (a failed first transaction, retried after a pause) must not land in
        a timed run. Its commits stay in the window, so its tasks are counted too."""
        outcome = self.flowq.run(self._reconnect_id, RECONNECT_TASKS, timeout=60)
        if outcome.seconds is None:
            raise RuntimeError("flowq did not finish the reconnecting run")
        return outcome.tasks

    def idle_commits(self, seconds: float) -> float:
        """flowq's store commits per second with no work: the workers' heartbeats."""
        start = self._settled()
        time.sleep(seconds)
        return (self._settled() - start) / seconds

    def compare(self, case: Case) -> Section:
        """A, B, A, B...: flowq then plain Celery, ``repeats`` times; plain stops at a timeout."""
        tasks = case.tasks * case.executions
        section = Section(case.key, case.shape, case.size, tasks, has_plain=bool(case.canvas))
        workflow_id = self.flowq.register(case.definition)
        self.pg.vacuum()  # untimed, outside the commit window: what autovacuum would have done
        start, began = self._settled(), time.monotonic()
        booted = self.pg.server_started()
        polls = self.flowq.polls
        section.untimed_tasks = self._reconnect()
        for i in range(case.repeats):
            cpu = self._cpu_before("flowq")
            a = self.flowq.run(
                workflow_id,
                tasks,
                executions=case.executions,
                timeout=self.mode.flowq_timeout,
                extra=case.extra,
            )
            section.flowq.append(a)
            _say(case.key, i, "flowq", a, self._cpu_after(section, "flowq", cpu, a))
            if case.canvas is not None and section.plain_cap is None:
                cpu = self._cpu_before("celery")
                b = self.celery.run(case.canvas, tasks, timeout=self.mode.plain_timeout)
                section.plain.append(b)
                _say(case.key, i, "celery", b, self._cpu_after(section, "celery", cpu, b))
                if b.seconds is None:
                    section.plain_cap = self.mode.plain_timeout
        section.commits = self._settled() - start - (self.flowq.polls - polls)
        section.window = time.monotonic() - began
        section.problems = self.flowq.verify()
        if self.pg.server_started() != booted:
            section.problems.append(f"{case.key}: Postgres restarted meanwhile; commits uncertain")
        return section

    def _cpu_before(self, side: str) -> Snapshot:
        return self.cpu.take(side) if self.cpu is not None else {}

    def _cpu_after(
        self, section: Section, side: str, before: Snapshot, out: Outcome
    ) -> dict[str, float]:
        """Keep the run's CPU per task by process class (timed-out runs are left out)."""
        if self.cpu is None or out.seconds is None:
            return {}
        used = self.cpu.since(before, side, out.tasks)
        if used:
            section.cpu.setdefault(side, []).append(used)
        return used

    def latency(self) -> Latency:
        """Start latency, one flowq start then one plain ``apply_async``, ``starts`` times."""
        out = Latency()
        workflow_id = self.flowq.register(shapes.stamp_def())
        for _ in range(5):  # warm both producers' connections
            self.flowq.stamp_latency(workflow_id)
            self.celery.stamp_latency()
        time.sleep(0.2)
        self.flowq.verify()
        start = self._settled()
        polls = self.flowq.polls
        reconnect = self._reconnect()
        for _ in range(self.mode.starts):
            out.flowq.append(self.flowq.stamp_latency(workflow_id))
            time.sleep(0.02)
            out.plain.append(self.celery.stamp_latency())
            time.sleep(0.02)
        time.sleep(0.2)
        out.commits = self._settled() - start - (self.flowq.polls - polls)
        out.tasks = self.mode.starts + reconnect
        out.problems = self.flowq.verify()
        print(f"latency: {len(out.flowq)} starts each side", flush=True)
        return out

    def warm_up(self) -> None:
        """One small run of each shape on both sides, untimed: imports, connections, caches."""
        for definition, canvas in (
            (shapes.chain_def(20), partial(shapes.chain_canvas, n=20)),
            (shapes.fan_in_def(20), partial(shapes.fan_in_canvas, n=20)),
        ):
            workflow_id = self.flowq.register(definition)
            self.flowq.run(workflow_id, 20, timeout=60)
            self.celery.run(_canvas(canvas), 20, timeout=60)
        self.flowq.verify()

    def run(self, only: set[str]) -> tuple[list[Section], Latency]:
        """Every case of the mode whose shape is in ``only``, then start latency."""
        sections = [self._guarded(case) for case in cases(self.mode) if case.shape in only]
        return sections, self.latency() if "latency" in only else Latency()

    def _guarded(self, case: Case) -> Section:
        """A case that fails (say, the shared Postgres was restarted) is reported, not fatal."""
        try:
            return self.compare(case)
        except Exception as exc:
            print(f"{case.key}: failed: {exc!r}", flush=True)
            section = Section(case.key, case.shape, case.size, case.tasks * case.executions)
            section.problems.append(f"{case.key}: failed: {type(exc).__name__}: {exc}")
            return section


@dataclass(frozen=True)
class Case:
    """One shape at one size, as a flowq definition and plain Celery canvas (if any)."""

    key: str
    shape: str
    size: int
    tasks: int  # per execution
    definition: dict[str, Any]
    canvas: Canvas | None
    repeats: int
    executions: int = 1
    extra: dict[str, Any] | None = None


def cases(m: Mode) -> list[Case]:
    """Everything a mode measures, in order."""
    out = [
        Case(
            f"chain {n:,}",
            "chain",
            n,
            n,
            shapes.chain_def(n),
            _canvas(partial(shapes.chain_canvas, n=n)),
            _repeats(m, n),
        )
        for n in m.chain_sizes
    ]
    out += [
        Case(
            f"chord {n:,}",
            "chord",
            n,
            n + 1,
            shapes.fan_in_def(n),
            _canvas(partial(shapes.fan_in_canvas, n=n)),
            _repeats(m, n),
        )
        for n in m.chord_sizes
    ]
    layers, width = DIAMOND_LAYERS, DIAMOND_WIDTH
    out.append(
        Case(
            f"diamonds {layers}x{width}",
            "diamonds",
            1000,
            layers * (width + 1),
            shapes.diamonds_def(layers, width),
            _canvas(partial(shapes.diamonds_canvas, layers=layers, width=width)),
            m.report_repeats,
        )
    )
    layers, width = LATTICE_LAYERS, LATTICE_WIDTH
    out.append(
        Case(
            f"non-series-parallel {layers}x{width}+1",
            "lattice",
            1000,
            layers * width + 1,
            shapes.lattice_def(layers, width),
            None,
            m.report_repeats,
        )
    )
    total = EXECUTIONS * PER_EXECUTION
    out.append(
        Case(
            f"{EXECUTIONS} executions x {PER_EXECUTION}",
            "many",
            total,
            PER_EXECUTION,
            shapes.ticks_def(PER_EXECUTION),
            _canvas(partial(shapes.ticks_canvas, n=total)),
            m.repeats,
            EXECUTIONS,
            {"total": total},
        )
    )
    return out


def _canvas(build: Callable[..., Signature]) -> Canvas:
    return lambda app, run: build(app, run=run)


def _repeats(mode: Mode, n: int) -> int:
    if n >= 10000:
        return mode.big_repeats
    return mode.small_repeats if n <= SMALL else mode.repeats


def _say(key: str, i: int, side: str, o: Outcome, cpu: dict[str, float] | None = None) -> None:
    """One run's progress line: its time and, when measured, its CPU ms per task by role."""
    took = f"{o.seconds:.2f} s" if o.seconds is not None else "timed out"
    roles = ", ".join(f"{role} {ms:.2f}" for role, ms in (cpu or {}).items())
    cpu_line = f" (CPU ms/task: {roles})" if roles else ""
    print(f"{key} #{i + 1} {side}: {took}{cpu_line}", flush=True)
