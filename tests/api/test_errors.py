"""Each error code of SPEC section 5, through a real server: status, and a readable body."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from flowq import Settings
from flowq.api import create_api
from flowq.api.app import STORE_RETRY_SECONDS
from flowq.store import Store
from flowq.store.store import NO_TABLES
from tests.api.conftest import Api, ServeApi, free_port, served
from tests.conftest import fresh_postgres_database
from tests.engine.conftest import py

WITH_INPUTS = {
    "id": "orders",
    "inputs": {
        "type": "object",
        "required": ["order_id"],
        "properties": {"order_id": {"type": "integer"}, "sku": {"type": "string"}},
    },
    "tasks": [py("a")],
}


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert the status and the error shape: JSON with one readable ``detail`` line."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert "\n" not in body["detail"] and "Traceback" not in body["detail"]
    for problem in body.get("problems") or []:
        assert "\n" not in problem
    return body


@pytest.fixture
def finished(api: Api) -> Iterator[str]:
    """The id of a completed execution of workflow ``orders``."""
    api.register(WITH_INPUTS)
    doc = api.start("orders", vars={"order_id": 1})
    yield api.wait(doc["execution_id"])["execution_id"]


# -- 422 ----------------------------------------------------------------------------------------


def test_a_version_beyond_the_store_columns_is_422(api: Api) -> None:
    too_big = {"id": "w", "version": 2**31, "tasks": [py("a")]}
    body = error(api.http.post("/workflows", json=too_big), 422)
    assert "version: must be <= 2147483647 (got 2147483648)" in body["detail"]
    assert api.http.get("/workflows").json()["items"] == []


def test_invalid_definition_lists_every_problem(api: Api) -> None:
    bad = {
        "id": "bad",
        "tasks": [py("a", deps=("nope",)), {"id": "b", "type": "python", "handler": "x"}],
    }
    body = error(api.http.post("/workflows", json=bad), 422)
    problems = body["problems"]
    assert len(problems) == 2, problems
    assert any("task 'a'" in p and "nope" in p for p in problems)
    assert any("task 'b'" in p and "module.path:function" in p for p in problems)
    assert body["detail"].startswith("2 problems")


@pytest.mark.parametrize(
    ("content", "headers", "expected"),
    [
        (b'{"id": "w", "tasks": [', {"content-type": "application/json"}, "invalid JSON"),
        (b'{"id": "\xff"}', {"content-type": "application/json"}, "not UTF-8"),
        (b"[" * 5000 + b"]" * 5000, {"content-type": "application/json"}, "nested too deeply"),
        (b'["a", "list"]', {"content-type": "application/json"}, "valid dictionary"),
        (b'{"id": "w"}', {"content-type": "text/plain"}, "Content-Type: application/json"),
    ],
    ids=["truncated", "not-utf8", "deep", "array", "not-json-content-type"],
)
def test_malformed_bodies_are_422_with_a_reason(
    api: Api, content: bytes, headers: dict[str, str], expected: str
) -> None:
    body = error(api.http.post("/workflows", content=content, headers=headers), 422)
    assert expected in body["detail"], body


@pytest.mark.parametrize("action", ["pause", "resume", "cancel", "retry"])
def test_a_control_action_refuses_a_malformed_body_and_takes_a_json_one(
    api: Api, action: str
) -> None:
    api.register({"id": "w", "tasks": [py("a")]})
    eid = api.start("w")["execution_id"]
    api.wait(eid)
    url = f"/executions/{eid}/{action}"
    json_type = {"content-type": "application/json"}
    for content, expected in (
        (b"{bad", "body: invalid JSON at character 1: Expecting property name"),
        (b'{"a": "\xff"}', "body: invalid JSON: not UTF-8"),
        (b"[" * 5000 + b"]" * 5000, "body: invalid JSON: nested too deeply"),
        (b'{"a": NaN}', "body.a: nan is not a JSON number"),
        (b"[" * 100 + b"]" * 100, "body[0]"),  # deeper than 64 levels
    ):
        body = error(api.http.post(url, content=content, headers=json_type), 422)
        assert body["detail"].startswith(expected), body
    # no body, or a JSON one, reaches the state machine: a completed execution refuses all four
    for content in (b"", b"{}", b" null "):
        answer = api.http.post(url, content=content, headers=json_type)
        assert answer.status_code == 409, answer.text


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ({"vars": {"sku": "x"}}, "vars: 'order_id' is a required property"),
        ({"vars": {"order_id": "42"}}, "vars.order_id: '42' is not of type 'integer'"),
        ({"vars": [1, 2]}, "body.vars: Input should be a valid dictionary"),
        ({"vars": {"order_id": 1}, "priority": "5"}, "body.priority: Input should be a valid"),
        ({"vars": {"order_id": 1}, "priority": 10}, "body.priority: Input should be less than"),
        ({"vars": {"order_id": 1}, "priority": True}, "body.priority"),
        ({"vars": {"order_id": 1}, "version": 0}, "body.version"),
        ({"vars": {"order_id": 1}, "version": 2**127}, "body.version: Input should be less"),
        ({"vars": {"order_id": 1}, "idempotency_key": ""}, "body.idempotency_key"),
        ({"vars": {"order_id": 1}, "idempotency_key": "k" * 201}, "body.idempotency_key"),
        ({"vars": {"order_id": 1}, "prio": 3}, "body.prio: unknown key"),
    ],
)
def test_start_with_bad_vars_or_fields_is_422(
    api: Api, start: dict[str, Any], expected: str
) -> None:
    api.register(WITH_INPUTS)
    body = error(api.http.post("/workflows/orders/executions", json=start), 422)
    assert any(expected in p for p in body["problems"]), body
    assert api.http.get("/executions").json()["items"] == [], "a refused start started something"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def either_store_api(request: pytest.FixtureRequest, serve_api: ServeApi) -> Iterator[Api]:
    """The API on an embedded client whose store is SQLite, or Postgres."""
    if request.param == "sqlite":
        with serve_api() as served_api:
            yield served_api
        return
    with fresh_postgres_database("flowq_api_values") as url:
        store = Store(url)
        store.upgrade()  # `flowq db upgrade`
        store.dispose()
        with serve_api(database_url=url) as pg:
            yield pg


def test_what_the_store_cannot_hold_is_422_with_each_problem(either_store_api: Api) -> None:
    """U+0000 (Postgres refuses it in text and JSON) and ids longer than the store's columns
    are refused up front, on either store, before anything is stored."""
    api = either_store_api
    api.register(WITH_INPUTS)
    for attempt in range(2):  # the second start would take the one-statement path
        body = error(
            api.http.post(
                "/workflows/orders/executions",
                json={"vars": {"order_id": 1, "sku": "a\u0000b", "k\u0000": 1}},
            ),
            422,
        )
        assert body["problems"] == [
            "vars.sku: a string holds the character U+0000, which cannot be stored",
            "vars: a key holds the character U+0000, which cannot be stored",
        ], attempt
    assert api.http.get("/executions").json()["items"] == []
    definitions = [
        (
            {"id": "y" * 201, "tasks": [py("a")]},
            "id: must be at most 200 characters long (got 201)",
        ),
        (
            {"id": "t", "tasks": [py("t" * 300)]},
            "id: must be at most 200 characters long (got 300)",
        ),
        ({"id": "n", "name": "a\u0000", "tasks": [py("a")]}, "name: holds the character U+0000"),
    ]
    for definition, expected in definitions:
        body = error(api.http.post("/workflows", json=definition), 422)
        assert any(expected in p for p in body["problems"]), body
    assert [w["id"] for w in api.http.get("/workflows").json()["items"]] == ["orders"]
    longest = {"id": "y" * 200, "tasks": [py("t" * 200)]}
    assert api.http.post("/workflows", json=longest).status_code == 201
    doc = api.start("y" * 200)
    assert api.wait(doc["execution_id"])["state"] == "completed"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_refused(api: Api, literal: bytes) -> None:
    api.register(WITH_INPUTS)
    content = b'{"vars": {"order_id": 1, "x": [' + literal + b"]}}"
    body = error(
        api.http.post(
            "/workflows/orders/executions",
            content=content,
            headers={"content-type": "application/json"},
        ),
        422,
    )
    assert body["detail"].startswith("body.vars.x[0]: ") and "finite" in body["detail"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/executions?limit=0", "query.limit: Input should be greater than or equal to 1"),
        ("/executions?limit=100000", "query.limit: Input should be less than or equal to 500"),
        ("/executions?limit=ten", "query.limit: Input should be a valid integer"),
        ("/executions?state=done", "query.state: Input should be 'created'"),
        ("/executions?workflow_id=a%20b", "query.workflow_id: String should match pattern"),
        ("/executions?cursor=0000", "query.cursor: no execution 0000"),
        ("/workflows/w?version=x", "query.version: Input should be a valid integer"),
        (f"/workflows/w?version={2**64}", "query.version: Input should be less than or equal"),
        ("/workflows/bad%20id", "path.workflow_id: String should match pattern"),
        ("/executions/x/history?after=-1", "query.after: Input should be greater than or equal"),
    ],
)
def test_bad_query_and_path_parameters_are_422(api: Api, path: str, expected: str) -> None:
    body = error(api.http.get(path), 422)
    assert expected in body["detail"], body


# -- 404 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/workflows/nope", "workflow nope is not registered"),
        ("GET", "/workflows/orders?version=7", "workflow orders@7 is not registered"),
        ("POST", "/workflows/nope/executions", "workflow nope is not registered"),
        ("GET", "/executions/0b7e-unknown", "execution 0b7e-unknown not found"),
        ("GET", "/executions/0b7e-unknown/history", "execution 0b7e-unknown not found"),
        ("POST", "/executions/0b7e-unknown/pause", "execution 0b7e-unknown not found"),
        ("POST", "/executions/0b7e-unknown/resume", "execution 0b7e-unknown not found"),
        ("POST", "/executions/0b7e-unknown/cancel", "execution 0b7e-unknown not found"),
        ("POST", "/executions/0b7e-unknown/retry", "execution 0b7e-unknown not found"),
        ("GET", "/no/such/path", "no such path: /no/such/path"),
    ],
)
def test_unknown_ids_are_404(api: Api, method: str, path: str, expected: str) -> None:
    api.register(WITH_INPUTS)
    json = {"vars": {"order_id": 1}} if method == "POST" else None
    body = error(api.http.request(method, path, json=json), 404)
    assert body["detail"].startswith(expected), body


def test_start_of_an_unknown_version_is_404(api: Api) -> None:
    api.register(WITH_INPUTS)
    response = api.http.post("/workflows/orders/executions", json={"version": 3})
    assert error(response, 404)["detail"] == "workflow orders@3 is not registered"


# -- 409 ----------------------------------------------------------------------------------------


def test_same_id_and_version_with_another_body_is_409(api: Api) -> None:
    api.register(WITH_INPUTS)
    assert api.http.post("/workflows", json=WITH_INPUTS).status_code == 201, "same body: fine"
    changed = {**WITH_INPUTS, "tasks": [py("a"), py("b", deps=("a",))]}
    body = error(api.http.post("/workflows", json=changed), 409)
    assert "orders version 1 is already registered" in body["detail"]
    assert "version" in body["detail"].split(":")[-1], "the message says what to do"
    kept = api.http.get("/workflows/orders").json()["definition"]["tasks"]
    assert [t["id"] for t in kept] == ["a"]


@pytest.mark.parametrize(
    ("action", "wanted"),
    [("pause", "paused"), ("resume", "running"), ("cancel", "cancelled"), ("retry", "running")],
)
def test_illegal_transitions_are_409_naming_the_state(
    api: Api, finished: str, action: str, wanted: str
) -> None:
    body = error(api.http.post(f"/executions/{finished}/{action}"), 409)
    assert body["state"] == "completed"
    assert body["detail"] == f"cannot {action}: execution {finished} is 'completed'"
    assert api.http.get(f"/executions/{finished}").json()["state"] == "completed"


# -- 413, 405, 500 ------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_413(serve_api: ServeApi) -> None:
    with serve_api(max_body=2048) as api:
        api.register({"id": "w", "tasks": [py("a")]})
        big = {"vars": {"blob": "x" * 4096}}
        body = error(api.http.post("/workflows/w/executions", json=big), 413)
        assert "larger than 2048 bytes" in body["detail"]
        assert "FLOWQ_API_MAX_BODY" in body["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: streamed, counted as it comes
            yield b'{"vars": {"blob": "'
            for _ in range(10):
                yield b"x" * 512
            yield b'"}}'

        streamed = api.http.post(
            "/workflows/w/executions",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        error(streamed, 413)
        assert api.http.get("/executions").json()["items"] == []
        small = api.http.post("/workflows/w/executions", json={"vars": {"blob": "x" * 1500}})
        assert small.status_code == 201, "a body under the limit is read whole"


def test_default_limit_is_one_mebibyte(api: Api) -> None:
    api.register({"id": "w", "tasks": [py("a")]})
    over = {"vars": {"blob": "x" * (1024 * 1024)}}
    error(api.http.post("/workflows/w/executions", json=over), 413)
    under = {"vars": {"blob": "x" * (1024 * 1024 - 100)}}
    assert api.http.post("/workflows/w/executions", json=under).status_code == 201


def test_wrong_method_is_405_naming_the_allowed_ones(api: Api) -> None:
    response = api.http.delete("/workflows")
    body = error(response, 405)
    assert response.headers["allow"] == "GET, POST"
    assert body["detail"] == "DELETE is not allowed on /workflows; use GET or POST"


def test_requests_while_the_broker_is_down_stand_and_wait_for_it(serve_api: ServeApi) -> None:
    """The execution is recorded before its messages go out: the start answers 201 (a 503
    would have the caller start it again), and its tasks wait, overdue, for a worker's
    reconciler to publish them (tests/integration/test_durability.py runs them); so do a
    pause, a resume (whose messages fail too) and a cancel."""
    with serve_api(broker_url=f"redis://127.0.0.1:{free_port()}/0") as api:
        api.register({"id": "w", "tasks": [py("a")]})
        started = api.http.post("/workflows/w/executions", json={})
        assert started.status_code == 201, started.text
        eid = started.json()["execution_id"]
        assert api.client.status(eid)["tasks"]["a"]["state"] == "queued"
        overdue = api.client.store.read(lambda tx: tx.stale_waiting(datetime.now(UTC)))
        assert [(r.execution_id, r.task_id) for r in overdue] == [(eid, "a")]
        assert api.http.get("/healthz").json()["status"] == "unavailable"  # says the broker is down
        for action, state in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
            answer = api.http.post(f"/executions/{eid}/{action}")  # the resume publishes
            assert (answer.status_code, answer.json()["state"]) == (200, state), answer.text


def test_a_store_that_does_not_answer_is_a_503_within_seconds() -> None:
    """The API's own client retries a lost store for STORE_RETRY_SECONDS, not the 60 s a
    worker waits: the caller learns soon, in one line, that the store is down. Embedded,
    the API's process runs the tasks through the same store, with no reconciler behind it:
    there it keeps the workers' 60 s."""
    url = f"postgresql+psycopg://flowq@127.0.0.1:{free_port()}/flowq"
    embedded = create_api(settings=Settings(database_url=url))
    assert embedded.state.client.store.retry_seconds == 60
    embedded.state.client.close()
    broker = f"redis://127.0.0.1:{free_port()}/0"  # never reached: the store fails first
    app = create_api(settings=Settings(database_url=url, broker_url=broker))
    assert app.state.client.store.retry_seconds == STORE_RETRY_SECONDS
    with served(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        for method, path in (("GET", "/executions"), ("POST", "/workflows/w/executions")):
            began = time.monotonic()
            body = error(http.request(method, path, json={} if method == "POST" else None), 503)
            waited = time.monotonic() - began
            assert STORE_RETRY_SECONDS / 2 < waited < STORE_RETRY_SECONDS + 5, (path, waited)
            assert body["detail"].startswith("state store unavailable: "), body
            assert "refused" in body["detail"]


@pytest.mark.integration
def test_a_store_without_tables_is_a_503_that_says_to_upgrade() -> None:
    with fresh_postgres_database("flowq_api_bare") as url:
        app = create_api(settings=Settings(database_url=url))
        with served(app) as base, httpx.Client(base_url=base, timeout=30) as http:
            for method, path in (
                ("GET", "/executions"),
                ("GET", "/workflows"),
                ("POST", "/workflows/w/executions"),
            ):
                body = error(http.request(method, path, json={} if method == "POST" else None), 503)
                assert body["detail"] == NO_TABLES, (path, body)


def test_a_genuine_bug_is_a_generic_500(
    serve_api: ServeApi, caplog: pytest.LogCaptureFixture
) -> None:
    with serve_api() as api:

        def broken() -> None:
            raise KeyError("internal secret")

        api.app.add_api_route("/broken", broken)  # a route with a bug, on the running app
        with caplog.at_level("ERROR", logger="flowq.api"):
            body = error(api.http.get("/broken"), 500)
        assert body == {"detail": "internal error; the API log has the details"}
        assert "GET /broken failed" in caplog.text and "internal secret" in caplog.text
