"""Pure compiler: workflow DAG -> Celery canvas plan (chains, groups, chords, coordinator joins).

The plan comes from two-terminal series-parallel reduction with canvas labels on the edges, plus
a barrier rule for complete bipartite fan-ins (``a, b -> c, d`` is ``chord(group(a, b),
group(c, d))``). Where no canvas fits without a false dependency, a task becomes a coordinator
join: nothing precedes it in the canvas, and the coordinator starts its branch once the state
store shows all its dependencies done. No I/O; O(V + E) on typical graphs; no deep recursion.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from flowq.errors import ValidationError

if TYPE_CHECKING:
    from flowq.definition import Workflow

__all__ = ["Chain", "Group", "Node", "Plan", "TaskRef", "compile_deps", "compile_workflow"]

_WIDTH = 100
_JOIN_NOTE = "(store-driven: not expressible in canvas without a false dependency)"


@dataclass(frozen=True)
class TaskRef:
    """One task; ``join=True``: a coordinator-driven join (nothing precedes it in the canvas)."""

    task_id: str
    join: bool = False


@dataclass(frozen=True)
class Chain:
    """Items run one after another; a Group followed by an item is rendered as a chord."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Group:
    """Items run in parallel."""

    items: tuple[Node, ...]


Node: TypeAlias = TaskRef | Chain | Group


@dataclass(frozen=True)
class _Chord:
    """A chain step: ``header`` (a group) then ``body``; derived from a Chain for output only."""

    header: Group
    body: _Step


_Step: TypeAlias = Node | _Chord


@dataclass(frozen=True)
class Plan:
    """A compiled workflow: the canvas, plus the joins the coordinator starts from the store."""

    canvas: Node
    joins: dict[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"canvas": {...}, "joins": {task: [deps]}}``."""
        joins = {task: list(deps) for task, deps in self.joins.items()}
        return {"canvas": _to_dict(self.canvas), "joins": joins}

    def render(self) -> str:
        """Human text for ``flowq plan``: the canvas, then the coordinator joins, if any."""
        lines: list[str] = []
        _render(self.canvas, "", "", lines)
        if self.joins:
            lines.append("coordinator joins:")
            width = max(map(len, self.joins))
            for task, deps in self.joins.items():
                lines.append(f"  {task.ljust(width)}  waits for {', '.join(deps)}   {_JOIN_NOTE}")
        return "\n".join(lines)

    def to_celery(self, signature: Callable[[str], Any]) -> Any:
        """Real celery canvas objects, one ``signature(task_id)`` per task (pure: no broker).

        Celery itself folds the steps that follow a chord into the chord's body.
        """
        import celery

        def build(step: _Step) -> Any:
            if isinstance(step, TaskRef):
                return signature(step.task_id)
            if isinstance(step, Group):
                return celery.group([build(item) for item in step.items])
            if isinstance(step, _Chord):
                return celery.chord([build(item) for item in step.header.items], build(step.body))
            steps = _steps(step)
            if len(steps) == 1:
                return build(steps[0])
            return celery.chain(*[build(s) for s in steps])

        return build(self.canvas)


def compile_workflow(wf: Workflow) -> Plan:
    """Compile a validated workflow definition."""
    return compile_deps({task: wf.deps(task) for task in wf.task_ids})


def compile_deps(deps: Mapping[str, Sequence[str]]) -> Plan:
    """Compile ``task id -> its depends_on`` (in definition order) into a plan."""
    ids = list(deps)
    index = {task: i for i, task in enumerate(ids)}
    problems = [
        f"task {task!r}: depends_on names unknown task {up!r}"
        for task, ups in deps.items()
        for up in ups
        if up not in index
    ]
    if problems:
        raise ValidationError(problems)
    ups = [tuple(dict.fromkeys(index[up] for up in deps[task])) for task in ids]
    if not ids:
        return Plan(Group(()), {})
    order = _topological(ups, ids)
    reducer = _Reducer(ups)
    label = reducer.run(order)
    joins = {ids[t]: tuple(ids[u] for u in ups[t]) for t in sorted(reducer.joins)}
    return Plan(_freeze(label, ids, reducer.joins), joins)


# --- canvas output ---------------------------------------------------------------------------


def _steps(chain: Chain) -> list[_Step]:
    """The chain's steps with each group that has a successor turned into a chord."""
    steps: deque[_Step] = deque()
    for item in reversed(chain.items):
        if isinstance(item, Group) and steps:
            steps.appendleft(_Chord(item, steps.popleft()))
        else:
            steps.appendleft(item)
    return list(steps)


