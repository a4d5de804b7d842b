"""The OpenAPI document is complete: every operation declares the errors it can answer."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from tests.api.conftest import Api
from tests.engine.conftest import py

SPEC_OPERATIONS = {
    ("post", "/workflows"),
    ("get", "/workflows"),
    ("get", "/workflows/{workflow_id}"),
    ("post", "/workflows/{workflow_id}/executions"),
    ("get", "/executions"),
    ("get", "/executions/{execution_id}"),
    ("get", "/executions/{execution_id}/history"),
    ("post", "/executions/{execution_id}/pause"),
    ("post", "/executions/{execution_id}/resume"),
    ("post", "/executions/{execution_id}/cancel"),
    ("post", "/executions/{execution_id}/retry"),
    ("get", "/healthz"),
    ("get", "/metrics"),
}


@pytest.fixture
def openapi(api: Api) -> dict[str, Any]:
    doc: dict[str, Any] = api.http.get("/openapi.json").json()
    return doc


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m, p): op for p, ops in doc["paths"].items() for m, op in ops.items()}


def test_every_spec_endpoint_is_described(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"].startswith("3.")
    assert set(operations(openapi)) == SPEC_OPERATIONS


def test_every_operation_declares_its_error_responses(openapi: dict[str, Any]) -> None:
    for (method, path), op in operations(openapi).items():
        codes = set(op["responses"])
        expected = {"401", "503"} if path != "/healthz" else {"503"}
        if "{" in path:
            expected |= {"404", "422"}
        if op.get("parameters"):
            expected.add("422")
        if "requestBody" in op:
            expected |= {"413", "422"}
        refusable = path.endswith(("/pause", "/resume", "/cancel", "/retry"))
        if method == "post" and (refusable or path == "/workflows"):
            expected.add("409")
        assert expected <= codes, f"{method} {path} lacks {sorted(expected - codes)}"
        assert "default" not in codes


def test_error_responses_describe_the_bodies_the_api_sends(
    api: Api, openapi: dict[str, Any]
) -> None:
    api.register({"id": "w", "tasks": [py("a")]})
    eid = api.wait(api.start("w")["execution_id"])["execution_id"]
    cases = [
        ("post", "/workflows", api.http.post("/workflows", json={"id": "w"})),
        ("get", "/workflows/{workflow_id}", api.http.get("/workflows/nope")),
        ("post", "/executions/{execution_id}/pause", api.http.post(f"/executions/{eid}/pause")),
        ("get", "/executions", api.http.get("/executions", params={"limit": 0})),
    ]
    ops = operations(openapi)
    for method, path, response in cases:
        declared = ops[(method, path)]["responses"][str(response.status_code)]
        schema = declared["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), {**schema, "components": openapi["components"]})
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, f"{method} {path}"


def test_start_links_to_the_operations_on_the_new_execution(openapi: dict[str, Any]) -> None:
    start = operations(openapi)[("post", "/workflows/{workflow_id}/executions")]
    links = start["responses"]["201"]["links"]
    ids = {link["operationId"] for link in links.values()}
    assert ids == {
        "getExecution",
        "getExecutionHistory",
        "pauseExecution",
        "resumeExecution",
        "cancelExecution",
        "retryExecution",
    }
    assert {"Location", "Idempotent-Replayed"} <= set(start["responses"]["201"]["headers"])
