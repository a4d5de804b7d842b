"""The compiler: canvas shapes, coordinator joins, invariants on random DAGs, speed, Celery."""

from __future__ import annotations

import itertools
import json
import random
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowq.compiler import Chain, Group, Node, Plan, TaskRef, compile_deps, compile_workflow
from flowq.errors import ValidationError

Deps = Mapping[str, Sequence[str]]

ORDER_EXAMPLE = {
    "validate_order": [],
    "charge": ["validate_order"],
    "reserve_stock": ["validate_order"],
    "write_receipt": ["charge", "reserve_stock"],
    "notify": ["write_receipt"],
}
JOIN_NOTE = "(store-driven: not expressible in canvas without a false dependency)"


def t(task_id: str, join: bool = False) -> TaskRef:
    return TaskRef(task_id, join)


# --- helpers: what a canvas enforces, what the DAG implies --------------------------------------


def refs(node: Node) -> Iterator[TaskRef]:
    todo = [node]
    while todo:
        item = todo.pop()
        if isinstance(item, TaskRef):
            yield item
        else:
            todo.extend(item.items)


def orderings(node: Node) -> set[tuple[str, str]]:
    """Every (x, y) the canvas runs x before y: chain item i before item j > i (chords included)."""
    pairs: set[tuple[str, str]] = set()
    todo = [node]
    while todo:
        item = todo.pop()
        if isinstance(item, TaskRef):
            continue
        todo.extend(item.items)
        if isinstance(item, Chain):
            parts = [[r.task_id for r in refs(sub)] for sub in item.items]
            for i, before in enumerate(parts):
                for after in parts[i + 1 :]:
                    pairs.update((x, y) for x in before for y in after)
    return pairs


def closure(deps: Deps) -> set[tuple[str, str]]:
    """Every (x, y) with y transitively depending on x."""
    ups: dict[str, set[str]] = {}

    def ancestors(task: str) -> set[str]:
        if task not in ups:
            ups[task] = set()
            for up in deps[task]:
                ups[task] |= {up} | ancestors(up)
        return ups[task]

    return {(x, y) for y in deps for x in ancestors(y)}


def check_invariants(deps: Deps, plan: Plan) -> None:
    """Invariants 1-3, plus: joins carry their full deps and nothing precedes them in the canvas."""
    seen = [r.task_id for r in refs(plan.canvas)]
    assert sorted(seen) == sorted(deps), "every task exactly once"
    ordered = orderings(plan.canvas)
    assert ordered <= closure(deps), f"false dependencies: {ordered - closure(deps)}"
    for v, ups in deps.items():
        for u in ups:
            assert (u, v) in ordered or v in plan.joins, f"edge {u}->{v} lost"
    assert {r.task_id for r in refs(plan.canvas) if r.join} == set(plan.joins)
    for v, ups in plan.joins.items():
        assert ups == tuple(dict.fromkeys(deps[v]))
        assert not any(y == v for _, y in ordered), f"join {v} has a canvas predecessor"
    if not plan.joins:
        assert ordered == closure(deps), "without joins the canvas is exactly the DAG's order"


# --- shapes -------------------------------------------------------------------------------------


def test_spec_order_example_is_a_chain_with_a_chord() -> None:
    plan = compile_deps(ORDER_EXAMPLE)
    assert plan.render() == (
        "chain(\n"
        "  validate_order,\n"
        "  chord(\n"
        "    group(charge, reserve_stock),\n"
        "    write_receipt),\n"
        "  notify)"
    )
    assert plan.joins == {}
    assert plan.to_dict()["canvas"] == {
        "chain": [
            {"task": "validate_order", "join": False},
            {
                "chord": {
                    "header": [
                        {"task": "charge", "join": False},
                        {"task": "reserve_stock", "join": False},
                    ],
                    "body": {"task": "write_receipt", "join": False},
                }
            },
            {"task": "notify", "join": False},
        ]
    }


def test_n_shape_makes_d_the_only_coordinator_join() -> None:
    deps = {"a": [], "b": [], "c": ["a"], "d": ["a", "b"]}
    plan = compile_deps(deps)
    assert plan.joins == {"d": ("a", "b")}
    assert plan.canvas == Group((Chain((t("a"), t("c"))), t("b"), t("d", join=True)))
    check_invariants(deps, plan)
    assert plan.render() == (
        f"group(\n  chain(\n    a,\n    c),\n  b,\n  d [join])\n"
        f"coordinator joins:\n  d  waits for a, b   {JOIN_NOTE}"
    )
    assert plan.to_dict()["joins"] == {"d": ["a", "b"]}


