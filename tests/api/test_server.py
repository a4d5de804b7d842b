"""`flowq api`: the command serves the API, configured by the FLOWQ_* variables."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.api.conftest import embedded_env, flowq_api_process
from tests.conftest import ROOT
from tests.engine.conftest import py


def test_flowq_api_serves_and_runs_an_execution(tmp_path: Path) -> None:
    env = embedded_env(tmp_path, FLOWQ_API_TOKEN="t0k", FLOWQ_API_MAX_BODY="4096")
    auth = {"Authorization": "Bearer t0k"}
    with (
        flowq_api_process(env, tmp_path / "api.log") as api,
        httpx.Client(base_url=api.url, headers=auth, timeout=30) as http,
    ):
        assert http.get("/healthz", headers={}).json() == {"status": "ok"}
        assert http.get("/executions", headers={"Authorization": ""}).status_code == 401
        definition = {"id": "w", "tasks": [py("a", "echo"), py("b", "echo", ("a",))]}
        assert http.post("/workflows", json=definition).status_code == 201
        big = http.post("/workflows/w/executions", json={"vars": {"x": "y" * 5000}})
        assert big.status_code == 413, "FLOWQ_API_MAX_BODY is read"
        definition = {"id": "pid", "tasks": [py("a", "sleep", params={"seconds": 0.01})]}
        assert http.post("/workflows", json=definition).status_code == 201
        eid = http.post("/workflows/pid/executions", json={}).json()["execution_id"]
        for _ in range(200):
            doc = http.get(f"/executions/{eid}").json()
            if doc["state"] == "completed":
                break
            time.sleep(0.05)
        assert doc["state"] == "completed", doc
        assert doc["tasks"]["a"]["result"]["pid"] == api.pid, "embedded: run by the API process"
    log = (tmp_path / "api.log").read_text()
    assert "Uvicorn running on http://127.0.0.1:" in log


def test_a_bad_body_limit_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    env = embedded_env(tmp_path, FLOWQ_API_MAX_BODY="lots")
    done = subprocess.run(
        [sys.executable, "-m", "flowq.cli", "api", "--port", "1"],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "FLOWQ_API_MAX_BODY='lots': expected a number of bytes, e.g. 1048576"
    ]
