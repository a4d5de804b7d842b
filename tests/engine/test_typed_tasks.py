"""The http, sql and file task types and templates, through workflows on the embedded default."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from flowq import Client
from tests.conftest import ROOT
from tests.engine.conftest import Run, py
from tests.history_check import assert_legal_history

INJECTION = "'; DROP TABLE inventory; --"


# -- a real HTTP server on 127.0.0.1 ----------------------------------------------------------


@dataclass
class Server:
    """What the test server saw, and how it should answer."""

    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)
    failures: dict[str, int] = field(default_factory=dict)  # path -> 503s before a 200
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer
    state: Server

    def _answer(self) -> None:
        state = self.state
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        is_json = bool(raw) and "json" in self.headers.get("Content-Type", "")
        state.hits[parts.path] += 1
        state.seen.append(
            {
                "method": self.command,
                "path": parts.path,
                "query": {k: v[0] for k, v in parse_qs(parts.query).items()},
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "json": json.loads(raw) if is_json else None,
            }
        )
        if parts.path == "/hang":
            state.release.wait(60)  # never answers while the test runs
            return
        if parts.path == "/missing":
            self._send(404, {"error": "no such thing"})
        elif parts.path == "/text":
            self._send(200, "hello", "text/plain")
        elif parts.path.startswith("/flaky"):
            if state.hits[parts.path] <= state.failures.get(parts.path, 0):
                self._send(503, {"error": "try later"})
            else:
                self._send(200, {"attempt": state.hits[parts.path]})
        else:
            self._send(200, state.seen[-1])

    do_GET = do_POST = do_PUT = _answer

    def _send(self, status: int, doc: Any, kind: str = "application/json") -> None:
        data = (doc if isinstance(doc, str) else json.dumps(doc)).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    _Handler.state = state
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()


def http(task_id: str, url: str, deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "type": "http", "url": url, "depends_on": list(deps), **extra}


def only(doc: dict[str, Any], task_id: str) -> dict[str, Any]:
    task: dict[str, Any] = doc["tasks"][task_id]
    return task


# -- http -------------------------------------------------------------------------------------


def test_http_request_is_templated_and_its_result_flows_on(run: Run, server: Server) -> None:
    doc = run(
        {
            "id": "http_ok",
            "tasks": [
                py("order", "value", params={"value": {"id": 7, "amount": 12.5}}),
                http(
                    "post",
                    "{{ vars.base }}/echo",
                    ("order",),
                    method="POST",
                    headers={"X-Order": "{{ results.order.id }}"},
                    params={"q": "{{ vars.q }}"},
                    json={
                        "amount": "{{ results.order.amount }}",
                        "note": "order {{ results.order.id }}",
                    },
                ),
                http("text", "{{ vars.base }}/text", ("order",)),
                py("big", "echo", ("post",), when="results.post.body.json.amount > 10"),
                py("small", "echo", ("post",), when="results.post.body.json.amount <= 10"),
            ],
        },
        vars={"base": server.url, "q": "a b&c"},
    )
    assert doc["state"] == "completed", doc
    post = only(doc, "post")["result"]
    assert post["status"] == 200
    assert post["headers"]["content-type"] == "application/json"
    seen = post["body"]
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/echo", {"q": "a b&c"})
    assert seen["headers"]["x-order"] == "7"
    assert seen["json"] == {"amount": 12.5, "note": "order 7"}  # a whole {{ }} keeps its type
    assert only(doc, "text")["result"]["body"] == "hello"
    assert (only(doc, "big")["state"], only(doc, "small")["state"]) == ("succeeded", "skipped")


def test_http_5xx_is_retried_until_it_answers(run: Run, server: Server, client: Client) -> None:
    server.failures["/flaky/a"] = 2
    doc = run(
        {
            "id": "http_5xx",
            "tasks": [http("call", f"{server.url}/flaky/a", retries=3, retry_backoff=0.05)],
        }
    )
    call = only(doc, "call")
    assert (doc["state"], call["state"], call["attempts"]) == ("completed", "succeeded", 3)
    assert call["result"]["body"] == {"attempt": 3}
    assert server.hits["/flaky/a"] == 3
    retried = [h["reason"] for h in client.history(doc["execution_id"]) if h["to"] == "retrying"]
    assert len(retried) == 2
    assert retried[0].startswith(f"TaskError: GET {server.url}/flaky/a: 503 Service Unavailable")


def test_http_unexpected_status_fails_at_once(run: Run, server: Server) -> None:
    doc = run(
        {
            "id": "http_404",
            "tasks": [
                http("strict", f"{server.url}/missing", retries=3, retry_backoff=0.05),
                http("lenient", f"{server.url}/missing", expect_status=[404]),
            ],
        }
    )
    strict = only(doc, "strict")
    assert (strict["state"], strict["attempts"]) == ("failed", 1)
    assert strict["error"] == (
        f"PermanentError: GET {server.url}/missing: 404 Not Found (expected 2xx)"
    )
    assert server.hits["/missing"] == 2  # once for each task: no retry
    lenient = only(doc, "lenient")
    assert lenient["state"] == "succeeded"
    assert lenient["result"]["status"] == 404 and lenient["result"]["body"] == {
        "error": "no such thing"
    }


def test_http_connection_refused_is_retried(run: Run) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = run(
        {
            "id": "http_refused",
            "tasks": [http("call", f"http://127.0.0.1:{port}/x", retries=1, retry_backoff=0.05)],
        }
    )
    call = only(doc, "call")
    assert (call["state"], call["attempts"]) == ("failed", 2)
    assert call["error"] == f"TaskError: GET http://127.0.0.1:{port}/x: Connection refused"


# -- sql --------------------------------------------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "shop.db"
    monkeypatch.setenv("FLOWQ_CONN_SHOP", f"sqlite:///{path}")
    return path


def sql(task_id: str, query: str, deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "sql",
        "connection": "shop",
        "query": query,
        "depends_on": list(deps),
        **extra,
    }


def test_sql_on_sqlite_binds_values_as_data(run: Run, shop: Path) -> None:
    doc = run(
        {
            "id": "sql_sqlite",
            "tasks": [
                sql(
                    "create", "CREATE TABLE inventory (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL)"
                ),
                sql(
                    "insert",
                    "INSERT INTO inventory (sku, qty) VALUES (:sku, :qty), ('A1', 10)",
                    ("create",),
                    params={"sku": "{{ vars.sku }}", "qty": "{{ vars.qty }}"},
                    expect_rowcount=2,
                ),
                sql(
                    "reserve",
                    "UPDATE inventory SET qty = qty - :q WHERE sku = :sku AND qty >= :q",
                    ("insert",),
                    params={"q": 4, "sku": "A1"},
                    expect_rowcount=1,
                ),
                sql(
                    "select",
                    "SELECT sku, qty FROM inventory ORDER BY qty",
                    ("reserve",),
                ),
                sql(
                    "lookup",
                    "SELECT qty FROM inventory WHERE sku = :sku",
                    ("select",),
                    params={"sku": "{{ vars.sku }}"},
                ),
                py(
                    "report",
                    "echo",
                    ("lookup",),
                    params={"qty": "{{ results.lookup.rows[0].qty }}"},
                ),
            ],
        },
        vars={"sku": INJECTION, "qty": 3},
    )
    assert doc["state"] == "completed", doc
    assert only(doc, "insert")["result"] == {"rowcount": 2}
    assert only(doc, "reserve")["result"] == {"rowcount": 1}
    assert only(doc, "select")["result"] == {
        "rowcount": 2,
        "rows": [{"sku": INJECTION, "qty": 3}, {"sku": "A1", "qty": 6}],
    }
    assert only(doc, "report")["result"]["params"] == {"qty": 3}
    with sqlite3.connect(shop) as conn:  # the table is still there, holding the string as data
        assert conn.execute("SELECT sku FROM inventory WHERE qty = 3").fetchall() == [(INJECTION,)]


def test_sql_errors_and_rowcount_mismatch_fail_at_once(run: Run, shop: Path) -> None:
    doc = run(
        {
            "id": "sql_fail",
            "tasks": [
                sql("create", "CREATE TABLE inventory (sku TEXT PRIMARY KEY, qty INTEGER)"),
                sql("stock", "INSERT INTO inventory VALUES ('A1', 1)", ("create",)),
                sql(
                    "too_many",
                    "UPDATE inventory SET qty = qty - :q WHERE sku = 'A1' AND qty >= :q",
                    ("stock",),
                    params={"q": 5},
                    expect_rowcount=1,
                    retries=3,
                    retry_backoff=0.05,
                ),
                sql("typo", "SELEC 1", ("stock",), retries=3, retry_backoff=0.05),
            ],
        }
    )
    assert doc["state"] == "failed"
    too_many, typo = only(doc, "too_many"), only(doc, "typo")
    assert (too_many["state"], too_many["attempts"]) == ("failed", 1)
    assert too_many["error"] == (
        "PermanentError: sql connection 'shop': expected rowcount 1, got 0; rolled back"
    )
    assert (typo["state"], typo["attempts"]) == ("failed", 1)
    assert typo["error"].startswith("PermanentError: sql connection 'shop': OperationalError:")
    assert 'near "SELEC": syntax error' in typo["error"]


def test_sql_unknown_connection_is_a_clear_task_error(run: Run) -> None:
    doc = run(
        {
            "id": "sql_unknown",
            "tasks": [
                {
                    "id": "q",
                    "type": "sql",
                    "connection": "nowhere",
                    "query": "SELECT 1",
                    "retries": 2,
                }
            ],
        }
    )
    q = only(doc, "q")
    assert (q["state"], q["attempts"]) == ("failed", 1)
    assert q["error"] == (
        "PermanentError: sql connection 'nowhere' is not configured: set FLOWQ_CONN_NOWHERE"
    )


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowq.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWQ_")}
    env["FLOWQ_DATABASE_URL"] = f"sqlite:///{tmp_path / 'state.db'}"
    env["FLOWQ_FILE_ROOT"] = str(tmp_path / "files")
    return env


def test_flowq_run_refuses_an_unknown_connection_before_starting(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "id": "needs_db",
                "tasks": [
                    py("first"),
                    {
                        "id": "q",
                        "type": "sql",
                        "connection": "nowhere",
                        "query": "SELECT 1",
                        "depends_on": ["first"],
                    },
                    {"id": "ok", "type": "sql", "connection": "shop", "query": "SELECT 1"},
                ],
            }
        )
    )
    cli_env["FLOWQ_CONN_SHOP"] = f"sqlite:///{tmp_path / 'shop.db'}"
    res = _cli(cli_env, "run", str(path))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"{path}: task 'q': sql connection 'nowhere' is not configured: "
        "set FLOWQ_CONN_NOWHERE to its SQLAlchemy URL"
    ]
    assert "started" not in res.stdout
    listed = _cli(cli_env, "list", "--json")
    assert (
        listed.returncode == 0 and json.loads(listed.stdout) == []
    )  # nothing ran, not even `first`
    cli_env["FLOWQ_CONN_NOWHERE"] = f"sqlite:///{tmp_path / 'other.db'}"
    again = _cli(cli_env, "run", str(path), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["tasks"]["q"]["result"] == {"rowcount": 1, "rows": [{"1": 1}]}


# -- file -------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("FLOWQ_FILE_ROOT", str(root))
    return root


def file(task_id: str, operation: str, deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "file",
        "operation": operation,
        "depends_on": list(deps),
        **extra,
    }


def test_file_operations_through_a_workflow(run: Run, files: Path) -> None:
    doc = run(
        {
            "id": "files",
            "tasks": [
                py("order", "value", params={"value": {"id": 42, "total": 19.98}}),
                file(
                    "write",
                    "write",
                    ("order",),
                    path="orders/{{ vars.day }}/{{ results.order.id }}.json",
                    content="{{ results.order | tojson }}",
                ),
                file(
                    "append",
                    "append",
                    ("write",),
                    path="log/{{ vars.day }}.txt",
                    content="order {{ results.order.id }}\n",
                ),
                file("read", "read", ("write",), path="{{ results.write.path }}"),
                file(
                    "copy", "copy", ("read",), path="{{ results.write.path }}", to="backup/42.json"
                ),
                file("mkdir", "mkdir", ("copy",), path="archive"),
                file("move", "move", ("mkdir",), path="backup/42.json", to="archive/42.json"),
                file("list", "list", ("move", "append"), path="."),
                file("delete", "delete", ("list",), path="log/{{ vars.day }}.txt"),
            ],
        },
        vars={"day": "2024-05-01"},
    )
    assert doc["state"] == "completed", doc
    body = '{"id": 42, "total": 19.98}'
    result = {tid: task["result"] for tid, task in doc["tasks"].items()}
    assert result["write"] == {"path": "orders/2024-05-01/42.json", "bytes": len(body)}
    assert result["read"]["content"] == body
    assert result["copy"]["path"] == "backup/42.json"
    assert result["move"]["path"] == "archive/42.json"
    assert result["list"]["entries"] == ["archive/", "backup/", "log/", "orders/"]
    assert result["delete"]["path"] == "log/2024-05-01.txt"
    assert (files / "archive" / "42.json").read_text() == body
    assert not (files / "backup" / "42.json").exists()
    assert not (files / "log" / "2024-05-01.txt").exists()


def _escapes(operation: str, kind: str) -> dict[str, Any]:
    bad = {"dotdot": "../outside.txt", "absolute": "/etc/hostname", "symlink": "link/secret.txt"}[
        kind
    ]
    extra: dict[str, Any] = {"path": bad}
    if operation in ("copy", "move"):
        extra = (
            {"path": "inside.txt", "to": bad} if kind != "symlink" else {"path": bad, "to": "x.txt"}
        )
    if operation in ("write", "append"):
        extra["content"] = "data"
    return file(f"{operation}_{kind}", operation, retries=2, retry_backoff=0.05, **extra)


def test_paths_leaving_the_root_fail_at_once_for_every_operation(
    run: Run, files: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (files / "link").symlink_to(outside)
    (files / "inside.txt").write_text("inside")
    operations = ("read", "write", "append", "copy", "move", "delete", "mkdir", "list")
    kinds = ("dotdot", "absolute", "symlink")
    doc = run(
        {"id": "escape", "tasks": [_escapes(op, kind) for op in operations for kind in kinds]}
    )
    assert doc["state"] == "failed"
    for op in operations:
        for kind in kinds:
            task = only(doc, f"{op}_{kind}")
            assert (task["state"], task["attempts"]) == ("failed", 1), (op, kind, task)
            assert task["error"].startswith(f"PermanentError: file {op}: "), task["error"]
            reason = "is absolute" if kind == "absolute" else "escapes FLOWQ_FILE_ROOT"
            assert reason in task["error"], task["error"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert not (tmp_path / "outside.txt").exists()
    assert (files / "inside.txt").read_text() == "inside"


# -- templates --------------------------------------------------------------------------------


def test_templates_cannot_reach_python_internals(run: Run, client: Client, server: Server) -> None:
    doc = run(
        {
            "id": "sandbox",
            "tasks": [
                py("mro", "echo", params={"x": "{{ ''.__class__.__mro__ }}"}, retries=3),
                http("url", "{{ vars.__class__.__init__.__globals__ }}", retries=3),
                py("cond", "echo", when="''.__class__", retries=3),
                py("after", "echo", ("cond",)),
            ],
        }
    )
    assert doc["state"] == "failed"
    mro, url, cond = only(doc, "mro"), only(doc, "url"), only(doc, "cond")
    assert (mro["state"], mro["attempts"]) == ("failed", 1)
    assert mro["error"] == (
        "PermanentError: template error in params.x: "
        "access to attribute '__class__' of 'str' object is unsafe"
    )
    assert (url["state"], url["attempts"]) == ("failed", 1)
    assert url["error"].startswith("PermanentError: template error in url: ")
    assert "unsafe" in url["error"]
    assert (cond["state"], cond["attempts"]) == ("failed", 0)  # decided before it was queued
    assert "unsafe" in cond["error"] and "\n" not in cond["error"]
    assert only(doc, "after")["state"] == "upstream_failed"
    assert server.seen == []
    assert_legal_history(client.history(doc["execution_id"]))


def test_flowq_validate_names_the_task_whose_template_does_not_parse(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "id": "bad_templates",
                "tasks": [
                    py("a"),
                    http("call", "{{ vars.base", ("a",)),
                    py("cond", deps=("a",), when="results.a ==", params={"x": "{% if %}"}),
                ],
            }
        )
    )
    res = _cli(cli_env, "validate", str(path))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"{path}: task 'call': url: template does not parse: unexpected end of template, "
        "expected 'end of print statement'.",
        f"{path}: task 'cond': params.x: template does not parse: Expected an expression, "
        "got 'end of statement block'",
        f"{path}: task 'cond': when: does not parse: unexpected 'end of template'",
    ]
