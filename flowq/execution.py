"""What the coordinator and its parts share: the messages it publishes, a worker's claim, the
step of an advancing transaction, definitions by digest, and the parts' base (``Part``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flowq import graph
from flowq.definition import Task, Workflow
from flowq.store import Store, Tx


@dataclass(frozen=True)
class Dispatch:
    """One message to publish: run ``task_id`` of ``execution_id``."""

    execution_id: str
    task_id: str
    workflow_id: str
    version: int
    digest: str
    priority: int
    queue: str
    timeout: float | None = None


class Dispatcher(Protocol):
    """Publishes task messages (a Celery app in production)."""

    def send(self, items: Sequence[Dispatch]) -> None:
        """Publish one message per item."""

    def revoke(self, celery_ids: Sequence[str]) -> None:
        """Stop running tasks."""


@dataclass(frozen=True)
class Claim:
    """What a worker needs to run a task it has claimed."""

    workflow: Workflow
    task: Task
    vars: dict[str, Any]
    results: dict[str, Any]
    attempt: int
    execution_id: str
    held: bool = False  # its commit waits for the task's end (``flowq.store.held``)
    # no other task of the execution was left to end when it was claimed: its end ends the
    # execution (its success is committed at once, in no commit batch)
    last: bool = False


@dataclass(frozen=True)
class Started:
    """The outcome of a start: the execution id, and False if an idempotent start found one."""

    execution_id: str
    created: bool


class Definitions:
    """Definitions by digest, parsed once per process (a digest's body never changes)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_digest: dict[str, Workflow] = {}
        self._ancestors: dict[tuple[str, str], frozenset[str]] = {}
        self._deps: dict[str, dict[str, tuple[str, ...]]] = {}
        self._plain: dict[tuple[str, str], bool] = {}

    def add(self, wf: Workflow) -> None:
        """Remember a definition this process already holds."""
        self._by_digest.setdefault(wf.digest(), wf)

    def get(self, digest: str, tx: Tx | None = None) -> Workflow:
        """The definition with this digest."""
        wf = self._by_digest.get(digest)
        if wf is None:
            body = (
                tx.definition_body(digest)
                if tx
                else self.store.read(lambda tx: tx.definition_body(digest))
            )
            wf = self._by_digest.setdefault(digest, Workflow.from_dict(body, source=digest[:12]))
        return wf

    def ancestors(self, wf: Workflow, task_id: str) -> frozenset[str]:
        """Every task upstream of ``task_id``, transitively."""
        key = (wf.digest(), task_id)
        found = self._ancestors.get(key)
        if found is None:
            deps = self._deps.get(key[0])
            if deps is None:
                deps = self._deps[key[0]] = {t: wf.deps(t) for t in wf.task_ids}
            found = self._ancestors[key] = frozenset(graph.ancestors(deps, task_id))
        return found

    def plain_successors(self, wf: Workflow, task_id: str) -> bool:
        """True when every successor runs under ``all_success`` without ``when``: a success
        then decides them in SQL (``Tx.succeed_fast``)."""
        key = (wf.digest(), task_id)
        plain = self._plain.get(key)
        if plain is None:
            tasks = (wf.task(s) for s in wf.successors(task_id))
            plain = all(t.trigger_rule == "all_success" and not t.when for t in tasks)
            self._plain[key] = plain
        return plain

    def results_for(self, wf: Workflow, task_id: str) -> frozenset[str]:
        """Ids whose results the task needs: its direct upstream plus what its templates name."""
        named = wf.results_needed(task_id)
        if named is None:
            return self.ancestors(wf, task_id)
        return frozenset(wf.deps(task_id)) | named


@dataclass
class Step:
    """The state of one advancing transaction."""

    tx: Tx
    execution_id: str
    wf: Workflow
    version: int
    priority: int
    state: str | None  # None when not read in this transaction (the hot path skips it)
    vars: dict[str, Any]
    settled: deque[tuple[str, str]] = field(default_factory=deque)
    settled_count: int = 0
    dispatch: list[Dispatch] = field(default_factory=list)


class Part:
    """A base of the coordinator's parts (``Claims``, ``Ends``, ``Control``): what they call on
    the coordinator (``flowq.coordinator.Coordinator`` defines it), declared for the type
    checker only."""

    if TYPE_CHECKING:
        store: Store

        def _step(self, tx: Tx, execution_id: str, *, fresh: bool = True) -> Step: ...
        def _send(self, dispatches: Sequence[Dispatch]) -> None: ...
        def _dispatch_of(self, step: Step, task_id: str) -> Dispatch: ...
        def _act(self, step: Step, task_id: str, decision: str, reason: str) -> None: ...
        def _propagate(self, step: Step) -> None: ...
        def _settle(self, step: Step) -> None: ...
        def _finish(self, step: Step) -> None: ...
