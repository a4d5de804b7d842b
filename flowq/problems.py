"""Every problem of a definition as one line: pydantic's errors in flowq's words, then the
graph (duplicate ids, unknown dependencies, a cycle), templates and ``inputs``."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from jsonschema import Draft202012Validator, FormatChecker
from pydantic import ValidationError as PydanticError
from pydantic_core import ErrorDetails
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from flowq import graph, templates
from flowq.task_types import DEFAULTABLE, KEYS, MODELS, TASK_TYPES, Defaults, TaskBase, shown

# fmt: off
_TYPE_WORDS: Final = {
    "int": "an integer", "float": "a number", "string": "a string", "bool": "true or false",
    "list": "a list", "dict": "a mapping", "model": "a mapping", "model_attributes": "a mapping",
}
# fmt: on


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe(err: ErrorDetails, loc: tuple[int | str, ...], known: Iterable[str]) -> str:
    """One pydantic error as ``path: reason`` in flowq's words."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in ("missing", "extra_forbidden") and loc:
        parent, key = _path(loc[:-1]), str(loc[-1])
        reason = (
            f"missing required key {key!r}"
            if kind == "missing"
            else f"unknown key {key!r}" + suggest(key, known)
        )
        return f"{parent}: {reason}" if parent else reason
    if kind == "union_tag_invalid":
        return f"unknown type {ctx.get('tag')!r} (expected {', '.join(TASK_TYPES)})"
    if kind == "union_tag_not_found":
        return f"missing required key 'type' (expected {', '.join(TASK_TYPES)})"
    if kind == "flowq_named":
        return err["msg"]
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        reason = f"must be {bounds[kind]} {limit} (got {shown(got)})"
    elif kind.endswith(("_type", "_parsing")) and kind.rsplit("_", 1)[0] in _TYPE_WORDS:
        reason = f"must be {_TYPE_WORDS[kind.rsplit('_', 1)[0]]} (got {shown(got)})"
    elif kind == "too_short":
        least = ctx.get("min_length")
        reason = "must not be empty" if least == 1 else f"must have at least {least} items"
    elif kind == "string_too_short":
        reason = "must not be empty"
    elif kind == "literal_error":
        reason = f"must be {ctx.get('expected')} (got {shown(got)})"
    else:
        reason = err["msg"].removeprefix("Value error, ")
    path = _path(loc)
    return f"{path}: {reason}" if path else reason


