"""Definitions over HTTP: register, read back (with the plan), list with a cursor, replace."""

from __future__ import annotations

from flowq import Workflow
from flowq.compiler import compile_workflow
from tests.api.conftest import Api
from tests.engine.conftest import py

DIAMOND = {
    "id": "diamond",
    "name": "Diamond",
    "version": 1,
    "tasks": [py("a"), py("b", deps=("a",)), py("c", deps=("a",)), py("d", deps=("b", "c"))],
}


def test_register_answers_201_with_id_and_version(api: Api) -> None:
    response = api.http.post("/workflows", json=DIAMOND)
    assert response.status_code == 201, response.text
    assert response.json() == {"id": "diamond", "version": 1}
    assert response.headers["location"] == "/workflows/diamond?version=1"
    assert api.client.definition("diamond") == Workflow.from_dict(DIAMOND)


def test_get_returns_the_definition_and_its_plan(api: Api) -> None:
    api.register(DIAMOND)
    api.register({**DIAMOND, "version": 2, "tasks": [py("z")]})
    wf = Workflow.from_dict(DIAMOND)

    newest = api.http.get("/workflows/diamond").json()
    assert (newest["version"], newest["versions"]) == (2, [1, 2])
    assert [t["id"] for t in newest["definition"]["tasks"]] == ["z"]

    first = api.http.get("/workflows/diamond", params={"version": 1}).json()
    assert first["definition"] == wf.to_dict()
    assert first["plan"] == compile_workflow(wf).to_dict()
    assert (first["name"], first["digest"]) == ("Diamond", wf.digest())
    again = api.http.post("/workflows", json=first["definition"])
    assert again.status_code == 201, "what GET returns registers as the same definition"


def test_replace_overwrites_a_version(api: Api) -> None:
    api.register(DIAMOND)
    changed = {**DIAMOND, "tasks": [py("only")]}
    assert api.http.post("/workflows", json=changed).status_code == 409
    replaced = api.http.post("/workflows", params={"replace": "true"}, json=changed)
    assert replaced.status_code == 201, replaced.text
    tasks = api.http.get("/workflows/diamond").json()["definition"]["tasks"]
    assert [t["id"] for t in tasks] == ["only"]


def test_list_pages_through_every_workflow_by_id(api: Api) -> None:
    for name in ("w3", "w1", "w2", "w0", "w4"):
        api.register({"id": name, "tasks": [py("a")]})
    api.register({"id": "w2", "version": 2, "tasks": [py("a")]})
    seen = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.http.get("/workflows", params=params).json()
        seen += page["items"]
        cursor = page["next"]
        if cursor is None:
            break
    assert [w["id"] for w in seen] == ["w0", "w1", "w2", "w3", "w4"]
    w2 = seen[2]
    assert (w2["version"], w2["versions"]) == (2, [1, 2])
