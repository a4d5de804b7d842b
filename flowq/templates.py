"""Sandboxed Jinja2: render task templates, evaluate ``when`` conditions, check both statically.

Templates see ``vars``, ``results``, ``execution_id`` and the ``tojson`` filter, and nothing of
Python beyond the sandbox. A string that is exactly one ``{{ expression }}`` keeps its type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from jinja2 import ChainableUndefined, StrictUndefined, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flowq.errors import PermanentError

NAMES: Final = ("vars", "results", "execution_id")
_GLOBALS: Final = ("range", "dict", "namespace")
_LOCALS: Final = frozenset({"loop", "caller", "varargs", "kwargs", "self"})
_SINGLE: Final = re.compile(r"\A\{\{[-+]?(.*?)[-+]?\}\}\Z", re.DOTALL)
_DOTTED: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_PIECE: Final = re.compile(rf"\{{\{{ *({_DOTTED.pattern}) *\}}\}}")
_SIMPLE: Final = re.compile(rf"[^{{}}]*(?:{_PIECE.pattern}[^{{}}]*)*")
_MAX_REPEAT: Final = 1_000_000
_MAX_EXPONENT: Final = 1_000


class _Sandbox(ImmutableSandboxedEnvironment):
    """Fails at once on unsafe attributes (not a falsy undefined) and caps runaway arithmetic."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        """Refuse access to internals such as ``__class__`` or ``_private``."""
        kind = type(obj).__name__
        raise SecurityError(f"access to attribute {attribute!r} of {kind!r} object is unsafe")

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``results.x.items`` is the data's key ``items`` when it has one, not ``dict.items``."""
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Refuse ``**`` and sequence repetition that would eat the worker's memory or CPU."""
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large (at most {_MAX_EXPONENT})")
        if operator == "*":
            sizes = [len(x) for x in (left, right) if isinstance(x, str | list | tuple)]
            counts = [x for x in (left, right) if isinstance(x, int)]
            if sizes and counts and sizes[0] * counts[0] > _MAX_REPEAT:
                raise SecurityError(f"repetition longer than {_MAX_REPEAT} items")
        return super().call_binop(context, operator, left, right)


class _Missing(ChainableUndefined):
    """Undefined in ``when``: a missing value or attribute chain is falsy and compares false."""

    __slots__ = ()

    def _false(self, other: Any) -> bool:
        return False

    __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]


