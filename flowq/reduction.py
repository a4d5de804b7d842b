"""Two-terminal series-parallel reduction of a DAG, for the compiler (``flowq.compiler``).

Edges carry canvas labels under construction (``Seq``: a chain, ``Par``: a group, an int: a
task); ``Reducer.run`` reduces series and parallel edges, applies the barrier rule for complete
bipartite fan-ins, and marks as joins the tasks no canvas fits. Pure: no I/O.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TypeAlias

from flowq.errors import ValidationError


class Seq:
    """Mutable chain under construction (owned by exactly one edge)."""

    __slots__ = ("items",)

    def __init__(self, items: deque[Item]) -> None:
        self.items = items


class Par:
    """Mutable group under construction (owned by exactly one edge)."""

    __slots__ = ("items",)

    def __init__(self, items: list[Item]) -> None:
        self.items = items


Item: TypeAlias = int | Seq | Par  # int: a task's index
Label: TypeAlias = Item | None  # None: a bare edge


def series(x: Label, y: Label) -> Label:
    """``x`` then ``y``, flattened; the longer chain absorbs the shorter."""
    if x is None:
        return y
    if y is None:
        return x
    if isinstance(x, Seq) and isinstance(y, Seq):
        if len(x.items) >= len(y.items):
            x.items.extend(y.items)
            return x
        y.items.extendleft(reversed(x.items))
        return y
    if isinstance(x, Seq):
        x.items.append(y)
        return x
    if isinstance(y, Seq):
        y.items.appendleft(x)
        return y
    return Seq(deque((x, y)))


def parallel(x: Label, y: Label) -> Label:
    """``x`` alongside ``y``, flattened; a bare edge is implied by any labelled one."""
    if x is None:
        return y
    if y is None:
        return x
    if isinstance(y, Par) and (not isinstance(x, Par) or len(y.items) > len(x.items)):
        x, y = y, x
    if isinstance(x, Par):
        if isinstance(y, Par):
            x.items.extend(y.items)
        else:
            x.items.append(y)
        return x
    return Par([x, y])


class Reducer:
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
        self.out: dict[int, dict[int, Label]] = {v: {} for v in range(n + 2)}
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

    def run(self, order: list[int]) -> Item:
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

    def _add(self, u: int, w: int, label: Label) -> None:
        row = self.out[u]
        if w in row:
            row[w] = parallel(row[w], label)
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
            self._add(u, w, series(series(before, v if v < n else None), after))
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


def topological(ups: list[tuple[int, ...]], ids: list[str]) -> list[int]:
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