def test_chain_of_n_is_one_flat_chain() -> None:
    deps = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(6)}
    assert compile_deps(deps) == Plan(Chain(tuple(t(f"s{i}") for i in range(6))), {})


def test_fan_out_fan_in_is_chain_with_chord() -> None:
    deps: dict[str, list[str]] = {"a": [], **{f"b{i}": ["a"] for i in range(4)}}
    deps["c"] = [f"b{i}" for i in range(4)]
    plan = compile_deps(deps)
    assert plan.canvas == Chain((t("a"), Group(tuple(t(f"b{i}") for i in range(4))), t("c")))
    assert plan.to_dict()["canvas"]["chain"][1]["chord"]["body"] == {"task": "c", "join": False}


def test_nested_diamonds_need_no_joins() -> None:
    deps = {
        "a": [],
        "b": ["a"],
        "c1": ["b"],
        "c2": ["b"],
        "d": ["c1", "c2"],
        "e": ["a"],
        "f": ["d", "e"],
    }
    plan = compile_deps(deps)
    inner = Chain((t("b"), Group((t("c1"), t("c2"))), t("d")))
    assert plan.canvas == Chain((t("a"), Group((inner, t("e"))), t("f")))
    assert plan.joins == {}


def test_deeply_nested_diamonds_compile_and_render() -> None:
    deps: dict[str, list[str]] = {"top": []}
    last = "top"
    for i in range(150):  # a diamond whose left branch holds the next diamond
        deps[f"l{i}"], deps[f"r{i}"] = [last], [last]
        last = f"l{i}"
    for i in reversed(range(150)):
        deps[f"j{i}"] = [last, f"r{i}"]
        last = f"j{i}"
    plan = compile_deps(deps)
    assert plan.joins == {}
    assert plan.render().count("chord(") == 150


def test_independent_roots_become_a_group() -> None:
    plan = compile_deps({"a": [], "b": ["a"], "c": [], "d": []})
    assert plan.canvas == Group((Chain((t("a"), t("b"))), t("c"), t("d")))


def test_transitive_edge_is_implied_by_the_chain() -> None:
    plan = compile_deps({"a": [], "b": ["a"], "c": ["b", "a"]})
    assert plan == Plan(Chain((t("a"), t("b"), t("c"))), {})


def test_complete_bipartite_fan_in_is_group_then_group() -> None:
    deps = {"a": [], "b": [], "c": ["a", "b"], "d": ["b", "a"]}
    plan = compile_deps(deps)
    assert plan == Plan(Chain((Group((t("a"), t("b"))), Group((t("c"), t("d"))))), {})
    assert plan.render() == "chord(\n  group(a, b),\n  group(c, d))"


def test_bipartite_blocks_that_overlap_as_an_n_still_hold_the_invariants() -> None:
    # two 2x2 blocks fed crosswise: the barriers themselves get stuck and must be cut
    deps = {
        "x": [],
        "y": [],
        "u1": ["x"],
        "u2": ["x"],
        "u3": ["y"],
        "u4": ["y"],
        "w1": ["u1", "u3"],
        "w2": ["u1", "u3"],
        "w3": ["u2", "u4"],
        "w4": ["u2", "u4"],
    }
    plan = compile_deps(deps)
    check_invariants(deps, plan)
    assert plan.joins


def test_duplicate_deps_count_once() -> None:
    plan = compile_deps({"a": [], "b": [], "c": ["a", "a"], "d": ["a", "b", "b"]})
    assert plan.joins == {"d": ("a", "b")}


def test_single_task_and_empty_workflow() -> None:
    assert compile_deps({"only": []}) == Plan(t("only"), {})
    assert compile_deps({}).to_dict() == {"canvas": {"group": []}, "joins": {}}


def test_unknown_dependency_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="task 'b': depends_on names unknown task 'nope'"):
        compile_deps({"a": [], "b": ["nope"]})


def test_cycle_is_a_validation_error_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"cycle: b -> c -> d -> b"):
        compile_deps({"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"], "e": ["d"]})