def _to_dict(step: _Step) -> dict[str, Any]:
    if isinstance(step, TaskRef):
        return {"task": step.task_id, "join": step.join}
    if isinstance(step, Group):
        return {"group": [_to_dict(item) for item in step.items]}
    if isinstance(step, _Chord):
        header = [_to_dict(item) for item in step.header.items]
        return {"chord": {"header": header, "body": _to_dict(step.body)}}
    steps = _steps(step)
    if len(steps) == 1:
        return _to_dict(steps[0])
    return {"chain": [_to_dict(s) for s in steps]}


def _name(ref: TaskRef) -> str:
    return f"{ref.task_id} [join]" if ref.join else ref.task_id


def _render(step: _Step, pad: str, tail: str, lines: list[str]) -> None:
    """Append ``step`` to ``lines`` at indent ``pad``; ``tail`` closes its last line."""
    if isinstance(step, TaskRef):
        lines.append(pad + _name(step) + tail)
        return
    if isinstance(step, Group) and all(isinstance(item, TaskRef) for item in step.items):
        names = [_name(item) for item in step.items if isinstance(item, TaskRef)]
        one_line = f"{pad}group({', '.join(names)}){tail}"
        if len(one_line) <= _WIDTH:
            lines.append(one_line)
            return
        lines.append(pad + "group(")
        inner, row = pad + "  ", ""
        for i, name in enumerate(names):
            piece = name + (")" + tail if i == len(names) - 1 else ",")
            if row and len(inner) + len(row) + 1 + len(piece) > _WIDTH:
                lines.append(inner + row)
                row = ""
            row = f"{row} {piece}" if row else piece
        lines.append(inner + row)
        return
    if isinstance(step, Chain):
        steps = _steps(step)
        if len(steps) == 1:
            _render(steps[0], pad, tail, lines)
            return
        kind, children = "chain", steps
    elif isinstance(step, _Chord):
        kind, children = "chord", [step.header, step.body]
    else:
        kind, children = "group", list(step.items)
    lines.append(f"{pad}{kind}(")
    for i, child in enumerate(children):
        _render(child, pad + "  ", ")" + tail if i == len(children) - 1 else ",", lines)


# --- reduction -------------------------------------------------------------------------------


class _Seq:
    """Mutable chain under construction (owned by exactly one edge)."""

    __slots__ = ("items",)

    def __init__(self, items: deque[_Item]) -> None:
        self.items = items


class _Par:
    """Mutable group under construction (owned by exactly one edge)."""

    __slots__ = ("items",)

    def __init__(self, items: list[_Item]) -> None:
        self.items = items


_Item: TypeAlias = int | _Seq | _Par  # int: a task's index
_Label: TypeAlias = _Item | None  # None: a bare edge


def _series(x: _Label, y: _Label) -> _Label:
    """``x`` then ``y``, flattened; the longer chain absorbs the shorter."""
    if x is None:
        return y
    if y is None:
        return x
    if isinstance(x, _Seq) and isinstance(y, _Seq):
        if len(x.items) >= len(y.items):
            x.items.extend(y.items)
            return x
        y.items.extendleft(reversed(x.items))
        return y
    if isinstance(x, _Seq):
        x.items.append(y)
        return x
    if isinstance(y, _Seq):
        y.items.appendleft(x)
        return y
    return _Seq(deque((x, y)))


