"""Sandboxed templates and `when` conditions: what a task sees, and what it cannot reach."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flowq import templates
from flowq.errors import PermanentError
from flowq.templates import (
    evaluate,
    expression_problems,
    expression_referenced_results,
    referenced_results,
    render,
    template_problems,
)

CTX: dict[str, Any] = {
    "vars": {"order_id": 42, "name": "Ada", "price": 9.5, "flag": True, "tags": ["a", "b"]},
    "results": {
        "validate": {"total": 19.0, "items": [{"sku": "W-1"}]},
        "charge": {"status": 200, "body": {"status": "paid"}},
        "note": {"text": '<b>it\'s</b> "quoted"'},
    },
    "execution_id": "ex-1",
}


# -- render -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ vars.order_id }}", 42),
        ("{{ vars.price }}", 9.5),
        ("{{ vars.flag }}", True),
        ("{{ results.validate }}", {"total": 19.0, "items": [{"sku": "W-1"}]}),
        ("{{ vars.tags }}", ["a", "b"]),
        ("{{ vars.order_id + 1 }}", 43),
        ("{{- vars.order_id -}}", 42),
        ("{{ vars.name }}", "Ada"),
        ("{{ none }}", None),
    ],
)
def test_a_lone_expression_keeps_its_type(source: str, expected: Any) -> None:
    assert render(source, CTX) == expected


def test_strings_with_text_render_to_strings() -> None:
    assert render("order-{{ vars.order_id }}", CTX) == "order-42"
    assert render(" {{ vars.order_id }}", CTX) == " 42"
    assert render("{{ vars.order_id }}{{ vars.name }}", CTX) == "42Ada"
    assert render("{{ execution_id }}/x", CTX) == "ex-1/x"
    assert render("{% if vars.flag %}yes{% endif %}", CTX) == "yes"
    assert render("line\n{{ vars.name }}\n", CTX) == "line\nAda\n"  # trailing newline kept


def test_render_recurses_into_mappings_and_lists_and_keeps_other_values() -> None:
    value = {
        "id": "{{ vars.order_id }}",
        "lines": ["{{ results.validate.items[0].sku }}", 3, None, {"n": "{{ vars.price * 2 }}"}],
        "plain": "no template here",
        "ok": False,
    }
    assert render(value, CTX) == {
        "id": 42,
        "lines": ["W-1", 3, None, {"n": 19.0}],
        "plain": "no template here",
        "ok": False,
    }


def test_tojson_emits_plain_json_without_html_escaping() -> None:
    out = render("{{ results | tojson }}", CTX)
    assert json.loads(out) == CTX["results"]
    assert "<b>it's</b>" in out and "\\u003c" not in out and "&#39;" not in out
    assert render("{{ vars.tags | tojson }}", CTX) == '["a", "b"]'
    assert render('{"n": {{ vars.order_id | tojson }}}', CTX) == '{"n": 42}'


def test_undefined_variable_is_a_one_line_permanent_error() -> None:
    with pytest.raises(PermanentError) as info:
        render({"json": {"amount": "{{ vars.missing }}"}}, CTX, where="body")
    assert (
        str(info.value)
        == "template error in body.json.amount: 'dict object' has no attribute 'missing'"
    )


def test_undefined_errors_name_the_text_without_where() -> None:
    with pytest.raises(
        PermanentError, match=r"^template error in 'x {{ nope }}': 'nope' is undefined$"
    ):
        render("x {{ nope }}", CTX)
    with pytest.raises(PermanentError, match="is undefined"):
        render("{{ [nope] }}", CTX)  # an undefined inside a native value
    with pytest.raises(PermanentError, match="has no attribute 'missing'"):
        render("{{ results.skipped.missing | tojson }}", {**CTX, "results": {"skipped": {}}})


def test_runtime_and_syntax_errors_are_one_line() -> None:
    for source in ("{{ 1 / 0 }}", "{{ vars.name + 1 }}", "{{ vars.order_id", "{% for %}"):
        with pytest.raises(PermanentError) as info:
            render(source, CTX, where="url")
        message = str(info.value)
        assert message.startswith("template error in url: ") and "\n" not in message
        assert "Traceback" not in message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ vars.__class__.__init__.__globals__ }}",
        "{{ vars | attr('__class__') }}",
        "{{ self._TemplateReference__context }}",
        "{{ dict.mro() }}",
        "{{ range.__self__ }}",
        "{{ '{0.__class__}'.format(vars) }}",
        "{{ vars.tags.append(1) }}",
        "{{ vars.update({'x': 1}) }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ lipsum.__globals__['os'].popen('id').read() }}",
        "{{ config }}",
        "{% import 'os' as os %}{{ os }}",
        "{% include '/etc/passwd' %}",
        "{{ 2 ** 100000 }}",
        "{{ 'x' * 100000000 }}",
        "{{ range(10 ** 8) | list }}",
    ],
)
def test_sandbox_escapes_fail_cleanly(source: str) -> None:
    with pytest.raises(PermanentError) as info:
        render(source, CTX, where="body")
    assert str(info.value).startswith("template error in body: ")
    assert "\n" not in str(info.value)


def test_unsafe_attribute_message_says_why() -> None:
    with pytest.raises(PermanentError, match="access to attribute '__class__' of 'str'"):
        render("{{ ''.__class__.__mro__ }}", CTX)


def test_data_keys_win_over_dict_methods() -> None:
    data = {"results": {"r": {"items": [1, 2], "keys": "k", "get": 0}}}
    assert render("{{ results.r.items }}", data) == [1, 2]
    assert render("{{ results.r.keys }}-{{ results.r.get }}", data) == "k-0"
    assert render("{{ results.r.values() | list }}", data) == [[1, 2], "k", 0]


def test_compiled_templates_are_cached() -> None:
    source = "cache-{{ vars.order_id }}-probe"
    render(source, CTX)
    hits = templates._compiled.cache_info().hits
    assert render(source, CTX) == "cache-42-probe"
    assert templates._compiled.cache_info().hits == hits + 1


# -- when -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("results.charge.body.status == 'paid'", True),
        ("results.charge.body.status == 'refused'", False),
        ("vars.flag", True),
        ("vars.tags", True),
        ("vars.tags | length > 2", False),
        ("vars.order_id > 40 and vars.name == 'Ada'", True),
        ("'a' in vars.tags", True),
        ("{{ vars.order_id == 42 }}", True),  # Ansible-style braces are accepted
        # a skipped task has no result: every look into it is just false
        ("results.skipped.body.status == 'paid'", False),
        ("results.skipped", False),
        ("results.skipped.body.amount > 100", False),
        ("results.skipped.body.amount < 100", False),
        ("not results.skipped", True),
        ("'x' in results.skipped.tags", False),
        ("vars.missing", False),
    ],
)
def test_when_truthiness(expr: str, expected: bool) -> None:
    assert evaluate(expr, CTX) is expected


@pytest.mark.parametrize(
    "expr",
    ["''.__class__", "vars.__class__ == 1", "vars.tags.__len__()", "vars.tags.pop()"],
)
def test_when_refuses_unsafe_access(expr: str) -> None:
    with pytest.raises(PermanentError, match="unsafe"):
        evaluate(expr, CTX)


def test_when_errors_are_one_line_permanent_errors() -> None:
    with pytest.raises(PermanentError) as info:
        evaluate("vars.name + 1", CTX)
    assert str(info.value).startswith("template error in when 'vars.name + 1': TypeError:")
    with pytest.raises(PermanentError, match="template error in when"):
        evaluate("vars.order_id ==", CTX)


# -- static checks ----------------------------------------------------------------------------


def test_template_problems_name_each_broken_string() -> None:
    value = {"ok": "{{ vars.a }}", "bad": ["fine", "{{ vars.a }"], "worse": "{% if %}"}
    assert template_problems(value, "json") == [
        "json.bad[1]: template does not parse: unexpected '}'",
        "json.worse: template does not parse: Expected an expression, got 'end of statement block'",
    ]
    assert template_problems("no template", "url") == []
    assert template_problems(42) == []


def test_template_problems_catch_what_would_always_fail() -> None:
    assert template_problems("{{ vars.a | tojsn }}") == ["unknown filter 'tojsn'"]
    assert template_problems("{% if vars.a is evn %}x{% endif %}") == ["unknown test 'evn'"]
    assert template_problems("{{ resuls.a }}") == [
        "unknown name 'resuls' (known: vars, results, execution_id)"
    ]
    assert template_problems("{% include 'x.html' %}") == [
        "templates cannot include, import or extend other templates"
    ]
    # names the template itself defines are fine
    ok = "{% for t in vars.tags %}{{ loop.index }}{{ t }}{% endfor %}{% set n = 1 %}{{ n }}"
    assert template_problems(ok) == []


def test_expression_problems() -> None:
    assert expression_problems("results.a.ok == true") == []
    assert expression_problems("results.a.ok ==") == [
        "does not parse: unexpected 'end of template'"
    ]
    assert expression_problems("results.a.ok results") == [
        "does not parse: unexpected text after the expression"
    ]
    assert expression_problems("reslts.a") == [
        "unknown name 'reslts' (known: vars, results, execution_id)"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{ vars.a }}", frozenset()),
        ("{{ results.a.total }} and {{ results['b'] }}", frozenset({"a", "b"})),
        ({"x": ["{{ results.a }}"], "y": "{{ results.c.d + 1 }}"}, frozenset({"a", "c"})),
        ("{% if results.a.ok %}{{ results.b }}{% endif %}", frozenset({"a", "b"})),
        ("{{ results | tojson }}", None),
        ("{{ results }}", None),
        ("{{ results[vars.which] }}", None),
        ("{{ results.get('a') }}", None),
        ("{% for k in results %}{{ k }}{% endfor %}", None),
        (["{{ results.a }}", "{{ results | tojson }}"], None),
        ("plain", frozenset()),
    ],
)
def test_referenced_results(value: Any, expected: frozenset[str] | None) -> None:
    assert referenced_results(value) == expected


def test_expression_referenced_results() -> None:
    assert expression_referenced_results("results.charge.body.status == 'paid'") == frozenset(
        {"charge"}
    )
    assert expression_referenced_results("results['a'] and results.b.x") == frozenset({"a", "b"})
    assert expression_referenced_results("vars.x") == frozenset()
    assert expression_referenced_results("results | length > 1") is None
