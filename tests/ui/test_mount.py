"""``mount_ui`` without a browser: what /ui serves, to whom, and what the package ships."""

from __future__ import annotations

import glob
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flowq import Client, Settings, Workflow
from flowq.api import create_api
from flowq.compiler import compile_workflow
from flowq.ui import STATIC, mount_ui
from tests.api.conftest import served
from tests.conftest import ROOT
from tests.engine.conftest import py

TOKEN = "s3cret"
WORKFLOW = {
    "id": "fan",
    "version": 1,
    "tasks": [py("a"), py("b", deps=("a",)), py("c", deps=("a",)), py("d", deps=("b", "c"))],
}


def serve(tmp_path: Path, token: str | None = None) -> Iterator[httpx.Client]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}", api_token=token)
    with Client(settings) as client:
        client.register(Workflow.from_dict(WORKFLOW))
        app = create_api(client)
        mount_ui(app)
        with served(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            yield http


@pytest.fixture
def http(tmp_path: Path) -> Iterator[httpx.Client]:
    yield from serve(tmp_path)


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[httpx.Client]:
    yield from serve(tmp_path, TOKEN)


def test_the_dashboard_is_served_with_a_strict_policy(http: httpx.Client) -> None:
    response = http.get("/ui")
    assert (response.status_code, response.headers["location"]) == (307, "/ui/")

    page = http.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"

    script = http.get("/ui/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    etag = script.headers["etag"]
    assert http.get("/ui/app.js", headers={"If-None-Match": etag}).status_code == 304


def test_only_the_static_folder_is_served(http: httpx.Client) -> None:
    missing = http.get("/ui/nothing.js")
    assert missing.status_code == 404
    assert missing.json()["detail"].startswith("no such file in the dashboard: /ui/nothing.js")
    for sneaky in (
        "/ui/%2e%2e/__init__.py",
        "/ui/..%2F__init__.py",
        "/ui/%2e%2e/%2e%2e/api/app.py",
    ):
        assert http.get(sneaky).status_code == 404, sneaky
    # other methods are not files: the API answers them as for any unknown path
    assert http.post("/ui/app.js").status_code in (404, 405)


def test_every_file_the_pages_load_is_local_and_present(http: httpx.Client) -> None:
    """Offline: no absolute URL anywhere, and every module imported exists and is served."""
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path.name
        assert not re.search(r"""(import|from)\s*\(?\s*["'](https?:)?//""", text), path.name
        for module in re.findall(r"""from\s+["']\./([\w.-]+)["']""", text):
            assert (STATIC / module).is_file(), f"{path.name} imports missing {module}"
            assert http.get(f"/ui/{module}").status_code == 200


def test_the_plan_route_returns_the_text_of_flowq_plan(http: httpx.Client) -> None:
    plan = compile_workflow(Workflow.from_dict(WORKFLOW))
    response = http.get("/ui/api/workflows/fan/plan", params={"version": 1})
    assert response.status_code == 200
    assert response.json() == {"text": plan.render(), "plan": plan.to_dict()}

    unknown = http.get("/ui/api/workflows/nope/plan")
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["detail"]
    assert http.get("/ui/api/workflows/fan/plan", params={"version": 0}).status_code == 422


def test_the_api_document_is_unchanged(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


def test_with_a_token_files_are_open_and_data_is_not(guarded: httpx.Client) -> None:
    assert guarded.get("/ui/").status_code == 200
    assert guarded.get("/ui/app.js").status_code == 200
    for closed in ("/ui/api/workflows/fan/plan", "/executions", "/workflows/fan"):
        assert guarded.get(closed).status_code == 401, closed
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.get("/ui/api/workflows/fan/plan", headers=bearer).status_code == 200


def test_the_package_ships_the_static_files() -> None:
    """pyproject's package data must cover every file here, or an installed flowq has no /ui."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package = STATIC.parent.parent  # flowq/
    shipped = {
        Path(package, name)
        for pattern in config["tool"]["setuptools"]["package-data"]["flowq"]
        for name in glob.glob(pattern, root_dir=package, recursive=True)  # as setuptools does
    }
    files = {p for p in STATIC.rglob("*") if p.is_file()}
    left_out = sorted(p.relative_to(package).as_posix() for p in files - shipped)
    assert not left_out, (
        f"not package data: {left_out}; add 'ui/static/*' to "
        "[tool.setuptools.package-data] flowq in pyproject.toml"
    )


def test_mounting_twice_mounts_once(tmp_path: Path) -> None:
    with Client(Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}")) as client:
        app = create_api(client)
        mount_ui(app)
        before = (len(app.routes), len(app.user_middleware))
        mount_ui(app)
        assert (len(app.routes), len(app.user_middleware)) == before
