"""Workflow definitions: pydantic models, loading YAML/JSON, and every check of ``flowq validate``.

Every problem is one line, ``"<source>: task '<id>': <reason>"`` or ``"<source>: <reason>"``.

``retry_backoff_max`` and ``timeout`` are at most ``MAX_BROKER_WAIT`` seconds: Redis redelivers a
message that stayed unacknowledged longer than its ``visibility_timeout`` (3600 s in
``workers/config.py``), so a longer retry countdown (held as an ETA message) or a longer attempt
(acknowledged late) would run twice (celery#2481, kombu#337). Keeping every wait below it by
construction needs no second place to hold delayed work.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from contextvars import ContextVar
from functools import cached_property
from typing import Annotated, Any, ClassVar, Final, Literal

import yaml
from jsonschema import Draft202012Validator
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic import ValidationError as PydanticError
from pydantic_core import ErrorDetails, PydanticCustomError

from flowq import graph, templates
from flowq.errors import NotFound, ValidationError

# fmt: off
TRIGGER_RULES: Final[tuple[str, ...]] = (
    "all_success", "all_done", "one_success", "one_failed", "none_failed",
    "none_failed_min_one_success",
)
FILE_OPERATIONS: Final[tuple[str, ...]] = (
    "read", "write", "append", "copy", "move", "delete", "mkdir", "list",
)
HTTP_METHODS: Final[tuple[str, ...]] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
DEFAULTABLE: Final[tuple[str, ...]] = (
    "retries", "retry_backoff", "retry_backoff_max", "retry_jitter",
    "timeout", "priority", "queue", "trigger_rule",
)
# fmt: on
TASK_TYPES: Final[tuple[str, ...]] = ("python", "http", "sql", "file")
MAX_BROKER_WAIT: Final = 3000.0
"""Longest retry delay or attempt, in seconds: below Redis' visibility_timeout (3600 s), with room
for the hard time limit's grace and clock skew between workers."""
CONNECTION_ENV_PREFIX: Final = "FLOWQ_CONN_"
_IDENT: Final = r"[A-Za-z_][A-Za-z0-9_]*"
_SOURCE: ContextVar[str] = ContextVar("flowq_definition_source", default="<python>")

# -- field types ------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    """A short rendering of a bad value for a one-line message."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _matching(pattern: str, hint: str = "") -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            wanted = hint or pattern
            raise PydanticCustomError("flowq", f"must match {wanted} (got {_shown(value)})")
        return value

    return AfterValidator(check)


def _one_of(key: str, allowed: tuple[str, ...], fold: Callable[[str], str] = str) -> AfterValidator:
    def check(value: str) -> str:
        if fold(value) not in allowed:
            expected = ", ".join(allowed)
            raise PydanticCustomError(
                "flowq_named", f"unknown {key} {value!r} (expected {expected})"
            )
        return fold(value)

    return AfterValidator(check)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _broker_wait(value: float) -> float:
    if value > MAX_BROKER_WAIT:
        raise PydanticCustomError(
            "flowq",
            f"must be <= {MAX_BROKER_WAIT:g} seconds (got {value:g}): a longer wait would "
            "outlive the broker's visibility timeout (3600 s) and run the task twice",
        )
    return value