def test_compile_workflow_uses_task_ids_and_deps() -> None:
    class Stub:
        task_ids = list(ORDER_EXAMPLE)

        def deps(self, task_id: str) -> tuple[str, ...]:
            return tuple(ORDER_EXAMPLE[task_id])

    assert compile_workflow(Stub()) == compile_deps(ORDER_EXAMPLE)  # type: ignore[arg-type]


# --- random DAGs (hypothesis) -------------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 30) -> dict[str, list[str]]:
    n = draw(st.integers(1, max_nodes))
    fan_in = draw(st.integers(1, 5))
    deps: dict[str, list[str]] = {}
    for i in range(n):
        ups = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=fan_in)) if i else []
        deps[f"t{i}"] = [f"t{u}" for u in ups]
    order = draw(st.permutations(list(deps)))  # definition order need not be topological
    return {task: deps[task] for task in order}


@st.composite
def twin_dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """A random DAG with each task cloned 1-3 times: clones share deps, so fan-ins are bipartite."""
    base = draw(dags(max_nodes=10))
    copies = {v: [f"{v}_{i}" for i in range(draw(st.integers(1, 3)))] for v in base}
    return {c: [x for u in base[v] for x in copies[u]] for v in base for c in copies[v]}


SpTree = Any
sp_trees = st.recursive(
    st.just("task"),
    lambda kids: st.tuples(st.sampled_from(["series", "parallel"]), st.lists(kids, min_size=2)),
    max_leaves=30,
)


def sp_dag(tree: SpTree) -> dict[str, list[str]]:
    """The Hasse diagram of a series-parallel order: series joins all maxima to all minima."""
    deps: dict[str, list[str]] = {}

    def build(node: SpTree) -> tuple[list[str], list[str]]:
        if node == "task":
            name = f"t{len(deps)}"
            deps[name] = []
            return [name], [name]
        kind, kids = node
        parts = [build(kid) for kid in kids]
        if kind == "parallel":
            return [m for p in parts for m in p[0]], [m for p in parts for m in p[1]]
        for (_, maxima), (minima, _) in itertools.pairwise(parts):
            for v in minima:
                deps[v] += maxima
        return parts[0][0], parts[-1][1]

    build(tree)
    return deps


@settings(max_examples=400, deadline=None)
@given(dags())
def test_random_dags_keep_every_invariant(deps: dict[str, list[str]]) -> None:
    plan = compile_deps(deps)
    check_invariants(deps, plan)
    assert compile_deps(deps) == plan, "deterministic"
    as_json = json.loads(json.dumps(plan.to_dict()))
    assert sorted(_dict_tasks(as_json["canvas"])) == sorted(deps)


@settings(max_examples=400, deadline=None)
@given(twin_dags())
def test_random_dags_with_cloned_tasks_keep_every_invariant(deps: dict[str, list[str]]) -> None:
    check_invariants(deps, compile_deps(deps))


@settings(max_examples=300, deadline=None)
@given(sp_trees, st.randoms(use_true_random=False))
def test_series_parallel_orders_need_no_joins(tree: SpTree, rnd: random.Random) -> None:
    deps = sp_dag(tree)
    names = list(deps)
    rnd.shuffle(names)
    deps = {name: deps[name] for name in names}
    plan = compile_deps(deps)
    assert plan.joins == {}
    check_invariants(deps, plan)


@settings(max_examples=300, deadline=None)
@given(sp_trees, st.randoms(use_true_random=False), st.integers(1, 4))
def test_series_parallel_orders_with_extra_edges_keep_every_invariant(
    tree: SpTree, rnd: random.Random, extra: int
) -> None:
    deps = sp_dag(tree)  # names are created upstream first
    names = list(deps)
    for _ in range(extra if len(names) > 1 else 0):
        up, down = sorted(rnd.sample(range(len(names)), 2))
        deps[names[down]].append(names[up])
    check_invariants(deps, compile_deps(deps))


def _dict_tasks(d: dict[str, Any]) -> Iterator[str]:
    if "task" in d:
        yield d["task"]
    elif "chord" in d:
        for item in d["chord"]["header"]:
            yield from _dict_tasks(item)
        yield from _dict_tasks(d["chord"]["body"])
    else:
        for item in d.get("chain", d.get("group", [])):
            yield from _dict_tasks(item)


# --- size: linear work, measured by calls (wall time belongs to bench/, not to unit tests) ----


