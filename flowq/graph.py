"""DAG basics over ``deps`` (task id -> ids it depends on): cycles, order, ancestry.

Every function is iterative (a 10,000-deep chain is fine) and ignores dependencies on ids that
are not keys of ``deps``; reporting those is the caller's job.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

Deps = Mapping[str, Sequence[str]]


def successors(deps: Deps) -> dict[str, list[str]]:
    """Direct downstream ids of every task, in mapping order."""
    out: dict[str, list[str]] = {task: [] for task in deps}
    for task, ups in deps.items():
        for up in ups:
            if up in out:
                out[up].append(task)
    return out


def roots(deps: Deps) -> list[str]:
    """Tasks with no (known) upstream, in mapping order."""
    return [task for task, ups in deps.items() if not any(up in deps for up in ups)]


def find_cycle(deps: Deps) -> list[str] | None:
    """One cycle in flow order from its earliest task, e.g. ``["a", "b", "a"]``; None if acyclic."""
    index = {task: i for i, task in enumerate(deps)}
    state: dict[str, int] = {}  # absent: unvisited, 1: on the current path, 2: done
    for start in deps:
        if start in state:
            continue
        path = [start]
        stack = [iter(deps[start])]
        state[start] = 1
        while stack:
            up = next(stack[-1], None)
            if up is None:
                state[path.pop()] = 2
                stack.pop()
            elif up not in deps or state.get(up) == 2:
                continue
            elif state.get(up) == 1:
                loop = path[path.index(up) :]
                loop.reverse()  # path follows depends_on; flip it to upstream -> downstream
                first = min(range(len(loop)), key=lambda i: index[loop[i]])
                loop = loop[first:] + loop[:first]
                return [*loop, loop[0]]
            else:
                state[up] = 1
                path.append(up)
                stack.append(iter(deps[up]))
    return None


def topological_order(deps: Deps) -> list[str]:
    """Upstream before downstream; among ready tasks the earliest in mapping order goes first."""
    index = {task: i for i, task in enumerate(deps)}
    order = list(deps)
    waiting = {task: len({up for up in ups if up in deps}) for task, ups in deps.items()}
    downstream = successors({task: list(dict.fromkeys(ups)) for task, ups in deps.items()})
    ready = [index[task] for task, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    result: list[str] = []
    while ready:
        task = order[heapq.heappop(ready)]
        result.append(task)
        for down in downstream[task]:
            waiting[down] -= 1
            if waiting[down] == 0:
                heapq.heappush(ready, index[down])
    if len(result) != len(order):
        cycle = find_cycle(deps) or []
        raise ValueError(f"cycle: {' -> '.join(cycle)}")
    return result


def ancestors(deps: Deps, task: str) -> set[str]:
    """Every task upstream of ``task``, transitively (reverse BFS on demand)."""
    seen: set[str] = set()
    todo = [task]
    while todo:
        for up in deps.get(todo.pop(), ()):
            if up in deps and up not in seen:
                seen.add(up)
                todo.append(up)
    return seen


def is_ancestor(deps: Deps, ancestor: str, task: str) -> bool:
    """True when ``ancestor`` is upstream of ``task``, transitively (BFS that stops early)."""
    seen: set[str] = set()
    todo = [task]
    while todo:
        for up in deps.get(todo.pop(), ()):
            if up == ancestor:
                return True
            if up in deps and up not in seen:
                seen.add(up)
                todo.append(up)
    return False


class Ancestry:
    """Answers many "is A upstream of T?" questions on an acyclic graph; one int bitset per task."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._order = topological_order(deps)  # raises ValueError on a cycle
        self._bit = {task: 1 << i for i, task in enumerate(self._order)}
        self._bits: dict[str, int] = {}
        for task in self._order:
            bits = 0
            for up in deps[task]:
                if up in deps:
                    bits |= self._bits[up] | self._bit[up]
            self._bits[task] = bits

    def is_ancestor(self, ancestor: str, task: str) -> bool:
        """True when ``ancestor`` is upstream of ``task``; False for unknown ids."""
        bit = self._bit.get(ancestor)
        return bit is not None and bool(self._bits.get(task, 0) & bit)

    def not_ancestors(self, task: str, names: Iterable[str]) -> list[str]:
        """The ``names`` that are not upstream of ``task`` (unknown ids included), in order."""
        return [name for name in names if not self.is_ancestor(name, task)]

    def ancestors(self, task: str) -> list[str]:
        """Every task upstream of ``task``, in topological order."""
        bits = self._bits[task]
        return [t for t in self._order if bits & self._bit[t]]