TaskId = Annotated[str, _matching(r"[A-Za-z0-9_-]+")]
WorkflowId = Annotated[str, _matching(r"[A-Za-z0-9_.-]+")]
Handler = Annotated[str, _matching(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}", "'module.path:function'")]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0)]
Delay = Annotated[float, Field(ge=0)]
MaxDelay = Annotated[float, Field(ge=0), AfterValidator(_broker_wait)]
Timeout = Annotated[float, Field(gt=0), AfterValidator(_broker_wait)]
Priority = Annotated[int, Field(ge=0, le=9)]
TriggerRule = Annotated[str, _one_of("trigger_rule", TRIGGER_RULES)]
Queue = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


# -- tasks ------------------------------------------------------------------------------------


class TaskBase(_Strict):
    """Keys every task has (SPEC "Keys of every task")."""

    TEMPLATED: ClassVar[tuple[str, ...]] = ()  # spec names (``json``, not ``json_``)

    id: TaskId
    name: str | None = None
    type: str
    depends_on: Annotated[list[str], AfterValidator(_unique)] = []
    when: str | None = None
    trigger_rule: TriggerRule = "all_success"
    retries: Count = 0
    retry_backoff: Delay = 1.0
    retry_backoff_max: MaxDelay = 60.0
    retry_jitter: bool = True
    timeout: Timeout | None = None
    priority: Priority | None = None
    queue: Queue = "flowq"

    @property
    def display_name(self) -> str:
        """The name, else the id."""
        return self.name or self.id

    def spec(self) -> dict[str, Any]:
        """This task as a user would write it (``json``, not ``json_``), without None values.

        A new dict each call over values dumped once (the model is frozen): replace a key's
        value rather than change it in place (``render`` builds new containers).
        """
        return dict(self._spec)

    @cached_property
    def _spec(self) -> dict[str, Any]:
        dumped = self.model_dump(mode="json", by_alias=True)
        return {key: value for key, value in dumped.items() if value is not None}

    def templated_values(self) -> dict[str, Any]:
        """The templated keys this task sets, by spec name, e.g. ``{"url": "{{ vars.u }}"}``."""
        spec = self.spec()
        return {key: spec[key] for key in self.TEMPLATED if key in spec}


class PythonTask(TaskBase):
    """Calls ``handler(ctx)`` in a worker."""

    TEMPLATED: ClassVar[tuple[str, ...]] = ("params",)
    type: Literal["python"]
    handler: Handler
    params: dict[str, Any] = {}


class HttpTask(TaskBase):
    """One HTTP request; the result is status, headers and body."""

    TEMPLATED: ClassVar[tuple[str, ...]] = ("url", "headers", "json", "body", "params")
    type: Literal["http"]
    method: Annotated[str, _one_of("method", HTTP_METHODS, str.upper)] = "GET"
    url: Annotated[str, Field(min_length=1)]
    headers: dict[str, str] | None = None
    json_: Any = Field(default=None, alias="json")
    body: str | None = None
    params: dict[str, Any] | None = None
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] | None = None
    request_timeout: Seconds | None = None

    @model_validator(mode="after")
    def _json_or_body(self) -> HttpTask:
        if self.json_ is not None and self.body is not None:
            raise PydanticCustomError("flowq", "give either 'json' or 'body', not both")
        return self


class SqlTask(TaskBase):
    """One SQL statement with bound parameters on a named connection."""

    TEMPLATED: ClassVar[tuple[str, ...]] = ("params",)
    type: Literal["sql"]
    connection: Annotated[str, _matching(r"[A-Za-z0-9_]+")]
    query: Annotated[str, Field(min_length=1)]
    params: dict[str, Any] = {}
    expect_rowcount: Count | None = None


class FileTask(TaskBase):
    """One file operation inside ``FLOWQ_FILE_ROOT``."""

    TEMPLATED: ClassVar[tuple[str, ...]] = ("path", "to", "content")
    type: Literal["file"]
    operation: Annotated[str, _one_of("operation", FILE_OPERATIONS)]
    path: Annotated[str, Field(min_length=1)]
    to: str | None = None
    content: Any | None = None

    @model_validator(mode="after")
    def _needs_operands(self) -> FileTask:
        if self.operation in ("copy", "move") and self.to is None:
            raise PydanticCustomError("flowq", f"operation {self.operation!r} needs 'to'")
        if self.operation in ("write", "append") and self.content is None:
            raise PydanticCustomError("flowq", f"operation {self.operation!r} needs 'content'")
        return self