def _calls(fn: Callable[[], Any]) -> int:
    """How many Python and builtin calls ``fn`` makes: a deterministic measure of its work
    (a quadratic loop shows as 100x the calls for 10x the tasks)."""
    count = 0

    def profile(_frame: Any, event: str, _arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def _chain(n: int) -> Deps:
    return {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(n)}


def _fan_in(n: int) -> Deps:
    deps: dict[str, list[str]] = {"root": [], **{f"b{i}": ["root"] for i in range(n)}}
    deps["sink"] = [f"b{i}" for i in range(n)]
    return deps


def _layers(n: int) -> Deps:
    rnd = random.Random(7)
    deps: dict[str, list[str]] = {}
    for layer in range(n):
        for k in range(100):
            ups = rnd.sample(range(100), rnd.randint(1, 3)) if layer else []
            deps[f"n{layer}_{k}"] = [f"n{layer - 1}_{j}" for j in ups]
    return deps


@pytest.mark.parametrize(
    "shape,small,big",
    [(_chain, 500, 5_000), (_fan_in, 500, 5_000), (_layers, 5, 50)],
    ids=["chain", "fan-in", "layers"],
)
def test_compiling_and_rendering_ten_times_the_tasks_is_ten_times_the_work(
    shape: Callable[[int], Deps], small: int, big: int
) -> None:
    def work(n: int) -> Callable[[], Any]:
        deps = shape(n)

        def run() -> None:
            plan = compile_deps(deps)
            plan.render(), plan.to_dict()

        return run

    ratio = _calls(work(big)) / _calls(work(small))
    assert ratio < 15, f"10x the tasks made {ratio:.1f}x the calls (quadratic: ~100x)"


def test_ten_thousand_task_chain_is_one_flat_chain() -> None:
    plan = compile_deps(_chain(10_000))
    assert isinstance(plan.canvas, Chain) and len(plan.canvas.items) == 10_000
    text, data = plan.render(), plan.to_dict()
    assert len(text.splitlines()) == 10_001 and len(data["canvas"]["chain"]) == 10_000


def test_ten_thousand_wide_fan_in_is_one_wrapped_group() -> None:
    plan = compile_deps(_fan_in(10_000))
    assert isinstance(plan.canvas, Chain) and len(plan.canvas.items) == 3
    lines = plan.render().splitlines()
    assert lines[:3] == ["chain(", "  root,", "  chord("] and lines[-1] == "    sink))"
    assert len(lines) < 1_000 and max(map(len, lines)) <= 100
    names = [n.strip(" ,)") for line in lines[4:-1] for n in line.split(", ")]
    assert names == [f"b{i}" for i in range(10_000)]


def test_hundred_layers_of_hundred_random_tasks_compile_with_their_joins() -> None:
    deps = _layers(100)
    plan = compile_deps(deps)
    assert sorted(r.task_id for r in refs(plan.canvas)) == sorted(deps)
    for v, ups in plan.joins.items():
        assert ups == tuple(deps[v])


# --- Celery canvas ------------------------------------------------------------------------------


@pytest.fixture
def signature() -> Any:
    celery = pytest.importorskip("celery")
    app = celery.Celery("t")
    return lambda task_id: app.signature("flowq.run", kwargs={"task_id": task_id})


def test_fan_in_builds_chain_of_task_and_chord(signature: Any) -> None:
    deps = {"a": [], "b1": ["a"], "b2": ["a"], "c": ["b1", "b2"]}
    canvas = compile_deps(deps).to_celery(signature)
    assert canvas["subtask_type"] == "chain"
    first, chord = canvas.tasks
    assert first["subtask_type"] is None and first.kwargs == {"task_id": "a"}
    assert chord["subtask_type"] == "chord"
    assert [s.kwargs["task_id"] for s in chord.tasks] == ["b1", "b2"]
    assert chord.body.kwargs == {"task_id": "c"}


def test_join_is_its_own_signature_in_the_group(signature: Any) -> None:
    canvas = compile_deps({"a": [], "b": [], "c": ["a"], "d": ["a", "b"]}).to_celery(signature)
    assert canvas["subtask_type"] == "group"
    kinds = [(s["subtask_type"], s.kwargs.get("task_id")) for s in canvas.tasks]
    assert kinds == [("chain", None), (None, "b"), (None, "d")]
