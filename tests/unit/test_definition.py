"""Workflow definitions: loading, every rejection of `flowq validate`, and the model's queries."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowq.definition import (
    FILE_OPERATIONS,
    TRIGGER_RULES,
    FileTask,
    HttpTask,
    PythonTask,
    SqlTask,
    Workflow,
    validate_file,
)
from flowq.errors import NotFound, ValidationError

ORDER_PROCESSING = """\
id: order_processing            # [A-Za-z0-9_.-]+
name: Order processing          # optional, free text
version: 1                      # integer >= 1; versions of one id live side by side
inputs:                         # optional JSON Schema that `vars` must satisfy at start
  type: object
  required: [order_id, sku, quantity]
defaults:                       # optional; applies to every task that does not set the key
  retries: 3
  timeout: 30
tasks:
  - id: validate_order
    type: python
    handler: examples.orders:validate_order
  - id: charge
    type: http
    depends_on: [validate_order]
    method: POST
    url: "{{ vars.payment_url }}/charge"
    json: {order_id: "{{ vars.order_id }}", amount: "{{ results.validate_order.total }}"}
    priority: 8
  - id: reserve_stock
    type: sql
    depends_on: [validate_order]
    connection: shop
    query: "UPDATE inventory SET qty = qty - :q WHERE sku = :sku AND qty >= :q"
    params: {q: "{{ vars.quantity }}", sku: "{{ vars.sku }}"}
    expect_rowcount: 1
  - id: write_receipt
    type: file
    depends_on: [charge, reserve_stock]
    operation: write
    path: "receipts/{{ vars.order_id }}.json"
    content: "{{ results | tojson }}"
  - id: notify
    type: http
    depends_on: [write_receipt]
    when: "results.charge.body.status == 'paid'"
    method: POST
    url: "{{ vars.notify_url }}"