Task = Annotated[PythonTask | HttpTask | SqlTask | FileTask, Field(discriminator="type")]
_MODELS: Final[dict[str, type[TaskBase]]] = {
    "python": PythonTask, "http": HttpTask, "sql": SqlTask, "file": FileTask,
}  # fmt: skip
_MODEL_LIST: Final[list[type[TaskBase]]] = [TaskBase, *_MODELS.values()]
_KEYS: Final[dict[type[TaskBase], tuple[str, ...]]] = {
    model: tuple(field.alias or name for name, field in model.model_fields.items())
    for model in _MODEL_LIST
}


# The keys ``defaults:`` may set, checked like a task's: TaskBase's own fields, not copies.
_Defaults: Final[type[_Strict]] = create_model(
    "_Defaults",
    __base__=_Strict,
    **{  # type: ignore[call-overload]
        key: (TaskBase.model_fields[key].rebuild_annotation(), TaskBase.model_fields[key])
        for key in DEFAULTABLE
    },
)


# -- problems ---------------------------------------------------------------------------------

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


def _suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(err: ErrorDetails, loc: tuple[int | str, ...], known: Iterable[str]) -> str:
    """One pydantic error as ``path: reason`` in flowq's words."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in ("missing", "extra_forbidden") and loc:
        parent, key = _path(loc[:-1]), str(loc[-1])
        reason = (
            f"missing required key {key!r}"
            if kind == "missing"
            else f"unknown key {key!r}" + _suggest(key, known)
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
        reason = f"must be {bounds[kind]} {limit} (got {_shown(got)})"
    elif kind.endswith(("_type", "_parsing")) and kind.rsplit("_", 1)[0] in _TYPE_WORDS:
        reason = f"must be {_TYPE_WORDS[kind.rsplit('_', 1)[0]]} (got {_shown(got)})"
    elif kind == "too_short":
        least = ctx.get("min_length")
        reason = "must not be empty" if least == 1 else f"must have at least {least} items"
    elif kind == "string_too_short":
        reason = "must not be empty"
    elif kind == "literal_error":
        reason = f"must be {ctx.get('expected')} (got {_shown(got)})"
    else:
        reason = err["msg"].removeprefix("Value error, ")
    path = _path(loc)
    return f"{path}: {reason}" if path else reason


class _Task:
    """What can be read from one raw task entry, even when it is invalid."""

    def __init__(self, index: int, raw: Any) -> None:
        self.index, self.raw = index, raw if isinstance(raw, Mapping) else {}
        ident, kind = self.raw.get("id"), self.raw.get("type")
        self.id = ident if isinstance(ident, str) else None
        self.label = f"task {ident!r}" if self.id is not None else f"task #{index + 1}"
        model = _MODELS.get(kind) if isinstance(kind, str) else None
        self.known = _KEYS[model or TaskBase]
        deps = self.raw.get("depends_on")
        self.deps = [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []
        when = self.raw.get("when")
        self.when = when if isinstance(when, str) else None
        fields = model.TEMPLATED if model else ()
        self.templated = {key: self.raw[key] for key in fields if self.raw.get(key) is not None}


class _Checker:
    """Collects every problem of one definition, in the order a reader wants them."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[tuple[int, int, str]] = []
        self.tasks: list[_Task] = []

    def add(self, line: str, task: _Task | None = None) -> None:
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
                _Defaults(**{str(k): v for k, v in defaults.items()})
            except PydanticError as exc:
                for err in exc.errors():
                    self.add("defaults: " + _describe(err, err["loc"], DEFAULTABLE))
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
            self.tasks.append(_Task(i, raw))
        return {**data, "tasks": merged}

    def pydantic(self, exc: PydanticError) -> None:
        """Turn pydantic's errors into flowq's lines, naming the task by id."""
        for err in exc.errors():
            loc = err["loc"]
            if loc[:1] == ("tasks",) and len(loc) >= 2 and isinstance(loc[1], int):
                index = loc[1]
                task = self.tasks[index] if index < len(self.tasks) else _Task(index, None)
                self.add(_describe(err, loc[3:], task.known), task)
            else:
                self.add(_describe(err, loc, Workflow.model_fields))

    def graph(self) -> dict[str, list[str]] | None:
        """Duplicate ids, unknown dependencies and one cycle; the graph when it is acyclic."""
        first: dict[str, _Task] = {}
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
                    hint = _suggest(dep, first)
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
        """``inputs`` must be a valid JSON Schema (Draft 2020-12)."""
        if not isinstance(schema, Mapping):
            return
        meta = Draft202012Validator(Draft202012Validator.META_SCHEMA)
        for err in sorted(meta.iter_errors(schema), key=lambda e: e.json_path)[:10]:
            where = "inputs" + err.json_path[1:]
            self.add(f"{where}: not valid JSON Schema: {_clip(err.message)}")


