"""DAG basics: cycles, topological order, ancestry; deep graphs must not recurse."""

from __future__ import annotations

import sys

import pytest

from flowq.graph import (
    Ancestry,
    ancestors,
    find_cycle,
    is_ancestor,
    roots,
    successors,
    topological_order,
)

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
N = 10_000


def chain(n: int) -> dict[str, list[str]]:
    return {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(n)}


def test_acyclic_graph_has_no_cycle() -> None:
    assert find_cycle(DIAMOND) is None
    assert find_cycle({}) is None


def test_cycle_is_named_in_flow_order_from_its_earliest_task() -> None:
    deps = {"start": [], "a": ["start", "c"], "b": ["a"], "c": ["b"], "end": ["c"]}
    assert find_cycle(deps) == ["a", "b", "c", "a"]
    # same cycle, tasks listed in another order: still starts at the earliest listed
    assert find_cycle({"c": ["b"], "b": ["a"], "a": ["c"]}) == ["c", "a", "b", "c"]


def test_self_dependency_is_a_cycle() -> None:
    assert find_cycle({"a": [], "b": ["b"]}) == ["b", "b"]


def test_unknown_dependencies_are_ignored() -> None:
    deps = {"a": ["ghost"], "b": ["a", "ghost"]}
    assert find_cycle(deps) is None
    assert topological_order(deps) == ["a", "b"]
    assert roots(deps) == ["a"]
    assert successors(deps) == {"a": ["b"], "b": []}


def test_cycle_in_10000_deep_chain_is_found_without_recursion() -> None:
    deps = chain(N)
    deps["t0"] = [f"t{N - 1}"]  # close the loop
    cycle = find_cycle(deps)
    assert sys.getrecursionlimit() < N
    assert cycle is not None and len(cycle) == N + 1
    assert cycle[0] == cycle[-1] == "t0" and cycle[1] == "t1" and cycle[-2] == f"t{N - 1}"


def test_topological_order_is_stable_and_puts_upstream_first() -> None:
    assert topological_order(DIAMOND) == ["a", "b", "c", "d"]
    # already valid mapping order is kept as is
    assert topological_order({"x": [], "a": [], "b": ["a"]}) == ["x", "a", "b"]
    # a task listed before its upstream moves after it, others keep their order
    assert topological_order({"d": ["c"], "a": [], "c": ["a"], "e": []}) == ["a", "c", "d", "e"]


def test_topological_order_of_deep_and_wide_graphs() -> None:
    assert topological_order(chain(N)) == [f"t{i}" for i in range(N)]
    fan = {"root": [], **{f"t{i}": ["root"] for i in range(N)}}
    fan["join"] = [f"t{i}" for i in range(N)]
    order = topological_order(fan)
    assert order[0] == "root" and order[-1] == "join" and len(order) == N + 2


def test_topological_order_raises_naming_the_cycle() -> None:
    with pytest.raises(ValueError, match=r"^cycle: a -> b -> a$"):
        topological_order({"a": ["b"], "b": ["a"], "c": []})


def test_duplicate_edges_count_once() -> None:
    assert topological_order({"a": [], "b": ["a", "a"]}) == ["a", "b"]


def test_successors_in_mapping_order() -> None:
    assert successors(DIAMOND) == {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}


def test_ancestor_queries() -> None:
    assert ancestors(DIAMOND, "d") == {"a", "b", "c"}
    assert ancestors(DIAMOND, "a") == set()
    assert is_ancestor(DIAMOND, "a", "d")
    assert not is_ancestor(DIAMOND, "b", "c")
    assert not is_ancestor(DIAMOND, "d", "a")
    assert not is_ancestor(DIAMOND, "d", "d")


def test_ancestry_answers_many_questions_on_a_10000_chain() -> None:
    ancestry = Ancestry(chain(N))
    assert ancestry.is_ancestor("t0", f"t{N - 1}")
    assert not ancestry.is_ancestor(f"t{N - 1}", "t0")
    assert not ancestry.is_ancestor("t5", "t5")
    assert not ancestry.is_ancestor("ghost", "t5")
    assert ancestry.not_ancestors("t3", ["t0", "t3", "t9", "ghost", "t2"]) == ["t3", "t9", "ghost"]
    assert ancestry.ancestors("t3") == ["t0", "t1", "t2"]
    assert is_ancestor(chain(N), "t0", f"t{N - 1}")


def test_ancestry_of_a_cyclic_graph_is_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        Ancestry({"a": ["b"], "b": ["a"]})