"""


def write(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, tasks_yaml: str, head: str = "id: wf\n") -> tuple[str, list[str]]:
    """Validate a definition made of ``head`` and an indented ``tasks:`` block."""
    path = write(tmp_path, head + "tasks:\n" + textwrap.indent(textwrap.dedent(tasks_yaml), "  "))
    return str(path), validate_file(path)


def py(ident: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"id": ident, "type": "python", "handler": "m:f", "depends_on": list(deps), **extra}


# -- valid definitions ------------------------------------------------------------------------


def test_spec_example_validates(tmp_path: Path) -> None:
    path = write(tmp_path, ORDER_PROCESSING, "order.yaml")
    assert validate_file(path) == []
    wf = Workflow.from_file(path)
    assert wf.id == "order_processing" and wf.name == "Order processing" and wf.version == 1
    assert wf.task_ids == ["validate_order", "charge", "reserve_stock", "write_receipt", "notify"]
    charge = wf.task("charge")
    assert isinstance(charge, HttpTask)
    assert charge.method == "POST" and charge.priority == 8
    assert charge.json_ == {
        "order_id": "{{ vars.order_id }}",
        "amount": "{{ results.validate_order.total }}",
    }
    assert isinstance(wf.task("validate_order"), PythonTask)
    assert isinstance(wf.task("reserve_stock"), SqlTask)
    assert isinstance(wf.task("write_receipt"), FileTask)


def test_json_file_loads_like_yaml(tmp_path: Path) -> None:
    data = yaml.safe_load(ORDER_PROCESSING)
    from_json = Workflow.from_file(write(tmp_path, json.dumps(data), "order.json"))
    from_yaml = Workflow.from_file(write(tmp_path, ORDER_PROCESSING, "order.yml"))
    assert from_json == from_yaml
    assert from_json.digest() == from_yaml.digest()


def test_task_defaults_from_spec() -> None:
    wf = Workflow(id="w", tasks=[py("a")])
    task = wf.task("a")
    assert (task.name, task.depends_on, task.when, task.trigger_rule) == (
        None,
        [],
        None,
        "all_success",
    )
    assert (task.retries, task.retry_backoff, task.retry_backoff_max, task.retry_jitter) == (
        0,
        1,
        60,
        True,
    )
    assert (task.timeout, task.priority, task.queue) == (None, None, "flowq")
    assert task.display_name == "a" and wf.version == 1


def test_workflow_defaults_apply_to_tasks_that_do_not_set_the_key(tmp_path: Path) -> None:
    wf = Workflow.from_file(write(tmp_path, ORDER_PROCESSING))
    assert [wf.task(t).retries for t in wf.task_ids] == [3, 3, 3, 3, 3]
    assert wf.task("charge").timeout == 30 and wf.task("charge").priority == 8
    wf = Workflow(
        id="w",
        defaults={"retries": 2, "queue": "slow", "trigger_rule": "all_done", "priority": 1},
        tasks=[py("a"), py("b", "a", retries=0, queue="fast", priority=None)],
    )
    a, b = wf.task("a"), wf.task("b")
    assert (a.retries, a.queue, a.trigger_rule, a.priority) == (2, "slow", "all_done", 1)
    assert (b.retries, b.queue, b.trigger_rule, b.priority) == (0, "fast", "all_done", None)


def test_build_in_python_and_with_task_models() -> None:
    wf = Workflow(
        id="built.in-python_1",
        tasks=[
            PythonTask(id="a", type="python", handler="pkg.mod:run", params={"x": 1}),
            {"id": "b", "type": "http", "url": "https://x/{{ results.a.id }}", "depends_on": ["a"]},
        ],
        defaults={"retries": 4},
    )
    assert wf.task("a").retries == 4  # defaults also reach task models that did not set the key
    http = wf.task("b")
    assert isinstance(http, HttpTask) and http.method == "GET"
    assert http.spec()["url"] == "https://x/{{ results.a.id }}"


def test_python_build_errors_are_flowq_validation_errors() -> None:
    with pytest.raises(ValidationError) as info:
        Workflow(id="w", tasks=[py("a", retries=-1)])
    assert info.value.problems == ["<python>: task 'a': retries: must be >= 0 (got -1)"]
    with pytest.raises(ValidationError, match="missing required key 'tasks'"):
        Workflow(id="w")


def test_round_trip_through_to_dict(tmp_path: Path) -> None:
    wf = Workflow.from_file(write(tmp_path, ORDER_PROCESSING))
    data = wf.to_dict()
    assert json.loads(json.dumps(data)) == data
    again = Workflow.from_dict(data)
    assert again == wf and again.to_dict() == data and again.digest() == wf.digest()
    charge = data["tasks"][1]
    assert (
        charge["json"]["amount"] == "{{ results.validate_order.total }}" and "json_" not in charge
    )


def test_explicit_null_overriding_a_default_survives_the_round_trip() -> None:
    wf = Workflow(id="w", defaults={"timeout": 5}, tasks=[py("a"), py("b", timeout=None)])
    assert (wf.task("a").timeout, wf.task("b").timeout) == (5, None)
    again = Workflow.from_dict(wf.to_dict())
    assert again.task("b").timeout is None and again == wf


def test_spec_has_user_keys_and_no_none_values() -> None:
    wf = Workflow(id="w", tasks=[{"id": "h", "type": "http", "url": "u", "json": {"k": None}}])
    spec = wf.task("h").spec()
    assert spec["json"] == {"k": None}  # None inside a payload is data, kept
    assert "body" not in spec and "timeout" not in spec and "json_" not in spec
    assert wf.task("h").TEMPLATED == ("url", "headers", "json", "body", "params")
    assert wf.task("h").templated_values() == {"url": "u", "json": {"k": None}}


def test_digest_is_stable_and_changes_with_any_field(tmp_path: Path) -> None:
    first = Workflow.from_file(write(tmp_path, ORDER_PROCESSING))
    second = Workflow.from_file(write(tmp_path, ORDER_PROCESSING, "copy.yaml"))
    assert first.digest() == second.digest()
    assert len(first.digest()) == 64 and int(first.digest(), 16) >= 0
    data = first.to_dict()
    data["tasks"][1]["priority"] = 7
    assert Workflow.from_dict(data).digest() != first.digest()
    data = first.to_dict()
    data["version"] = 2
    assert Workflow.from_dict(data).digest() != first.digest()


def test_graph_queries() -> None:
    wf = Workflow(id="w", tasks=[py("a"), py("b", "a"), py("c", "a"), py("d", "b", "c"), py("e")])
    assert wf.roots() == ("a", "e")
    assert wf.deps("d") == ("b", "c")
    assert wf.successors("a") == ("b", "c")
    assert wf.successors("d") == ()
    with pytest.raises(NotFound, match="workflow 'w' has no task 'zz'"):
        wf.task("zz")
    with pytest.raises(NotFound):
        wf.successors("zz")


def test_results_needed(tmp_path: Path) -> None:
    wf = Workflow.from_file(write(tmp_path, ORDER_PROCESSING))
    assert wf.results_needed("validate_order") == frozenset()
    assert wf.results_needed("charge") == frozenset({"validate_order"})
    assert wf.results_needed("reserve_stock") == frozenset()
    assert wf.results_needed("write_receipt") is None  # `results | tojson` uses them all
    assert wf.results_needed("notify") == frozenset({"charge"})  # from `when`
    wf = Workflow(
        id="w",
        tasks=[
            py("a"),
            py("b", "a"),
            py("c", "b", params={"x": "{{ results['a'].v }}"}, when="results.b.ok"),
        ],
    )
    assert wf.results_needed("c") == frozenset({"a", "b"})


def test_validate_vars_reports_each_problem_with_its_path() -> None:
    schema = {
        "type": "object",
        "required": ["order_id", "sku"],
        "properties": {
            "order_id": {"type": "integer"},
            "sku": {"type": "string"},
            "lines": {
                "type": "array",
                "items": {"type": "object", "properties": {"qty": {"minimum": 1}}},
            },
        },
    }
    wf = Workflow(id="w", inputs=schema, tasks=[py("a")])
    wf.validate_vars({"order_id": 1, "sku": "x"})
    with pytest.raises(ValidationError) as info:
        wf.validate_vars({"order_id": "one", "lines": [{"qty": 0}]})
    assert info.value.problems == [
        "vars: 'sku' is a required property",
        "vars.lines[0].qty: 0 is less than the minimum of 1",
        "vars.order_id: 'one' is not of type 'integer'",
    ]
    Workflow(id="w", tasks=[py("a")]).validate_vars({"anything": 1})  # no inputs: no check


# -- what `flowq validate` rejects --------------------------------------------------------------


def test_duplicate_task_ids(tmp_path: Path) -> None:
    src, problems = problems_of(tmp_path, "- {id: a, type: python, handler: 'm:f'}\n" * 2)
    assert problems == [f"{src}: task 'a': duplicate id (already used by task #1)"]


def test_depends_on_unknown_task(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        """
        - {id: a, type: python, handler: 'm:f'}
        - {id: b, type: python, handler: 'm:f', depends_on: [a, zz]}
        """,
    )
    assert problems == [f"{src}: task 'b': depends_on names unknown task 'zz'"]


def test_cycle_names_one_cycle(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        """
        - {id: a, type: python, handler: 'm:f', depends_on: [c]}
        - {id: b, type: python, handler: 'm:f', depends_on: [a]}
        - {id: c, type: python, handler: 'm:f', depends_on: [b]}
        - {id: d, type: python, handler: 'm:f', depends_on: [c]}
        """,
    )
    assert problems == [f"{src}: cycle: a -> b -> c -> a"]


def test_when_that_does_not_parse(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path, "- {id: a, type: python, handler: 'm:f', when: \"vars.x ==\"}\n"
    )
    assert problems == [f"{src}: task 'a': when: does not parse: unexpected 'end of template'"]


def test_template_that_does_not_parse(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        """
        - id: call
          type: http
          url: "{{ vars.base }/x"
          json: {amount: "{% if %}"}
        """,
    )
    assert problems == [
        f"{src}: task 'call': url: template does not parse: unexpected '}}'",
        f"{src}: task 'call': json.amount: template does not parse: "
        "Expected an expression, got 'end of statement block'",
    ]


def test_template_or_when_naming_a_result_that_is_not_an_ancestor(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        """
        - {id: a, type: python, handler: 'm:f'}
        - {id: b, type: python, handler: 'm:f', depends_on: [a]}
        - {id: side, type: python, handler: 'm:f', depends_on: [a]}
        - id: c
          type: file
          operation: write
          depends_on: [b]
          path: "{{ results.a.dir }}/{{ results['side'].name }}"
          content: "{{ results.ghost }}"
          when: "results.c.done"
        """,
    )
    assert problems == [
        f"{src}: task 'c': path: uses results.side but 'side' is not upstream of 'c' "
        "(add it to depends_on)",
        f"{src}: task 'c': content: uses results.ghost but there is no task 'ghost'",
        f"{src}: task 'c': when: uses results.c but 'c' is not upstream of 'c' "
        "(add it to depends_on)",
    ]


def test_unknown_type(tmp_path: Path) -> None:
    src, problems = problems_of(tmp_path, "- {id: run, type: shell, command: ls}\n")
    assert problems == [
        f"{src}: task 'run': unknown type 'shell' (expected python, http, sql, file)"
    ]


def test_unknown_operation(tmp_path: Path) -> None:
    src, problems = problems_of(tmp_path, "- {id: f, type: file, operation: zap, path: x}\n")
    assert problems == [
        f"{src}: task 'f': unknown operation 'zap' (expected {', '.join(FILE_OPERATIONS)})"
    ]


def test_unknown_trigger_rule(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path, "- {id: a, type: python, handler: 'm:f', trigger_rule: any}\n"
    )
    assert problems == [
        f"{src}: task 'a': unknown trigger_rule 'any' (expected {', '.join(TRIGGER_RULES)})"
    ]


def test_unknown_keys_in_task_workflow_and_defaults(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        "- {id: charge, type: http, url: 'http://x', metod: POST}\n",
        head="id: wf\ntask: 1\ndefaults: {retires: 2, url: x}\n",
    )
    assert problems == [
        f"{src}: defaults: unknown key 'retires' (did you mean 'retries'?)",
        f"{src}: defaults: unknown key 'url'",
        f"{src}: unknown key 'task' (did you mean 'tasks'?)",
        f"{src}: task 'charge': unknown key 'metod' (did you mean 'method'?)",
    ]


def test_values_of_the_wrong_type(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        """
        - id: a
          type: python
          handler: m:f
          retries: "3"
          retry_jitter: maybe
          depends_on: a
          params: [1]
        - id: h
          type: http
          url: http://x
          headers: {X-Count: 5}
          expect_status: [ok]
        - 7
        """,
        head="id: wf\nversion: one\n",
    )
    assert problems == [
        f'{src}: version: must be an integer (got "one")',
        f"{src}: task 'a': depends_on: must be a list (got \"a\")",
        f"{src}: task 'a': retries: must be an integer (got \"3\")",
        f"{src}: task 'a': retry_jitter: must be true or false (got \"maybe\")",
        f"{src}: task 'a': params: must be a mapping (got a list)",
        f"{src}: task 'h': headers.X-Count: must be a string (got 5)",
        f"{src}: task 'h': expect_status[0]: must be an integer (got \"ok\")",
        f"{src}: task #3: must be a mapping (got 7)",
    ]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("retries", "-1", "retries: must be >= 0 (got -1)"),
        ("priority", "10", "priority: must be <= 9 (got 10)"),
        ("priority", "-1", "priority: must be >= 0 (got -1)"),
        ("timeout", "0", "timeout: must be > 0 (got 0)"),
        ("retry_backoff", "-0.5", "retry_backoff: must be >= 0 (got -0.5)"),
        ("retry_backoff_max", "-1", "retry_backoff_max: must be >= 0 (got -1)"),
        ("queue", "''", "queue: must not be empty"),
    ],
)
def test_task_values_out_of_range(tmp_path: Path, key: str, value: str, reason: str) -> None:
    src, problems = problems_of(
        tmp_path, f"- {{id: a, type: python, handler: 'm:f', {key}: {value}}}\n"
    )
    assert problems == [f"{src}: task 'a': {reason}"]


def test_workflow_values_out_of_range(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        "- {id: 'bad id', type: python, handler: 'm:f'}\n",
        head="id: 'order processing'\nversion: 0\ndefaults: {priority: 12}\n",
    )
    assert problems == [
        f"{src}: defaults: priority: must be <= 9 (got 12)",
        f'{src}: id: must match [A-Za-z0-9_.-]+ (got "order processing")',
        f"{src}: version: must be >= 1 (got 0)",
        f"{src}: task 'bad id': id: must match [A-Za-z0-9_-]+ (got \"bad id\")",
    ]


@pytest.mark.parametrize(
    "handler", ["validate_order", "examples.orders", "a b:c", "m:f.g", ":f", "m:"]
)
def test_python_handler_must_be_module_colon_function(tmp_path: Path, handler: str) -> None:
    src, problems = problems_of(tmp_path, f"- {{id: a, type: python, handler: '{handler}'}}\n")
    assert problems == [
        f"{src}: task 'a': handler: must match 'module.path:function' (got {json.dumps(handler)})"
    ]


def test_inputs_must_be_valid_json_schema(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        "- {id: a, type: python, handler: 'm:f'}\n",
        head="id: wf\ninputs: {type: objekt, required: order_id}\n",
    )
    assert problems == [
        f"{src}: inputs.required: not valid JSON Schema: 'order_id' is not of type 'array'",
        f"{src}: inputs.type: not valid JSON Schema: "
        "'objekt' is not valid under any of the given schemas",
    ]


def test_inputs_must_be_usable_patterns_compile_and_refs_resolve(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "$defs": {"sku": {"type": "string"}},
        "properties": {
            "sku": {"$ref": "#/$defs/sku"},  # resolves
            "enum": {"$ref": "#/$defs/nothing"},  # a property named like a keyword
            "tags": {"type": "array", "items": {"$ref": "other.json"}},  # nothing is fetched
            "colour": {"enum": [{"$ref": "#/nowhere"}]},  # data, not a reference
        },
        "x-meta": {"$ref": "#/nowhere"},  # an unknown keyword: not a schema either
    }
    src, problems = problems_of(
        tmp_path,
        "- {id: a, type: python, handler: 'm:f'}\n",
        head=f"id: wf\ninputs: {json.dumps(schema)}\n",
    )
    assert problems == [
        f"{src}: inputs.properties.enum.$ref: cannot resolve '#/$defs/nothing' within the schema",
        f"{src}: inputs.properties.tags.items.$ref: cannot resolve 'other.json' within the schema",
    ]
    bad_patterns = {"properties": {"code": {"pattern": "[a-"}}, "patternProperties": {"(": {}}}
    src, problems = problems_of(
        tmp_path,
        "- {id: a, type: python, handler: 'm:f'}\n",
        head=f"id: wf\ninputs: {json.dumps(bad_patterns)}\n",
    )
    assert problems == [
        f"{src}: inputs.patternProperties: not valid JSON Schema: '(' is not a 'regex'",
        f"{src}: inputs.properties.code.pattern: not valid JSON Schema: '[a-' is not a 'regex'",
    ]
    scoped = {
        "$id": "https://example.com/order",
        "$defs": {"n": {"type": "integer"}},
        "properties": {"n": {"$ref": "#/$defs/n"}, "m": {"$ref": "order#/$defs/n"}},
    }
    Workflow(id="w", inputs=scoped, tasks=[py("a")]).validate_vars({"n": 1, "m": 2})


def test_a_definition_the_store_cannot_hold_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        Workflow.from_dict(
            {
                "id": "w",
                "name": "a\x00",
                "tasks": [py("a", params={"ratio": float("nan"), "k\x00": 1, "l": [float("inf")]})],
            }
        )
    assert info.value.problems == [
        "<python>: name: holds the character U+0000, which cannot be stored",
        "<python>: tasks[0].params.ratio: nan is not a JSON number",
        "<python>: tasks[0].params: a key holds the character U+0000, which cannot be stored",
        "<python>: tasks[0].params.l[0]: inf is not a JSON number",
    ]


def test_vars_against_an_unusable_schema_are_a_one_line_problem() -> None:
    """A definition stored by an older flowq, whose validate let such a schema by."""
    wf = Workflow.model_construct(id="w", inputs={"$ref": "#/$defs/missing"}, tasks=[])
    with pytest.raises(ValidationError) as info:
        wf.validate_vars({})
    (line,) = info.value.problems
    assert line.startswith("inputs: cannot check vars: ") and "/$defs/missing" in line


def test_when_may_be_a_yaml_boolean(tmp_path: Path) -> None:
    wf = Workflow.from_file(
        write(
            tmp_path,
            "id: wf\ntasks:\n"
            "  - {id: a, type: python, handler: 'm:f', when: true}\n"
            "  - {id: b, type: python, handler: 'm:f', when: false}\n",
        )
    )
    assert [wf.task("a").when, wf.task("b").when] == ["true", "false"]


def test_missing_required_keys_and_type_specific_rules(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        """
        - {type: sql, connection: shop}
        - {id: cp, type: file, operation: copy, path: a}
        - {id: both, type: http, url: u, json: {a: 1}, body: text}
        - {id: notype}
        """,
    )
    assert problems == [
        f"{src}: task #1: missing required key 'id'",
        f"{src}: task #1: missing required key 'query'",
        f"{src}: task 'cp': operation 'copy' needs 'to'",
        f"{src}: task 'both': give either 'json' or 'body', not both",
        f"{src}: task 'notype': missing required key 'type' (expected python, http, sql, file)",
    ]


def test_template_typos_that_would_always_fail_are_rejected(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        """
        - id: a
          type: python
          handler: m:f
          params: {x: "{{ var.order_id }}", y: "{{ vars.items | tojsn }}"}
          when: "reslts.b.ok"
        """,
    )
    assert problems == [
        f"{src}: task 'a': params.x: unknown name 'var' (known: vars, results, execution_id)",
        f"{src}: task 'a': params.y: unknown filter 'tojsn'",
        f"{src}: task 'a': when: unknown name 'reslts' (known: vars, results, execution_id)",
    ]


def test_empty_task_list_and_non_mapping_definitions(tmp_path: Path) -> None:
    src, problems = problems_of(tmp_path, "[]\n")
    assert problems == [f"{src}: tasks: must not be empty"]
    with pytest.raises(ValidationError) as info:
        Workflow.from_dict([1, 2], source="api")  # type: ignore[arg-type]
    assert info.value.problems == ["api: a workflow must be a mapping of keys (got a list)"]
    with pytest.raises(ValidationError, match=r"^x\.yaml: unknown key 1$"):
        data: dict[Any, Any] = {"id": "w", 1: "x", "tasks": [py("a")]}
        Workflow.from_dict(data, source="x.yaml")


def test_http_method_is_case_insensitive_and_defaults_to_get() -> None:
    wf = Workflow(
        id="w",
        tasks=[
            {"id": "a", "type": "http", "url": "u", "method": "post"},
            {"id": "b", "type": "http", "url": "u"},
        ],
    )
    assert (wf.task("a").spec()["method"], wf.task("b").spec()["method"]) == ("POST", "GET")
    with pytest.raises(ValidationError, match="task 'c': unknown method 'FETCH' \\(expected GET"):
        Workflow(id="w", tasks=[{"id": "c", "type": "http", "url": "u", "method": "FETCH"}])


def test_file_write_needs_content_and_when_may_use_braces() -> None:
    with pytest.raises(ValidationError, match=r"task 'w': operation 'write' needs 'content'$"):
        Workflow(id="x", tasks=[{"id": "w", "type": "file", "operation": "write", "path": "p"}])
    wf = Workflow(id="x", tasks=[py("a"), py("b", "a", when="{{ results.a.ok }}")])
    assert wf.results_needed("b") == frozenset({"a"})


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    src, problems = problems_of(
        tmp_path,
        """
        - {id: a, type: python, handler: nope, priority: 99}
        - {id: b, type: http, url: "{{ results.c }}", depends_on: [zz]}
        - {id: c, type: shell}
        """,
        head="id: wf\nversion: 0\n",
    )
    assert len(problems) == 6
    assert all(line.startswith(f"{src}: ") and "\n" not in line for line in problems)


# -- reading files ------------------------------------------------------------------------------


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert validate_file(missing) == [f"{missing}: cannot read: No such file or directory"]
    with pytest.raises(ValidationError, match="cannot read"):
        Workflow.from_file(missing)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "id: wf\ntasks:\n  - id: a\n    type: [python\n")
    [problem] = validate_file(path)
    assert problem.startswith(f"{path}: line 5, column 1: invalid YAML: ")


def test_duplicate_yaml_key_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "id: wf\ntasks:\n  - id: a\n    type: python\n    type: http\n")
    assert validate_file(path) == [f"{path}: line 5, column 5: invalid YAML: duplicate key 'type'"]


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{"id": "wf",\n "tasks": [,]}', "wf.json")
    assert validate_file(path) == [f"{path}: line 2, column 12: invalid JSON: Expecting value"]


def test_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    assert validate_file(write(tmp_path, "")) == [
        f"{tmp_path / 'wf.yaml'}: a workflow must be a mapping of keys (got nothing)"
    ]
    assert validate_file(write(tmp_path, "- a\n")) == [
        f"{tmp_path / 'wf.yaml'}: a workflow must be a mapping of keys (got a list)"
    ]


def test_yaml_dates_stay_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "id: wf\ntasks:\n  - {id: a, type: python, handler: 'm:f', params: {d: 2024-01-31}}\n",
    )
    wf = Workflow.from_file(path)
    assert wf.task("a").spec()["params"] == {"d": "2024-01-31"}
    json.dumps(wf.to_dict())


# -- scale ------------------------------------------------------------------------------------

N = 10_000


def test_10000_task_chain_validates_and_checks_ancestry(tmp_path: Path) -> None:
    tasks = [py("t0")] + [
        py(f"t{i}", f"t{i - 1}", params={"first": "{{ results.t0.v }}"}) for i in range(1, N)
    ]
    path = tmp_path / "chain.json"
    path.write_text(json.dumps({"id": "chain", "tasks": tasks}))
    wf = Workflow.from_file(path)
    assert wf.roots() == ("t0",) and wf.successors(f"t{N - 2}") == (f"t{N - 1}",)
    assert wf.results_needed(f"t{N - 1}") == frozenset({"t0"})
    tasks[0] = py("t0", params={"last": f"{{{{ results.t{N - 1} }}}}"})
    with pytest.raises(ValidationError) as info:
        Workflow.from_dict({"id": "chain", "tasks": tasks}, source="chain")
    assert info.value.problems == [
        f"chain: task 't0': params.last: uses results.t{N - 1} "
        f"but 't{N - 1}' is not upstream of 't0' (add it to depends_on)"
    ]


def test_10000_task_fan_out_validates(tmp_path: Path) -> None:
    children = [
        {"id": f"t{i}", "type": "http", "url": "{{ vars.base }}/" + str(i), "depends_on": ["root"]}
        for i in range(N)
    ]
    join = py("join", *(f"t{i}" for i in range(N)), params={"all": "{{ results | tojson }}"})
    path = tmp_path / "fan.json"
    path.write_text(json.dumps({"id": "fan", "tasks": [py("root"), *children, join]}))
    wf = Workflow.from_file(path)
    assert len(wf.successors("root")) == N and wf.results_needed("join") is None
    assert wf.deps("join")[-1] == f"t{N - 1}"
