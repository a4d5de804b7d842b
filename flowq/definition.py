"""Workflow definitions: the ``Workflow`` model, loading YAML/JSON, and ``flowq validate``.

Every problem is one line, ``"<source>: task '<id>': <reason>"`` or ``"<source>: <reason>"``
(``flowq.problems``); the keys of each task type are in ``flowq.task_types``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Hashable, Mapping
from contextvars import ContextVar
from functools import cached_property
from typing import Annotated, Any

import yaml
from jsonschema import Draft202012Validator
from pydantic import Field
from pydantic import ValidationError as PydanticError

from flowq import graph, templates
from flowq.errors import NotFound, ValidationError
from flowq.problems import Checker, clip
from flowq.task_types import (
    CONNECTION_ENV_PREFIX,
    DEFAULTABLE,
    FILE_OPERATIONS,
    HTTP_METHODS,
    MAX_BROKER_WAIT,
    TASK_TYPES,
    TRIGGER_RULES,
    FileTask,
    HttpTask,
    PythonTask,
    SqlTask,
    Strict,
    Task,
    TaskBase,
    WorkflowId,
    shown,
)

__all__ = [
    "CONNECTION_ENV_PREFIX",
    "DEFAULTABLE",
    "FILE_OPERATIONS",
    "HTTP_METHODS",
    "MAX_BROKER_WAIT",
    "TASK_TYPES",
    "TRIGGER_RULES",
    "FileTask",
    "HttpTask",
    "PythonTask",
    "SqlTask",
    "Task",
    "TaskBase",
    "Workflow",
    "validate_file",
]

_SOURCE: ContextVar[str] = ContextVar("flowq_definition_source", default="<python>")


# -- the workflow -----------------------------------------------------------------------------


class Workflow(Strict):
    """A validated workflow definition; building one raises flowq's ValidationError."""

    id: WorkflowId
    name: str | None = None
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1  # the store's column is 32-bit
    inputs: dict[str, Any] | None = None
    defaults: dict[str, Any] = {}
    tasks: Annotated[list[Task], Field(min_length=1)]

    def __init__(self, **data: Any) -> None:
        checker = Checker(_SOURCE.get(), type(self).model_fields)
        checker.characters(data)
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
            got = "nothing" if data is None else shown(data)
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
            raise ValidationError(f"vars: must be a mapping (got {shown(vars)})")
        try:
            errors = sorted(self._vars_validator.iter_errors(dict(vars)), key=lambda e: e.json_path)
        except Exception as exc:  # a $ref or pattern that `flowq validate` of an older flowq let by
            raise ValidationError(f"inputs: cannot check vars: {clip(str(exc))}") from None
        if errors:
            raise ValidationError([f"vars{e.json_path[1:]}: {clip(e.message)}" for e in errors])


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


def load_data(text: str) -> Any:
    """Parse YAML (or JSON) data as definitions are parsed: safe, dates kept as strings, a key
    given twice refused. Raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader


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
        raise ValidationError(f"{source}: {where}invalid YAML: {clip(str(problem))}") from None


def validate_file(path: str | os.PathLike[str]) -> list[str]:
    """Every problem of a definition file as one line each; ``[]`` when it is valid."""
    try:
        Workflow.from_file(path)
    except ValidationError as exc:
        return exc.problems
    return []