def _json_default(value: Any) -> Any:
    if isinstance(value, Undefined):
        str(value)  # a strict undefined raises UndefinedError here
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _tojson(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """Plain ``json.dumps`` (Jinja's own ``tojson`` escapes HTML)."""
    return json.dumps(value, indent=indent, sort_keys=sort_keys, default=_json_default)


def _environment(undefined: type[Undefined]) -> _Sandbox:
    env = _Sandbox(undefined=undefined, autoescape=False, keep_trailing_newline=True)
    env.globals = {name: env.globals[name] for name in _GLOBALS}
    env.filters["tojson"] = _tojson
    return env


_RENDER: Final = _environment(StrictUndefined)
_WHEN: Final = _environment(_Missing)

# -- running ----------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not type(exc).__module__.startswith("jinja2"):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


def _check_defined(value: Any) -> Any:
    if isinstance(value, Undefined):
        str(value)  # raises UndefinedError with Jinja's message
    elif isinstance(value, dict):
        for item in value.values():
            _check_defined(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_defined(item)
    return value


def _single_expression(source: str) -> str | None:
    """The expression of a string that is exactly one ``{{ expression }}``, else None."""
    match = _SINGLE.match(source)
    if match is None:
        return None
    body = _RENDER.parse(source).body
    node = body[0] if len(body) == 1 else None
    if isinstance(node, nodes.Output) and len(node.nodes) == 1:
        return None if isinstance(node.nodes[0], nodes.TemplateData) else match.group(1)
    return None


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Callable[[Mapping[str, Any]], Any]:
    expression = _single_expression(source)
    if expression is not None:
        evaluate_native = _RENDER.compile_expression(expression, undefined_to_none=False)
        return lambda context: _check_defined(evaluate_native(context))
    template = _RENDER.from_string(source)
    return template.render


def _unwrap(expr: str) -> str:
    """``when: "{{ x }}"`` means ``when: "x"``, as in Ansible."""
    match = _SINGLE.match(expr.strip())
    if match is not None and "{{" not in match.group(1) and "}}" not in match.group(1):
        return match.group(1)
    return expr


@lru_cache(maxsize=4096)
def _condition(expr: str) -> Callable[[Mapping[str, Any]], Any]:
    return _WHEN.compile_expression(_unwrap(expr), undefined_to_none=False)


def render(value: Any, context: Mapping[str, Any], *, where: str | None = None) -> Any:
    """Render every string inside ``value``; raise PermanentError with one line on any error.

    ``where`` (e.g. ``"json"``) names the value in errors; without it the failing text does.
    """
    if isinstance(value, str):
        if not _is_template(value):
            return value
        try:
            return _compiled(value)(context)
        except Exception as exc:
            place = where or _snippet(value)
            raise PermanentError(f"template error in {place}: {_one_line(exc)}") from exc
    if isinstance(value, Mapping):
        return {k: render(v, context, where=_child(where, k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v, context, where=_child(where, i)) for i, v in enumerate(value)]
    return value


def _child(where: str | None, key: Any) -> str | None:
    if where is None:
        return None
    return f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= 60 else text[:57] + "...")


def evaluate(expr: str, context: Mapping[str, Any], *, where: str = "when") -> bool:
    """Truth of a ``when`` expression; missing values are false, unsafe access raises."""
    try:
        return bool(_condition(expr)(context))
    except Exception as exc:
        raise PermanentError(
            f"template error in {where} {_snippet(expr)}: {_one_line(exc)}"
        ) from exc


# -- static checks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    """What a static look at one template or expression found."""

    problems: tuple[str, ...]
    results: frozenset[str] | None


def _syntax(exc: TemplateSyntaxError, source: str) -> str:
    where = f" (line {exc.lineno})" if "\n" in source.strip() else ""
    return f"does not parse: {' '.join(str(exc.message or exc).split())}{where}"


def _results_key(parent: nodes.Node | None, grand: nodes.Node | None) -> str | None:
    """X when ``results`` (the child of ``parent``) is used as ``results.X`` or ``results['X']``."""
    if isinstance(grand, nodes.Call) and grand.node is parent:
        return None  # results.get(...), results.items(): the whole mapping
    if isinstance(parent, nodes.Getattr):
        return parent.attr
    if isinstance(parent, nodes.Getitem) and isinstance(parent.arg, nodes.Const):
        return parent.arg.value if isinstance(parent.arg.value, str) else None
    return None


def _analyse(tree: nodes.Node, env: _Sandbox) -> _Facts:
    """One walk over a parsed template: forbidden tags, unknown names/filters, results used."""
    problems: dict[str, None] = {}
    loaded: dict[str, None] = {}
    stored: set[str] = set(_LOCALS)
    used: set[str] | None = set()
    stack: list[tuple[nodes.Node, nodes.Node | None, nodes.Node | None]] = [(tree, None, None)]
    while stack:
        node, parent, grand = stack.pop()
        if isinstance(node, nodes.Name):
            if node.ctx != "load":
                stored.add(node.name)
            elif node.name == "results" and used is not None:
                key = _results_key(parent, grand)
                used = None if key is None else used | {key}
            loaded.setdefault(node.name)
        elif isinstance(node, nodes.Macro):
            stored.add(node.name)
        elif isinstance(node, nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends):
            problems.setdefault("templates cannot include, import or extend other templates")
        elif isinstance(node, nodes.Filter) and node.name not in env.filters:
            problems.setdefault(f"unknown filter {node.name!r}")
        elif isinstance(node, nodes.Test) and node.name not in env.tests:
            problems.setdefault(f"unknown test {node.name!r}")
        children = list(node.iter_child_nodes())
        stack.extend((child, node, parent) for child in reversed(children))
    known = stored | set(NAMES) | set(env.globals)
    for name in loaded:
        if name not in known:
            problems.setdefault(_unknown_name(name))
    return _Facts(tuple(problems), None if used is None else frozenset(used))


def _unknown_name(name: str) -> str:
    return f"unknown name {name!r} (known: {', '.join(NAMES)})"


def _path_facts(paths: Iterable[str]) -> _Facts | None:
    """Facts of ``{{ dotted.path }}`` pieces without parsing; None if a path needs the parser."""
    used: set[str] = set()
    for path in paths:
        first, _, rest = path.partition(".")
        if first not in NAMES:
            return None  # a global, a constant such as true, or an unknown name
        if first == "results":
            if not rest:
                return _Facts((), None)
            used.add(rest.partition(".")[0])
    return _Facts((), frozenset(used))


@lru_cache(maxsize=65536)
def _template_facts(source: str) -> _Facts:
    quick = (
        _path_facts(m[1] for m in _PIECE.finditer(source)) if _SIMPLE.fullmatch(source) else None
    )
    if quick is not None:
        return quick
    try:
        tree = nodes.Template(Parser(_RENDER, source).subparse(), lineno=1)
    except TemplateSyntaxError as exc:
        return _Facts((f"template {_syntax(exc, source)}",), frozenset())
    return _analyse(tree, _RENDER)


@lru_cache(maxsize=65536)
def _expression_facts(expr: str) -> _Facts:
    source = _unwrap(expr)
    quick = _path_facts([source.strip()]) if _DOTTED.fullmatch(source.strip()) else None
    if quick is not None:
        return quick
    try:
        parser = Parser(_WHEN, source, state="variable")
        tree = nodes.Template([nodes.Output([parser.parse_expression()])])
        if not parser.stream.eos:
            parser.fail("unexpected text after the expression", parser.stream.current.lineno)
    except TemplateSyntaxError as exc:
        return _Facts((_syntax(exc, source),), frozenset())
    return _analyse(tree, _WHEN)


def template_strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(path, text) of every template string in ``value``, e.g. ``("json.amount", "{{ x }}")``."""
    if isinstance(value, str):
        if _is_template(value):
            yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from template_strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from template_strings(item, f"{where}[{i}]")


def template_problems(value: Any, where: str = "") -> list[str]:
    """One line per template string inside ``value`` that does not parse or cannot work."""
    return [
        f"{path}: {problem}" if path else problem
        for path, text in template_strings(value, where)
        for problem in _template_facts(text).problems
    ]


def expression_problems(expr: str) -> list[str]:
    """One line per problem of a ``when`` expression (parse error, unknown name or filter)."""
    return list(_expression_facts(expr).problems)


def referenced_results(value: Any) -> frozenset[str] | None:
    """Task ids used as ``results.X`` in the templates inside ``value``; None if used whole."""
    found: set[str] = set()
    for _, text in template_strings(value, ""):
        used = _template_facts(text).results
        if used is None:
            return None
        found |= used
    return frozenset(found)


def expression_referenced_results(expr: str) -> frozenset[str] | None:
    """Task ids used as ``results.X`` in a ``when`` expression; None if used whole."""
    return _expression_facts(expr).results
