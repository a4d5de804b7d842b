"""The `flowq` command on the embedded default: validate, plan, run, control."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowq.cli import STORE_RETRY_SECONDS
from flowq.cli_servers import check_listen
from flowq.errors import FlowqError
from flowq.store.migrate import HEAD
from tests.conftest import ROOT, fresh_postgres_database
from tests.engine.conftest import py


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWQ_")}
    base.update(
        {
            "FLOWQ_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
            "FLOWQ_FILE_ROOT": str(tmp_path / "files"),
        }
    )
    return base


def flowq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowq.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write(tmp_path: Path, definition: dict[str, Any], name: str = "wf.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return str(path)


def test_validate_ok_and_each_problem_on_one_line(env: dict[str, str], tmp_path: Path) -> None:
    good = write(tmp_path, {"id": "ok", "tasks": [py("a")]}, "good.yaml")
    res = flowq(env, "validate", good, str(ROOT / "examples" / "order_processing.yaml"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"{good}: ok",
        f"{ROOT / 'examples' / 'order_processing.yaml'}: ok",
    ]
    bad = write(tmp_path, {"id": "bad", "tasks": [
        py("a"), py("b", deps=("a",)), py("c", deps=("b",)),
        py("d", deps=("nope",)), {"id": "e", "type": "shell"},
        py("f", retries=-1), {"id": "g", "type": "python", "handler": "no_colon"},
        py("h", when="results.zz == 1"), py("i", when="(("), py("a"),
    ]}, "bad.yaml")  # fmt: skip
    res = flowq(env, "validate", bad)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert all(line.startswith(f"{bad}: ") for line in lines), lines
    text = res.stderr
    for needle in (
        "duplicate",
        "'d'",
        "nope",
        "'e'",
        "shell",
        "'f'",
        "retries",
        "'g'",
        "module",
        "'h'",
        "zz",
        "'i'",
    ):
        assert needle in text, f"{needle!r} missing from: {text}"
    assert "Traceback" not in text


def test_validate_names_a_cycle(env: dict[str, str], tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        {"id": "cyc", "tasks": [py("a", deps=("c",)), py("b", deps=("a",)), py("c", deps=("b",))]},
    )
    res = flowq(env, "validate", bad)
    assert res.returncode == 2
    assert "cycle" in res.stderr and "a" in res.stderr and "->" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_plan_prints_the_canvas(env: dict[str, str]) -> None:
    res = flowq(env, "plan", str(ROOT / "examples" / "order_processing.yaml"))
    assert res.returncode == 0, res.stderr
    assert "chord(" in res.stdout and "group(" in res.stdout and "chain(" in res.stdout
    as_json = json.loads(
        flowq(env, "plan", str(ROOT / "examples" / "order_processing.yaml"), "--json").stdout
    )
    assert as_json["joins"] == {}


def test_plan_shows_coordinator_joins(env: dict[str, str], tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"id": "nsp", "tasks": [py("a"), py("b"), py("c", deps=("a",)), py("d", deps=("a", "b"))]},
    )
    res = flowq(env, "plan", path)
    assert res.returncode == 0
    assert "coordinator joins" in res.stdout and "d" in res.stdout


def test_run_prints_progress_and_exits_zero(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "FLOWQ_CONN_SHOP": f"sqlite:///{tmp_path / 'shop.db'}"}
    res = flowq(
        env,
        "run",
        str(ROOT / "examples" / "order_processing.yaml"),
        "--var",
        "order_id=42",
        "--var",
        "sku=WIDGET-1",
        "--var",
        "quantity=2",
    )
    assert res.returncode == 0, res.stderr
    assert "validate_order running" in res.stdout
    assert "completed" in res.stdout


def test_run_json_prints_only_the_status_document(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "j", "tasks": [py("a", "echo", params={"x": "{{ vars.x }}"})]})
    res = flowq(env, "run", path, "--var", "x=[1, 2]", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["state"] == "completed"
    assert doc["tasks"]["a"]["result"]["params"] == {"x": [1, 2]}
    assert set(doc) >= {
        "execution_id",
        "workflow_id",
        "version",
        "state",
        "vars",
        "priority",
        "created_at",
        "updated_at",
        "error",
        "tasks",
    }
    assert set(doc["tasks"]["a"]) == {
        "state",
        "attempts",
        "result",
        "error",
        "started_at",
        "finished_at",
    }


def test_run_failure_exits_one_and_names_task_and_exception(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        {
            "id": "f",
            "tasks": [
                py("charge", "flaky", params={"failures": 2}, retries=1, retry_backoff=0.01),
                py("ship", deps=("charge",)),
            ],
        },
    )
    res = flowq(env, "run", path)
    assert res.returncode == 1
    assert "task 'charge' failed: RuntimeError: flaky failure on attempt 2" in res.stdout
    assert "ship" in res.stdout and "upstream_failed" in res.stdout


def test_bad_input_is_one_line_with_exit_two(env: dict[str, str], tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "id": "v",
            "inputs": {
                "type": "object",
                "required": ["n"],
                "properties": {"n": {"type": "integer"}},
            },
            "tasks": [py("a")],
        },
    )
    res = flowq(env, "run", path, "--var", "n=oops")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "n" in res.stderr
    res = flowq(env, "run", path, "--var", "novalue")
    assert res.returncode == 2 and "expected KEY=VALUE" in res.stderr
    res = flowq(env, "run", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    res = flowq(env, "frobnicate")
    assert res.returncode == 2


def test_refused_transition_exits_one_naming_the_state(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "done", "tasks": [py("a")]})
    doc = json.loads(flowq(env, "run", path, "--json").stdout)
    res = flowq(env, "pause", doc["execution_id"])
    assert res.returncode == 1
    assert "'completed'" in res.stderr and "pause" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = flowq(env, "retry", doc["execution_id"])
    assert res.returncode == 1 and "'completed'" in res.stderr


class _EndsBetweenReads:
    """A client whose execution ends while `flowq run` follows it: its last task's success
    and the end are committed right after each read (the race `_follow` must not lose)."""

    def __init__(self) -> None:
        self.events = [{"id": 1, "task_id": "a", "to": "running", "reason": None}]
        self.state = "running"

    def _commit_the_end(self) -> None:
        if self.state == "running":
            self.events.append({"id": 2, "task_id": "a", "to": "succeeded", "reason": None})
            self.events.append({"id": 3, "task_id": None, "to": "completed", "reason": None})
            self.state = "completed"

    def history(self, _eid: str) -> list[dict[str, Any]]:
        events = list(self.events)
        self._commit_the_end()
        return events

    def status(self, _eid: str) -> dict[str, Any]:
        doc = {"state": self.state}
        self._commit_the_end()
        return doc


def test_run_prints_the_last_transition_even_when_the_end_lands_between_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flowq.cli import _follow

    doc = _follow(_EndsBetweenReads(), "e1", 0.0, quiet=False)
    assert doc["state"] == "completed"
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["▶ a running", "✓ a succeeded"]


def test_run_json_keeps_what_handlers_print_off_stdout(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "loud", "tasks": [py("a", "chatty")]})
    res = flowq(env, "run", path, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["tasks"]["a"]["result"] == "said"
    assert "a line a handler printed" in res.stderr
    flowq(env, "register", path)
    res = flowq(env, "start", "loud", "--json")  # embedded: the handler runs in this process
    assert json.loads(res.stdout)["state"] == "completed"
    assert "a line a handler printed" in res.stderr


def test_vars_that_are_not_json_are_kept_as_text(env: dict[str, str], tmp_path: Path) -> None:
    """`--var K=V`: V is JSON when it parses as JSON; NaN, Infinity and 1e400 do not."""
    path = write(tmp_path, {"id": "nan", "tasks": [py("a", "echo")]})
    args = ["x=NaN", "y=-Infinity", "z=1e400", "w=[1, Infinity]", "n=2.5", 's=[1, {"a": null}]']
    res = flowq(env, "run", path, "--json", *[a for pair in args for a in ("--var", pair)])
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)  # the document is JSON: a NaN would not parse
    assert doc["vars"] == {
        "x": "NaN",
        "y": "-Infinity",
        "z": "1e400",
        "w": "[1, Infinity]",
        "n": 2.5,
        "s": [1, {"a": None}],
    }


def test_a_vars_file_keeps_dates_as_text_and_refuses_what_is_not_json(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path, {"id": "vf", "tasks": [py("a", "echo")]})
    dated = tmp_path / "dated.yaml"
    dated.write_text("day: 2024-01-01\nat: 2024-01-01 10:00:00\nn: 3\n")
    res = flowq(env, "run", path, "--json", "--vars-file", str(dated))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["vars"] == {
        "day": "2024-01-01",
        "at": "2024-01-01 10:00:00",
        "n": 3,
    }
    binary = tmp_path / "binary.yaml"
    binary.write_text("blob: !!binary aGVsbG8=\n")
    res = flowq(env, "run", path, "--vars-file", str(binary))
    assert res.returncode == 2
    assert (
        res.stderr.strip() == f"--vars-file {binary}: vars.blob: not a JSON value (a Python bytes)"
    )


def test_counts_must_be_positive(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "c", "tasks": [py("a")]})
    for args in (("run", path, "-c", "-1"), ("list", "--limit", "0"), ("worker", "-c", "0")):
        res = flowq(env, *args)
        assert res.returncode == 2, args
        assert "must be a whole number of at least 1" in res.stderr
        assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("start", "w", "--priority", "10"), "flowq start: argument --priority"),
        (("list", "--state", "bogus"), "flowq list: argument --state"),
        (("list", "--limit", "0"), "flowq list: argument --limit"),
        (("db",), "flowq db: the following arguments are required: ACTION"),
        (("db", "downgrade"), "flowq db: argument ACTION"),
        (("worker", "-P", "bogus"), "flowq worker: argument -P/--pool"),
        (("api", "--port", "99999"), "flowq api: argument --port"),
        (("flower", "--port", "70000"), "flowq flower: argument --port"),
        (("nosuchcommand",), "flowq: argument COMMAND"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_command(
    env: dict[str, str], args: tuple[str, ...], names: str
) -> None:
    res = flowq(env, *args)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(names), res.stderr
    assert res.stderr.rstrip().endswith("--help)")


def test_a_server_that_cannot_listen_says_so_in_one_line(env: dict[str, str]) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = str(taken.getsockname()[1])
        for args, where in (
            (("api", "--port", port), f"127.0.0.1:{port}"),
            (("flower", "--port", port), f"*:{port}"),  # Flower listens on every interface
        ):
            res = flowq({**env, "FLOWQ_BROKER_URL": "redis://127.0.0.1:1/0"}, *args)
            assert res.returncode == 1, res.stderr
            assert res.stderr == f"flowq: cannot listen on {where}: Address already in use\n"
    res = flowq(env, "api", "--host", "no-such-host.invalid", "--port", port)
    assert res.returncode == 1
    assert res.stderr.startswith("flowq: cannot listen on no-such-host.invalid:")
    assert res.stderr.count("\n") == 1


def test_a_reader_that_goes_away_is_not_an_error_message(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path, {"id": "many", "tasks": [py("a")]})
    for _ in range(3):
        flowq(env, "run", path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowq.cli", "list", "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `flowq list --json | head -0` does
    proc.wait(timeout=60)
    assert proc.stderr.read() == b""


def test_debug_goes_before_or_after_the_command(env: dict[str, str]) -> None:
    quiet = flowq(env, "status", "nope")
    assert quiet.returncode == 1
    assert quiet.stderr.strip() == "flowq: execution nope not found"
    for args in (("--debug", "status", "nope"), ("status", "nope", "--debug")):
        loud = flowq(env, *args)
        assert loud.returncode == 1, args
        assert "Traceback" in loud.stderr and "NotFound: execution nope not found" in loud.stderr


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("FLOWQ_DATABASE_URL", "notaurl", "FLOWQ_DATABASE_URL: not a database URL; e.g. sqlite"),
        ("FLOWQ_DATABASE_URL", "mysql://u@h/db", "FLOWQ_DATABASE_URL: flowq keeps its state in"),
        ("FLOWQ_BROKER_URL", "foo://:pw@x", "FLOWQ_BROKER_URL: kombu knows no broker transport"),
        ("FLOWQ_BROKER_URL", "127.0.0.1:6379", "FLOWQ_BROKER_URL: not a broker URL (no scheme"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_starts_nothing(
    env: dict[str, str], tmp_path: Path, variable: str, value: str, says: str
) -> None:
    path = write(tmp_path, {"id": "w", "tasks": [py("a")]})
    assert flowq(env, "register", path).returncode == 0
    res = flowq({**env, variable: value}, "start", "w")
    assert res.returncode == 2
    assert res.stderr.startswith(says) and res.stderr.count("\n") == 1, res.stderr
    assert "pw" not in res.stderr  # a URL's password is never echoed
    assert flowq(env, "list", "--json").stdout.strip() == "[]"


def test_a_setting_is_checked_by_the_commands_that_use_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path, {"id": "w", "tasks": [py("a")]})
    bad_broker = {**env, "FLOWQ_BROKER_URL": "foo://x"}
    assert flowq(bad_broker, "run", path).returncode == 0  # embedded: no broker used
    assert flowq(bad_broker, "db", "upgrade").returncode == 0
    res = flowq(
        {**env, "FLOWQ_DATABASE_URL": "mysql://u@h/db", "FLOWQ_BROKER_URL": "foo://x"}, "flower"
    )
    assert res.returncode == 2 and res.stderr.startswith("FLOWQ_BROKER_URL:"), res.stderr


def test_listening_on_ipv6_any_is_not_refused_for_an_ipv4_listener() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        try:
            check_listen("::", port)  # uvicorn would listen there (IPv6 only), as asyncio does
        except FlowqError as exc:
            if "Address family" in str(exc) or "not available" in str(exc):
                pytest.skip(f"no IPv6 here: {exc}")
            raise
        with pytest.raises(FlowqError, match="Address already in use"):
            check_listen("0.0.0.0", port)


def test_a_conflict_on_one_file_stores_the_others(env: dict[str, str], tmp_path: Path) -> None:
    first = write(tmp_path, {"id": "c1", "tasks": [py("a")]}, "c1.yaml")
    assert flowq(env, "register", first).returncode == 0
    changed = write(tmp_path, {"id": "c1", "tasks": [py("b")]}, "changed.yaml")
    other = write(tmp_path, {"id": "c2", "tasks": [py("a")]}, "c2.yaml")
    res = flowq(env, "register", first, changed, other)
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        f"{first}: registered c1@1 (unchanged)",
        f"{other}: registered c2@1",
    ]
    assert res.stderr.startswith(f"{changed}: ") and res.stderr.count("\n") == 1, res.stderr
    assert "c1 version 1 is already registered with a different definition" in res.stderr


def test_an_empty_idempotency_key_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "k", "tasks": [py("a")]})
    assert flowq(env, "register", path).returncode == 0
    res = flowq(env, "start", "k", "--idempotency-key", "")
    assert (res.returncode, res.stderr) == (
        2,
        "idempotency_key: must be 1 to 200 characters long (got 0)\n",
    )
    assert flowq(env, "list", "--json").stdout.strip() == "[]"


@pytest.mark.integration
def test_a_store_not_set_up_or_missing_is_said_in_one_line(env: dict[str, str]) -> None:
    with fresh_postgres_database("flowq_cli_store") as url:
        pg = {**env, "FLOWQ_DATABASE_URL": url}
        for args in (("list",), ("status", "x"), ("start", "w")):
            res = flowq(pg, *args)
            assert (res.returncode, res.stderr) == (
                1,
                "flowq: the state store has no flowq tables: run `flowq db upgrade` first\n",
            ), args
        res = flowq(pg, "db", "upgrade")
        assert res.stdout.startswith(f"state tables created (revision {HEAD}) in postgresql")
        res = flowq(pg, "db", "upgrade")
        assert res.stdout.startswith("state tables are up to date in postgresql")
        # SQLAlchemy's default Postgres driver is psycopg2; flowq's is psycopg, which it uses
        bare = url.replace("postgresql+psycopg://", "postgresql://")
        assert flowq({**env, "FLOWQ_DATABASE_URL": bare}, "list").returncode == 0
        gone = url.rsplit("/", 1)[0] + "/flowq_no_such_database"
        res = flowq({**env, "FLOWQ_DATABASE_URL": gone}, "list")  # refused for good: no retry
        assert res.returncode == 1
        assert res.stderr.startswith("flowq: state store unavailable: connection failed:")
        assert 'database "flowq_no_such_database" does not exist' in res.stderr
        assert res.stderr.count("\n") == 1


def test_a_store_that_does_not_answer_is_retried_a_while_then_said(env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens: connections are refused
    url = f"postgresql+psycopg://flowq@127.0.0.1:{port}/flowq"
    distributed = {**env, "FLOWQ_DATABASE_URL": url, "FLOWQ_BROKER_URL": "redis://127.0.0.1:1/0"}
    began = time.monotonic()
    res = flowq(distributed, "list")  # (embedded, the command's tasks would wait 60 s)
    waited = time.monotonic() - began
    assert STORE_RETRY_SECONDS / 2 < waited < STORE_RETRY_SECONDS + 10
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 2, lines  # the retry said once, then the error
    assert lines[0].startswith("state store unavailable (") and "retrying for up to" in lines[0]
    assert lines[1].startswith("flowq: state store unavailable: connection failed:")
    assert "Connection refused" in lines[1]
