"""Schemathesis against the live /openapi.json of `flowq api`: no 5xx, no schema violations.

It runs every check (server errors, status codes, content types, response schemas and
headers, negative data rejected, auth enforced, methods, use after free...) in every phase
(schema examples, coverage, fuzzing, and stateful sequences through the OpenAPI links).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.api.conftest import embedded_env, flowq_api_process
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40
# Positive data the schema allows can still be refused by the meaning of the request, as
# SPEC section 5 requires: a definition that fails `flowq validate`, vars that fail the
# workflow's `inputs`, a cursor naming no execution. Everything else must be accepted.
# A start after a registration may name a `version` in its body that was never registered:
# its 404 is right, not a "created resource not found" (ST302 looks only at the path). The
# stateful phase's own checks take precedence over an operation's (Schemathesis' order:
# operation phase, phase, operation), so the exclusion is repeated for that phase. Every other
# check runs for every operation (the default).
CONFIG = """
[[operations]]
include-operation-id = ["registerWorkflow", "startExecution", "listExecutions"]
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 404, 409, 422]
checks.ensure_resource_availability.enabled = false
phases.stateful.checks.ensure_resource_availability.enabled = false
"""


@pytest.mark.parametrize("token", [None, "fuzz-token"], ids=["open", "with-token"])
def test_schemathesis_finds_nothing(tmp_path: Path, token: str | None) -> None:
    env = embedded_env(tmp_path, **({"FLOWQ_API_TOKEN": token} if token else {}))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    log = tmp_path / "api.log"
    with flowq_api_process(env, log) as api:
        url = api.url
        example = yaml.safe_load((ROOT / "examples" / "order_processing.yaml").read_text())
        registered = httpx.post(f"{url}/workflows", json=example, headers=headers)
        assert registered.status_code == 201, registered.text
        argv = [
            str(Path(sys.executable).parent / "st"),
            "--config-file",
            str(config),
            "run",
            f"{url}/openapi.json",
            # No `--checks all`: every check is on by default, and checks named on the command
            # line override the configuration's per-operation exclusion above.
            "--max-examples",
            str(MAX_EXAMPLES),
            # One worker: with two, CPython 3.11's `ast` module can fail inside Schemathesis
            # ("SystemError: AST constructor recursion depth mismatch"), a tool error.
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--no-color",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(tmp_path / "events.ndjson"),
        ]
        for name, value in headers.items():
            argv += ["--header", f"{name}: {value}"]
        done = subprocess.run(
            argv, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "Test cases:" in output and " passed" in output, output[-3000:]
    assert "Traceback" not in log.read_text(), "the API logged a genuine bug"
    tested = _operations_tested(tmp_path / "events.ndjson")
    assert len(tested) == 13, f"only {sorted(tested)} were fuzzed"


def _operations_tested(events: Path) -> set[str]:
    """Operations Schemathesis fuzzed (not skipped), from its ndjson event report."""
    tested = set()
    for line in events.read_text().splitlines():
        scenario = json.loads(line).get("ScenarioFinished")
        if scenario and scenario["phase"] == "fuzzing" and scenario["status"] != "skip":
            tested.add(scenario["recorder"]["label"])
    return tested
