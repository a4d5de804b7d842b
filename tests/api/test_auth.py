"""FLOWQ_API_TOKEN: every path but /healthz needs the bearer token; a 401 reveals nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.conftest import Api, ServeApi
from tests.engine.conftest import py

TOKEN = "s3cret-Tök3n"  # non-ASCII: the header carries its UTF-8 bytes
GOOD = {"Authorization": f"Bearer {TOKEN}".encode()}
UNAUTHORIZED = {"detail": "missing or invalid bearer token"}


@pytest.fixture
def guarded(serve_api: ServeApi) -> Iterator[Api]:
    with serve_api(api_token=TOKEN) as api:
        yield api


PATHS = [
    ("GET", "/workflows"),
    ("POST", "/workflows"),
    ("GET", "/workflows/w"),
    ("POST", "/workflows/w/executions"),
    ("GET", "/executions"),
    ("GET", "/executions/x"),
    ("GET", "/executions/x/history"),
    ("POST", "/executions/x/cancel"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/no/such/path"),
]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x", f"Bearer{TOKEN}"],
)
def test_every_path_needs_the_token(guarded: Api, authorization: str | None) -> None:
    headers = {"Authorization": authorization.encode()} if authorization else {}
    for method, path in PATHS:
        response = guarded.http.request(method, path, headers=headers, json={"id": "w"})
        assert response.status_code == 401, f"{method} {path}: {response.text}"
        assert response.json() == UNAUTHORIZED, "the same body whatever was wrong"
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_right_token_opens_every_path(guarded: Api) -> None:
    guarded.http.headers.update(GOOD)
    guarded.register({"id": "w", "tasks": [py("a")]})
    eid = guarded.start("w")["execution_id"]
    assert guarded.wait(eid)["state"] == "completed"
    assert guarded.http.get("/metrics").status_code == 200
    lower = guarded.http.get("/executions", headers={"authorization": b"bearer " + TOKEN.encode()})
    assert lower.status_code == 200, "the scheme is case-insensitive"


def test_healthz_needs_no_token(guarded: Api) -> None:
    response = guarded.http.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_a_request_without_the_token_learns_nothing_from_its_body(guarded: Api) -> None:
    malformed = guarded.http.post(
        "/workflows", content=b"{", headers={"content-type": "application/json"}
    )
    huge = guarded.http.post("/workflows", content=b"x" * (2 * 1024 * 1024))
    unknown = guarded.http.get("/executions/does-not-exist")
    for response in (malformed, huge, unknown):
        assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


def test_openapi_declares_the_bearer_scheme_when_a_token_is_set(guarded: Api, api: Api) -> None:
    doc = guarded.http.get("/openapi.json", headers=GOOD).json()
    schemes = doc["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            secured = bool(operation.get("security"))
            assert secured == (path != "/healthz"), f"{method} {path}"
    open_doc = api.http.get("/openapi.json").json()
    assert "securitySchemes" not in open_doc.get("components", {})