def _clip(text: str, width: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# -- the workflow -----------------------------------------------------------------------------


class Workflow(_Strict):
    """A validated workflow definition; building one raises flowq's ValidationError."""

    id: WorkflowId
    name: str | None = None
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1  # the store's column is 32-bit
    inputs: dict[str, Any] | None = None
    defaults: dict[str, Any] = {}
    tasks: Annotated[list[Task], Field(min_length=1)]

    def __init__(self, **data: Any) -> None:
        checker = _Checker(_SOURCE.get())
        prepared = checker.prepare(data)
        try:
            super().__init__(**prepared)
        except PydanticError as exc:
            checker.pydantic(exc)
        checker.templates(checker.graph())
        checker.inputs(data.get("inputs"))
        if checker.found:
            raise ValidationError(checker.problems)

    # -- loading

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<python>") -> Workflow:
        """Build from a parsed YAML/JSON mapping; problems are prefixed with ``source``."""
        if not isinstance(data, Mapping):
            got = "nothing" if data is None else _shown(data)
            raise ValidationError(f"{source}: a workflow must be a mapping of keys (got {got})")
        bad = [key for key in data if not isinstance(key, str)]
        if bad:
            raise ValidationError([f"{source}: unknown key {key!r}" for key in bad])
        token = _SOURCE.set(source)
        try:
            return cls(**data)
        finally:
            _SOURCE.reset(token)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Workflow:
        """Load a ``.yaml``/``.yml``/``.json`` file; problems name the file."""
        source = os.fspath(path)
        return cls.from_dict(_load(source), source)

    # -- export

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``Workflow.from_dict(wf.to_dict()) == wf``."""
        out: dict[str, Any] = {"id": self.id}
        if self.name is not None:
            out["name"] = self.name
        out["version"] = self.version
        dumped = self.model_dump(mode="json", include={"inputs", "defaults"})
        if self.inputs is not None:
            out["inputs"] = dumped["inputs"]
        if self.defaults:
            out["defaults"] = dumped["defaults"]
        out["tasks"] = []
        for task in self.tasks:
            spec = task.spec()
            # keep an explicit null that overrides a default, or the round trip would lose it
            spec.update({key: None for key in self.defaults if key not in spec})
            out["tasks"].append(spec)
        return out

    def digest(self) -> str:
        """sha256 hex of the canonical JSON of ``to_dict()``."""
        return self._digest

    @cached_property
    def _digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    # -- graph

    @cached_property
    def _index(self) -> dict[str, Task]:
        return {task.id: task for task in self.tasks}

    @cached_property
    def _successors(self) -> dict[str, tuple[str, ...]]:
        found = graph.successors({task.id: task.depends_on for task in self.tasks})
        return {ident: tuple(down) for ident, down in found.items()}

    @cached_property
    def _needs(self) -> dict[str, frozenset[str] | None]:
        return {}

    @cached_property
    def _vars_validator(self) -> Draft202012Validator:
        checker = Draft202012Validator.FORMAT_CHECKER
        return Draft202012Validator(self.inputs or {}, format_checker=checker)

    @property
    def task_ids(self) -> list[str]:
        """Task ids in definition order."""
        return [task.id for task in self.tasks]

    def task(self, task_id: str) -> Task:
        """The task with this id; NotFound if there is none."""
        try:
            return self._index[task_id]
        except KeyError:
            raise NotFound(f"workflow {self.id!r} has no task {task_id!r}") from None

    def deps(self, task_id: str) -> tuple[str, ...]:
        """Direct upstream ids (``depends_on``)."""
        return tuple(self.task(task_id).depends_on)

    def successors(self, task_id: str) -> tuple[str, ...]:
        """Direct downstream ids, in definition order."""
        self.task(task_id)
        return self._successors[task_id]

    def roots(self) -> tuple[str, ...]:
        """Tasks with no upstream, in definition order."""
        return tuple(task.id for task in self.tasks if not task.depends_on)

    def results_needed(self, task_id: str) -> frozenset[str] | None:
        """Ids whose results this task's templates and ``when`` use; None if it uses them all."""
        if task_id not in self._needs:
            task = self.task(task_id)
            found: set[str] = set()
            uses = [templates.referenced_results(v) for v in task.templated_values().values()]
            if task.when is not None:
                uses.append(templates.expression_referenced_results(task.when))
            for used in uses:
                if used is None:
                    self._needs[task_id] = None
                    return None
                found |= used
            self._needs[task_id] = frozenset(found)
        return self._needs[task_id]

    def apply_defaults(self, vars: Mapping[str, Any]) -> dict[str, Any]:
        """``vars`` plus each ``inputs.properties.<name>.default`` whose name is missing."""
        values = dict(vars)
        properties = (self.inputs or {}).get("properties")
        if isinstance(properties, Mapping):
            for name, schema in properties.items():
                if name not in values and isinstance(schema, Mapping) and "default" in schema:
                    values[name] = copy.deepcopy(schema["default"])
        return values

    def missing_connections(self, env: Mapping[str, str] | None = None) -> list[str]:
        """One line per ``sql`` task whose connection has no ``FLOWQ_CONN_<NAME>`` in ``env``."""
        found = os.environ if env is None else env
        lines = []
        for task in self.tasks:
            if isinstance(task, SqlTask):
                name = CONNECTION_ENV_PREFIX + task.connection.upper()
                if not found.get(name):
                    lines.append(
                        f"task {task.id!r}: sql connection {task.connection!r} is not "
                        f"configured: set {name} to its SQLAlchemy URL"
                    )
        return lines

    def check_connections(self, env: Mapping[str, str] | None = None, source: str = "") -> None:
        """Raise ValidationError naming each ``sql`` task whose connection ``env`` lacks."""
        lines = self.missing_connections(env)
        if lines:
            raise ValidationError([f"{source}: {line}" if source else line for line in lines])

    def validate_vars(self, vars: Mapping[str, Any]) -> None:
        """Raise ValidationError if ``vars`` fail ``inputs``: one line per problem, with a path."""
        if self.inputs is None:
            return
        if not isinstance(vars, Mapping):
            raise ValidationError(f"vars: must be a mapping (got {_shown(vars)})")
        errors = sorted(self._vars_validator.iter_errors(dict(vars)), key=lambda e: e.json_path)
        if errors:
            raise ValidationError([f"vars{e.json_path[1:]}: {_clip(e.message)}" for e in errors])


# -- files ------------------------------------------------------------------------------------

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]


class _Loader(_BaseLoader):
    """Safe YAML that keeps dates as strings and refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.MarkedYAMLError(
                        problem=f"duplicate key {key_node.value!r}",
                        problem_mark=key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _load(source: str) -> Any:
    """Parse a definition file; one-line ValidationError naming the file (and line) if it fails."""
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValidationError(f"{source}: cannot read: {reason}") from None
    if source.lower().endswith(".json"):
        try:
            return json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise ValidationError(f"{source}: {where}: invalid JSON: {exc.msg}") from None
        except ValueError as exc:
            raise ValidationError(f"{source}: invalid JSON: {exc}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationError(f"{source}: {where}invalid YAML: {_clip(str(problem))}") from None


def validate_file(path: str | os.PathLike[str]) -> list[str]:
    """Every problem of a definition file as one line each; ``[]`` when it is valid."""
    try:
        Workflow.from_file(path)
    except ValidationError as exc:
        return exc.problems
    return []
