"""Pure compiler: workflow DAG -> Celery canvas plan (chains, groups, chords, coordinator joins).

The plan comes from two-terminal series-parallel reduction with canvas labels on the edges, plus
a barrier rule for complete bipartite fan-ins (``a, b -> c, d`` is ``chord(group(a, b),
group(c, d))``). Where no canvas fits without a false dependency, a task becomes a coordinator
join: nothing precedes it in the canvas, and the coordinator starts its branch once the state
store shows all its dependencies done. No I/O; O(V + E) on typical graphs; no deep recursion.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from flowq.errors import ValidationError
from flowq.reduction import Item, Par, Reducer, Seq, topological

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
    order = topological(ups, ids)
    reducer = Reducer(ups)
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


def _freeze(root: Item, ids: list[str], joins: set[int]) -> Node:
    """Immutable canvas from the builders; group items ordered by their earliest task."""
    if isinstance(root, int):
        return TaskRef(ids[root], root in joins)
    Frame: TypeAlias = tuple[Seq | Par, list[tuple[int, Node]], Iterator[Item]]
    stack: list[Frame] = [(root, [], iter(root.items))]
    while True:
        box, done, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            if isinstance(box, Par):
                done.sort(key=lambda pair: pair[0])
            items = tuple(node for _, node in done)
            built: tuple[int, Node] = (
                min(key for key, _ in done),
                Group(items) if isinstance(box, Par) else Chain(items),
            )
            if not stack:
                return built[1]
            stack[-1][1].append(built)
        elif isinstance(child, int):
            done.append((child, TaskRef(ids[child], child in joins)))
        else:
            stack.append((child, [], iter(child.items)))
