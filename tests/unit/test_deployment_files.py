"""The deployment files agree with SPEC: compose commands and variables, CI, Makefile, README.

No Docker engine is needed: docker-compose.yml is read as YAML. The flowq CLI is not imported;
SPEC section 3 is restated here so that a compose command the CLI would reject fails this test.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flowq.context import TaskContext
from flowq.errors import PermanentError

ROOT = Path(__file__).resolve().parents[2]

SPEC_COMMANDS = {
    "validate",
    "plan",
    "run",
    "register",
    "start",
    "status",
    "history",
    "list",
    "pause",
    "resume",
    "cancel",
    "retry",
    "worker",
    "api",
    "flower",
    "db",
}
# Options (each taking one value) of the long-running commands a deployment starts, per SPEC §3.
SPEC_OPTIONS = {"worker": {"-c", "-Q"}, "api": {"--host", "--port"}, "flower": {"--port"}}
INTEGER_OPTIONS = {"-c", "--port"}
SPEC_VARIABLES = {
    "FLOWQ_BROKER_URL",
    "FLOWQ_RESULT_BACKEND",
    "FLOWQ_DATABASE_URL",
    "FLOWQ_FILE_ROOT",
    "FLOWQ_API_TOKEN",
}
FLOWQ_SERVICES = {"migrate", "worker", "api", "flower"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {name: (value if sep else None) for name, sep, value in pairs}
    return {name: None if value is None else str(value) for name, value in env.items()}


def _check_cli(argv: list[str]) -> None:
    """Fail unless argv is a flowq command line that SPEC §3 accepts."""
    assert argv[0] == "flowq", argv
    assert len(argv) >= 2 and argv[1] in SPEC_COMMANDS, f"unknown subcommand in {argv}"
    command, args = argv[1], argv[2:]
    if command == "db":
        assert args == ["upgrade"], argv
        return
    allowed = SPEC_OPTIONS.get(command, set())
    while args:
        option, _, inline = args.pop(0).partition("=")
        assert option in allowed, f"{option} is not an option of `flowq {command}`"
        value = inline or (args.pop(0) if args else "")
        assert value and not value.startswith("-"), f"{option} needs a value in {argv}"
        if option in INTEGER_OPTIONS:
            assert value.isdigit() and int(value) > 0, f"{option} {value!r} is not a count/port"


@pytest.mark.parametrize(
    "argv",
    [
        ["flowq", "worker", "-x", "4"],
        ["flowq", "worker", "-c"],
        ["flowq", "api", "--port", "http"],
        ["flowq", "db", "migrate"],
        ["flowq", "serve"],
        ["celery", "worker"],
    ],
)
def test_cli_check_rejects_what_spec_does_not_allow(argv: list[str]) -> None:
    with pytest.raises(AssertionError):
        _check_cli(argv)


def test_compose_has_the_six_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "postgres", *FLOWQ_SERVICES}


@pytest.mark.parametrize("name", sorted(FLOWQ_SERVICES))
def test_flowq_services_run_spec_commands(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    argv = _argv(service)
    _check_cli(argv)
    expected = {"migrate": "db", "worker": "worker", "api": "api", "flower": "flower"}[name]
    assert argv[1] == expected
    assert service["build"] == "." or service["build"]["context"] == "."


@pytest.mark.parametrize("name", sorted(FLOWQ_SERVICES))
def test_flowq_services_use_only_spec_variables(compose: dict[str, Any], name: str) -> None:
    env = _environment(compose["services"][name])
    unknown = {v for v in env if v not in SPEC_VARIABLES and not re.fullmatch(r"FLOWQ_CONN_\w+", v)}
    assert not unknown, f"{name} uses variables outside SPEC §4: {sorted(unknown)}"
    assert env["FLOWQ_BROKER_URL"] == "redis://redis:6379/0"
    assert env["FLOWQ_DATABASE_URL"], "no state store configured"
    assert env["FLOWQ_FILE_ROOT"] == "/data/files"


def test_database_url_matches_postgres_service(compose: dict[str, Any]) -> None:
    postgres = _environment(compose["services"]["postgres"])
    url = _environment(compose["services"]["worker"])["FLOWQ_DATABASE_URL"]
    match = re.fullmatch(r"postgresql\+psycopg://(\w+)(?::([^@]+))?@postgres:5432/(\w+)", url or "")
    assert match, url
    user, password, database = match.groups()
    assert (user, database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])
    if postgres.get("POSTGRES_HOST_AUTH_METHOD") != "trust":
        assert password == postgres["POSTGRES_PASSWORD"]


def test_file_root_is_a_named_volume_shared_by_flowq_services(compose: dict[str, Any]) -> None:
    for name in FLOWQ_SERVICES:
        mounts = {
            str(m).split(":")[1]: str(m).split(":")[0] for m in compose["services"][name]["volumes"]
        }
        assert mounts.get("/data/files") == "files", name
    assert "files" in compose["volumes"]


def test_worker_waits_for_migration_and_broker_and_can_scale(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "container_name" not in worker and "ports" not in worker, "--scale worker=N would clash"
    migrate = compose["services"]["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    tests = {
        name: " ".join(services[name]["healthcheck"]["test"])
        for name in ("redis", "postgres", "api")
    }
    assert "redis-cli ping" in tests["redis"]
    assert "pg_isready" in tests["postgres"]
    assert "127.0.0.1:8000/healthz" in tests["api"]
    assert "8000:8000" in services["api"]["ports"]
    assert "5555:5555" in services["flower"]["ports"]


def test_dockerfile_installs_the_package_as_a_non_root_user() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim" in lines
    assert "RUN pip install ." in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}


def test_ci_runs_make_test() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    commands = [line.split("#")[0].strip() for line in script.splitlines()]
    assert any(re.match(r"make test(\s|$)", c) for c in commands), "no `make test` in .ci/run"


def _makefile_recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{target}\s*:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_readme_opens_with_make_demo_and_make_test() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```[^\n]*\n(.*?)```", readme, re.S)
    assert first_block
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert "make demo" in commands and "make test" in commands


def test_makefile_test_runs_pytest() -> None:
    assert any(re.search(r"\bpytest\b", line) for line in _makefile_recipe("test"))


def test_makefile_demo_vars_satisfy_the_example_inputs() -> None:
    (run,) = [line for line in _makefile_recipe("demo") if " run " in line]
    argv = shlex.split(run)
    assert argv[1:3] == ["run", "examples/order_processing.yaml"]
    pairs = [argv[i + 1].partition("=") for i, a in enumerate(argv) if a == "--var"]
    variables = {k: _parse_var(v) for k, _, v in pairs}
    schema = yaml.safe_load((ROOT / "examples" / "order_processing.yaml").read_text())["inputs"]
    jsonschema.validators.validator_for(schema).check_schema(schema)
    jsonschema.validate(variables, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**variables, "quantity": 0}, schema)


def _parse_var(value: str) -> Any:
    """SPEC §3: V is JSON when it parses, else a string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


@pytest.mark.parametrize(
    "variables",
    [
        {"order_id": 42, "sku": "WIDGET-1", "quantity": 0},
        {"order_id": "42", "sku": "WIDGET-1", "quantity": 2},
        {"order_id": 42, "sku": "", "quantity": 2},
        {"order_id": 42, "sku": "WIDGET-1"},
    ],
)
def test_invalid_orders_fail_permanently(variables: dict[str, Any]) -> None:
    from examples.orders import validate_order

    ctx = TaskContext(
        vars=variables, params={}, results={}, execution_id="e1", task_id="validate_order"
    )
    with pytest.raises(PermanentError):
        validate_order(ctx)