class TaskEntry:
    """What can be read from one raw task entry, even when it is invalid."""

    def __init__(self, index: int, raw: Any) -> None:
        self.index, self.raw = index, raw if isinstance(raw, Mapping) else {}
        ident, kind = self.raw.get("id"), self.raw.get("type")
        self.id = ident if isinstance(ident, str) else None
        if self.id is None:
            self.label = f"task #{index + 1}"
        elif len(self.id) > 60:  # an id too long to be valid: enough of it to find it
            self.label = f"task #{index + 1} ({self.id[:40]!r}...)"
        else:
            self.label = f"task {self.id!r}"
        model = MODELS.get(kind) if isinstance(kind, str) else None
        self.known = KEYS[model or TaskBase]
        deps = self.raw.get("depends_on")
        self.deps = [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []
        when = self.raw.get("when")
        self.when = when if isinstance(when, str) else None
        fields = model.TEMPLATED if model else ()
        self.templated = {key: self.raw[key] for key in fields if self.raw.get(key) is not None}


class Checker:
    """Collects every problem of one definition, in the order a reader wants them."""

    def __init__(self, source: str, keys: Iterable[str]) -> None:
        self.source = source
        self.keys = keys  # the workflow's own keys, for "did you mean"
        self.found: list[tuple[int, int, str]] = []
        self.tasks: list[TaskEntry] = []

    def add(self, line: str, task: TaskEntry | None = None) -> None:
        at = -1 if task is None else task.index
        prefix = f"{self.source}: " if task is None else f"{self.source}: {task.label}: "
        self.found.append((at, len(self.found), prefix + line))

    @property
    def problems(self) -> list[str]:
        return [line for _, _, line in sorted(self.found)]

    def prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        """Check ``defaults`` and apply the valid ones to every task that does not set the key."""
        defaults, tasks = data.get("defaults"), data.get("tasks")
        usable: dict[str, Any] = {}
        if isinstance(defaults, Mapping):
            bad: set[Any] = set()
            try:
                Defaults(**{str(k): v for k, v in defaults.items()})
            except PydanticError as exc:
                for err in exc.errors():
                    self.add("defaults: " + describe(err, err["loc"], DEFAULTABLE))
                    bad.add(err["loc"][0] if err["loc"] else None)
            usable = {k: v for k, v in defaults.items() if k in DEFAULTABLE and k not in bad}
        if not isinstance(tasks, list):
            return data
        merged = []
        for i, raw in enumerate(tasks):
            if isinstance(raw, TaskBase):
                raw = raw.model_dump(by_alias=True, exclude_unset=True)
            if isinstance(raw, Mapping):
                raw = {**usable, **raw}
            merged.append(raw)
            self.tasks.append(TaskEntry(i, raw))
        return {**data, "tasks": merged}

    def characters(self, data: Mapping[str, Any]) -> None:
        """No U+0000 and no NaN or infinity anywhere: the store could not hold them."""
        for line in json_problems(data, where="", data_only=True):
            self.add(line)

    def pydantic(self, exc: PydanticError) -> None:
        """Turn pydantic's errors into flowq's lines, naming the task by id."""
        for err in exc.errors():
            loc = err["loc"]
            if loc[:1] == ("tasks",) and len(loc) >= 2 and isinstance(loc[1], int):
                index = loc[1]
                task = self.tasks[index] if index < len(self.tasks) else TaskEntry(index, None)
                self.add(describe(err, loc[3:], task.known), task)
            else:
                self.add(describe(err, loc, self.keys))

    def graph(self) -> dict[str, list[str]] | None:
        """Duplicate ids, unknown dependencies and one cycle; the graph when it is acyclic."""
        first: dict[str, TaskEntry] = {}
        for task in self.tasks:
            if task.id is None:
                continue
            if task.id in first:
                self.add(f"duplicate id (already used by task #{first[task.id].index + 1})", task)
            else:
                first[task.id] = task
        for task in self.tasks:
            for dep in task.deps if task.id is not None else ():
                if dep not in first:
                    hint = suggest(dep, first)
                    self.add(f"depends_on names unknown task {dep!r}{hint}", task)
        deps = {ident: task.deps for ident, task in first.items()}
        cycle = graph.find_cycle(deps)
        if cycle is not None:
            self.add(f"cycle: {' -> '.join(cycle)}")
            return None
        return deps

    def templates(self, deps: dict[str, list[str]] | None) -> None:
        """Templates and ``when`` that do not parse, or use results of non-ancestors."""
        ancestry: graph.Ancestry | None = None
        for task in self.tasks:
            uses: list[tuple[str, frozenset[str] | None]] = []
            for key, value in task.templated.items():
                for line in templates.template_problems(value, key):
                    self.add(line, task)
                for path, text in templates.template_strings(value, key):
                    uses.append((path, templates.referenced_results(text)))
            if task.when is not None:
                for line in templates.expression_problems(task.when):
                    self.add(f"when: {line}", task)
                uses.append(("when", templates.expression_referenced_results(task.when)))
            if deps is None or task.id is None:
                continue
            for key, used in uses:
                for name in sorted(used or ()):
                    if name not in deps:
                        self.add(f"{key}: uses results.{name} but there is no task {name!r}", task)
                        continue
                    ancestry = ancestry or graph.Ancestry(deps)
                    if not ancestry.is_ancestor(name, task.id):
                        self.add(
                            f"{key}: uses results.{name} but {name!r} is not upstream of "
                            f"{task.id!r} (add it to depends_on)",
                            task,
                        )

    def inputs(self, schema: Any) -> None:
        """``inputs`` must be a valid JSON Schema (Draft 2020-12) that can be used: its
        patterns compile and each ``$ref`` resolves within it (nothing is fetched)."""
        if not isinstance(schema, Mapping):
            return
        # only "regex": the other formats' checks depend on what else is installed
        meta = Draft202012Validator(
            Draft202012Validator.META_SCHEMA, format_checker=FormatChecker(formats=["regex"])
        )
        errors = sorted(meta.iter_errors(schema), key=lambda e: e.json_path)[:10]
        for err in errors:
            where = "inputs" + err.json_path[1:]
            self.add(f"{where}: not valid JSON Schema: {clip(err.message)}")
        if not errors:
            for where, ref in unresolved_refs(schema)[:10]:
                self.add(f"inputs{where}.$ref: cannot resolve {ref!r} within the schema")


# Draft 2020-12's keywords whose value is a subschema or a list of them; and those whose value
# maps names to subschemas. Nothing else is a schema (a $ref in `enum`, `default` or an unknown
# keyword is data).
_SCHEMA_KEYWORDS: Final = frozenset(
    {
        "additionalProperties", "items", "prefixItems", "contains", "propertyNames", "if",
        "then", "else", "allOf", "anyOf", "oneOf", "not", "unevaluatedItems",
        "unevaluatedProperties", "contentSchema", "additionalItems",
    }
)  # fmt: skip
_SCHEMA_MAPS: Final = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


def json_problems(
    value: Any,
    where: str = "vars",
    limit: int = 10,
    *,
    text_keys: bool = True,
    data_only: bool = False,
) -> list[str]:
    """One line per part of ``value`` that is not a JSON value the state store can hold: a
    dict, a list (or tuple), a string without U+0000 (Postgres stores that character neither
    in text nor in JSON), a finite number, true, false or null; at most ``limit``.

    ``text_keys``: a dict's keys must be strings (else numbers, true, false and null are
    allowed, as ``json.dumps`` writes them as strings). ``data_only``: ``value`` may hold more
    than data (a definition built in Python holds task models, checked by their own rules):
    only its strings and numbers are judged, inside any mapping, list or tuple, and a string's
    problem is named by its place alone.
    """
    found: list[str] = []
    active: set[int] = set()  # the containers on the path walked: one seen again is a cycle

    def walk(item: Any, path: str) -> None:
        if len(found) >= limit:
            return
        here = path or "(the definition)"
        if item is None or isinstance(item, bool | int):
            return
        if isinstance(item, str):
            if "\x00" in item:
                what = "" if data_only else "a string "
                found.append(f"{here}: {what}holds the character U+0000, which cannot be stored")
            return
        if isinstance(item, float):
            if not math.isfinite(item):
                found.append(f"{here}: {item!r} is not a JSON number")
            return
        mapping = isinstance(item, Mapping if data_only else dict)
        if not (mapping or isinstance(item, list | tuple)):
            if not data_only:
                found.append(f"{here}: not a JSON value (a Python {type(item).__name__})")
            return
        if id(item) in active:
            found.append(f"{here}: refers back to a value that holds it (a cycle)")
            return
        active.add(id(item))
        if mapping:
            for key, sub in item.items():
                if len(found) >= limit:
                    break
                if isinstance(key, str) and "\x00" in key:
                    found.append(
                        f"{here}: a key holds the character U+0000, which cannot be stored"
                    )
                elif not (isinstance(key, str) or data_only) and (
                    text_keys or not (key is None or isinstance(key, bool | int | float))
                ):
                    found.append(f"{here}: key {key!r} is not a string")
                else:
                    walk(sub, f"{path}.{key}" if path else str(key))
        else:
            for i, sub in enumerate(item):
                walk(sub, f"{path}[{i}]")
        active.discard(id(item))

    try:
        walk(value, where)
    except RecursionError:
        return [f"{where or '(the definition)'}: nested too deeply"]
    return found


def unresolved_refs(schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(where, ref)`` for each ``$ref`` of a (metaschema-valid) schema that does not resolve
    within it; ``where`` as ``.properties.x``."""
    root = DRAFT202012.create_resource(schema)
    base = root.id() or ""
    found: list[tuple[str, str]] = []

    def walk(node: Any, resolver: Any, where: str, names: bool) -> None:  # a Resolver
        if isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, resolver, f"{where}[{i}]", False)
            return
        if not isinstance(node, Mapping):
            return
        if names:  # a mapping of names to subschemas
            for name, sub in node.items():
                walk(sub, resolver, f"{where}.{name}", False)
            return
        if node is not schema and isinstance(node.get("$id"), str):
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except Unresolvable:
                found.append((where, ref))
        for key, sub in node.items():
            if key in _SCHEMA_KEYWORDS or key in _SCHEMA_MAPS:
                walk(sub, resolver, f"{where}.{key}", key in _SCHEMA_MAPS)

    walk(schema, Registry().with_resource(base, root).resolver(base), "", False)
    return found


def clip(text: str, width: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