def _parallel(x: _Label, y: _Label) -> _Label:
    """``x`` alongside ``y``, flattened; a bare edge is implied by any labelled one."""
    if x is None:
        return y
    if y is None:
        return x
    if isinstance(y, _Par) and (not isinstance(x, _Par) or len(y.items) > len(x.items)):
        x, y = y, x
    if isinstance(x, _Par):
        if isinstance(y, _Par):
            x.items.extend(y.items)
        else:
            x.items.append(y)
        return x
    return _Par([x, y])


class _Reducer:
    """Series-parallel reduction of the DAG between a virtual source and sink.

    Node ids: tasks ``0..n-1``, source ``n``, sink ``n+1``, barriers above. An edge ``u -> w``
    labelled L means: L runs after u and before w. Series: a node with one in- and one out-edge
    is folded into a chain label; parallel: edges with the same ends merge into a group label.
    When stuck, the earliest node with several in-edges becomes a join: its in-edges go to the
    sink (their labels stay in the canvas) and it hangs off the source. Removing edges can only
    drop orderings, so the canvas never adds a false dependency; every DAG edge stays enforced
    unless its head is a join.
    """

    def __init__(self, ups: list[tuple[int, ...]]) -> None:
        n = self.n = len(ups)
        self.src, self.sink, self.next_id = n, n + 1, n + 2
        self.out: dict[int, dict[int, _Label]] = {v: {} for v in range(n + 2)}
        self.inn: dict[int, dict[int, None]] = {v: {} for v in range(n + 2)}
        self.alive = n
        self.work = list(range(n - 1, -1, -1))
        self.barriers: dict[int, tuple[int, ...]] = {}  # barrier -> tasks right after it
        self.barrier_ids: list[int] = []
        self.joins: set[int] = set()
        for v, us in enumerate(ups):
            for u in us or (self.src,):
                self._add(u, v, None)
        for v in range(n):
            if not self.out[v]:
                self._add(v, self.sink, None)

    def run(self, order: list[int]) -> _Item:
        """Reduce to the single source -> sink edge and return its label, the canvas."""
        seen: set[frozenset[int]] = set()
        for u in range(self.n):
            row = self.out[u]
            if len(row) >= 2 and (key := frozenset(row)) not in seen:
                seen.add(key)
                self._try_barrier(u)
        tasks, bar = iter(order), 0
        while True:
            self._reduce()
            if not self.alive:
                break
            # in-degrees never grow, so a node passed over here never becomes a candidate again
            for d in tasks:
                if len(self.inn.get(d, ())) >= 2:
                    break
            else:
                while len(self.inn.get(self.barrier_ids[bar], ())) < 2:
                    bar += 1
                d = self.barrier_ids[bar]
            self._cut(d)
        label = self.out[self.src][self.sink]
        assert label is not None and len(self.out[self.src]) == 1
        return label

    def _add(self, u: int, w: int, label: _Label) -> None:
        row = self.out[u]
        if w in row:
            row[w] = _parallel(row[w], label)
        else:
            row[w] = label
            self.inn[w][u] = None

    def _reduce(self) -> None:
        """Fold every node with exactly one in-edge and one out-edge (a worklist, no recursion)."""
        out, inn, work, n = self.out, self.inn, self.work, self.n
        while work:
            v = work.pop()
            ins = inn.get(v)
            if ins is None or len(ins) != 1 or len(out[v]) != 1:
                continue
            ((u,), (w,)) = (ins, out[v])
            before, after = out[u].pop(v), out[v][w]
            del inn[w][v], out[v], inn[v]
            self.alive -= 1
            self._add(u, w, _series(_series(before, v if v < n else None), after))
            work += (u, w)

    def _cut(self, d: int) -> None:
        """Make ``d`` a join (a barrier: the tasks right after it): detach its in-edges."""
        dropped = []
        for u in list(self.inn[d]):
            label = self.out[u].pop(d)
            if label is None and self.out[u]:
                if u != self.src:  # a bare edge: u reaches the sink anyway
                    dropped.append(u)
            else:
                self._add(u, self.sink, label)
            self.work.append(u)
        self.inn[d] = {}
        self._add(self.src, d, None)
        self.work.append(d)
        self.joins.update(self.barriers.get(d, (d,)))
        for u in dropped:
            self._try_barrier(u)

    def _try_barrier(self, u: int) -> None:
        """If u's bare out-edges form a complete bipartite block U x W, route them via a barrier."""
        out, inn = self.out, self.inn
        row = out[u]
        if len(row) < 2 or self.sink in row or any(lab is not None for lab in row.values()):
            return
        group = inn[next(iter(row))]
        if len(group) < 2 or self.src in group:
            return
        for w in row:
            if len(inn[w]) != len(group) or inn[w].keys() != group.keys():
                return
        for x in group:
            xrow = out[x]
            if len(xrow) != len(row) or any(lab is not None for lab in xrow.values()):
                return
            if xrow.keys() != row.keys():
                return
        b, self.next_id = self.next_id, self.next_id + 1
        us, ws = list(group), list(row)
        out[b], inn[b] = dict.fromkeys(ws), dict.fromkeys(us)
        for x in us:
            out[x] = {b: None}
        for w in ws:
            inn[w] = {b: None}
        self.alive += 1
        self.barriers[b] = tuple(w for w in ws if w < self.n)
        self.barrier_ids.append(b)
        self.work += us
        self.work += ws


