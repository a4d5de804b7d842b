"""Fixtures for the dashboard: the real API app with ``mount_ui``, served by uvicorn on a free
port over an embedded client (fresh SQLite store, worker threads in this process), and headless
Chromium (Debian's ``chromium``, driven by Playwright) looking at it.

Without Chromium or the playwright package the browser tests skip on a laptop and fail under
CI. Screenshots go to ``test-artifacts/ui/<test>/`` (or ``$FLOWQ_TEST_ARTIFACTS/ui/<test>/``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from flowq import Client, Settings
from flowq.api import create_api
from flowq.ui import mount_ui
from tests.api.conftest import served
from tests.conftest import IN_CI, ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request

CHROMIUM = os.environ.get("FLOWQ_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("FLOWQ_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "ui"
VIEWPORT = {"width": 1400, "height": 900}
ENDED = ("completed", "failed", "cancelled")


def require_browser() -> None:
    """Skip (laptop) or fail (CI=true) unless playwright and Chromium are installed."""
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (.ci/install-browser installs Debian's chromium)")
    if not missing:
        return
    message = f"browser tests need {' and '.join(missing)}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: browser tests must not be skipped)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the session; each test gets its own context (storage)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Dashboard:
    """A served API with the dashboard, a browser page on it, and the flowq Client behind it."""

    url: str
    http: httpx.Client
    client: Client
    page: Page
    shots: Path
    page_errors: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def register(self, definition: dict[str, Any]) -> None:
        response = self.http.post("/workflows", json=definition)
        assert response.status_code == 201, response.text

    def start(self, workflow_id: str, **body: Any) -> str:
        """Start through the API; the execution id."""
        response = self.http.post(f"/workflows/{workflow_id}/executions", json=body)
        assert response.status_code == 201, response.text
        execution_id: str = response.json()["execution_id"]
        return execution_id

    def status(self, execution_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.http.get(f"/executions/{execution_id}").json()
        return doc

    def wait(self, execution_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (doc := self.status(execution_id))["state"] not in ENDED:
            assert time.monotonic() < deadline, f"still {doc['state']} after {timeout}s"
            time.sleep(0.05)
        return doc

    def open(self, fragment: str = "executions") -> None:
        """Load the dashboard (a real page load) at ``#/<fragment>``."""
        self.page.goto(f"{self.url}/ui/#/{fragment}")

    def navigate(self, fragment: str) -> None:
        """Move inside the loaded page, as a link would: no reload."""
        self.page.evaluate("hash => { location.hash = hash; }", f"#/{fragment}")

    def screenshot(self, name: str) -> Path:
        """Save the whole page as ``NN-name.png`` in this test's artefact folder."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{len(list(self.shots.glob('*.png'))) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


ServeDashboard = Callable[..., AbstractContextManager[Dashboard]]


@pytest.fixture
def serve_dashboard(
    browser: Browser, tmp_path: Path, request: pytest.FixtureRequest
) -> ServeDashboard:
    """A factory: ``with serve_dashboard(api_token="t") as dash:`` serves one app and opens a tab.

    On exit it checks what any page must never do: throw, or fetch anything but its own origin.
    """
    shots = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(shots, ignore_errors=True)

    @contextmanager
    def serve(*, headers: dict[str, Any] | None = None, **changes: Any) -> Iterator[Dashboard]:
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}", **changes)
        with Client(settings) as client:
            app = create_api(client)
            mount_ui(app)
            context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            context.set_default_timeout(10_000)
            try:
                with (
                    served(app) as url,
                    httpx.Client(base_url=url, headers=headers, timeout=30) as http,
                ):
                    dash = Dashboard(url, http, client, context.new_page(), shots)
                    dash.page.on("pageerror", lambda exc: dash.page_errors.append(str(exc)))
                    dash.page.on("request", lambda req: dash.requests.append(req))
                    yield dash
                    assert not dash.page_errors, f"the page threw: {dash.page_errors}"
                    foreign = [r.url for r in dash.requests if not r.url.startswith(url)]
                    assert not foreign, (
                        f"the page fetched from elsewhere (must work offline): {foreign}"
                    )
            finally:
                context.close()

    return serve


@pytest.fixture
def dashboard(serve_dashboard: ServeDashboard) -> Iterator[Dashboard]:
    """The dashboard on an API without a token."""
    with serve_dashboard() as dash:
        yield dash