def _topological(ups: list[tuple[int, ...]], ids: list[str]) -> list[int]:
    """Task indices upstream-first, ties by definition order; ValidationError on a cycle."""
    waiting = [len(us) for us in ups]
    downs: list[list[int]] = [[] for _ in ups]
    for v, us in enumerate(ups):
        for u in us:
            downs[u].append(v)
    ready = [v for v, count in enumerate(waiting) if count == 0]
    order: list[int] = []
    while ready:
        v = heapq.heappop(ready)
        order.append(v)
        for w in downs[v]:
            waiting[w] -= 1
            if waiting[w] == 0:
                heapq.heappush(ready, w)
    if len(order) == len(ups):
        return order
    left = {v for v, count in enumerate(waiting) if count}
    path: list[int] = []
    at: dict[int, int] = {}
    v = min(left)
    while v not in at:  # every leftover task has a leftover dependency: walk them to a repeat
        at[v] = len(path)
        path.append(v)
        v = next(u for u in ups[v] if u in left)
    loop = path[at[v] :][::-1]  # flow order: upstream -> downstream
    first = loop.index(min(loop))
    names = [ids[u] for u in loop[first:] + loop[:first]]
    raise ValidationError(f"depends_on has a cycle: {' -> '.join([*names, names[0]])}")


def _freeze(root: _Item, ids: list[str], joins: set[int]) -> Node:
    """Immutable canvas from the builders; group items ordered by their earliest task."""
    if isinstance(root, int):
        return TaskRef(ids[root], root in joins)
    Frame: TypeAlias = tuple[_Seq | _Par, list[tuple[int, Node]], Iterator[_Item]]
    stack: list[Frame] = [(root, [], iter(root.items))]
    while True:
        box, done, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            if isinstance(box, _Par):
                done.sort(key=lambda pair: pair[0])
            items = tuple(node for _, node in done)
            built: tuple[int, Node] = (
                min(key for key, _ in done),
                Group(items) if isinstance(box, _Par) else Chain(items),
            )
            if not stack:
                return built[1]
            stack[-1][1].append(built)
        elif isinstance(child, int):
            done.append((child, TaskRef(ids[child], child in joins)))
        else:
            stack.append((child, [], iter(child.items)))
