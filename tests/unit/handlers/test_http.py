"""The http handler against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import multiprocessing
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from flowq.context import TaskContext
from flowq.errors import PermanentError, TaskError
from workers.handlers import http

CTX = TaskContext(vars={}, params={}, results={}, execution_id="e1", task_id="t1")


class _Handler(BaseHTTPRequestHandler):
    """Routes: /echo (what the server received), /text, /status/<n>, /slow?seconds=<s>."""

    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _route(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if parts.path == "/echo":
            received = {
                "method": self.command,
                "path": parts.path,
                "query": parse_qs(parts.query),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": raw.decode("utf-8"),
                "client_port": self.client_address[1],
            }
            self._send(200, json.dumps(received).encode(), "application/json", {"X-Trace": "abc"})
        elif parts.path == "/text":
            self._send(200, b"hello, world", "text/plain; charset=utf-8")
        elif parts.path.startswith("/status/"):
            code = int(parts.path.rsplit("/", 1)[1])
            self._send(code, json.dumps({"code": code}).encode(), "application/json")
        elif parts.path == "/slow":
            time.sleep(float(parse_qs(parts.query)["seconds"][0]))
            self._send(200, b'{"slow": true}', "application/json")
        else:
            self._send(404, b"no such route", "text/plain")

    def _send(
        self, code: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client that timed out has gone; report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run(**spec: Any) -> Any:
    return http.execute({"id": "t1", "type": "http", **spec}, CTX)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_get_returns_status_lowercased_headers_and_parsed_json(base_url: str) -> None:
    result = run(method="GET", url=f"{base_url}/echo")
    assert result["status"] == 200
    assert result["headers"]["x-trace"] == "abc"
    assert result["headers"]["content-type"] == "application/json"
    assert result["body"]["method"] == "GET"
    json.dumps(result)  # the result is stored as JSON


def test_method_defaults_to_get(base_url: str) -> None:
    assert run(url=f"{base_url}/echo")["body"]["method"] == "GET"


def test_text_body_is_returned_as_text(base_url: str) -> None:
    assert run(method="GET", url=f"{base_url}/text")["body"] == "hello, world"


def test_post_json_sends_json_headers_and_query_params(base_url: str) -> None:
    result = run(
        method="post",
        url=f"{base_url}/echo",
        headers={"X-Order": 42, "Authorization": "Bearer s3cret"},
        params={"page": 2, "tag": ["a", "b"]},
        json={"order_id": 42, "amount": 9.5},
    )
    received = result["body"]
    assert received["method"] == "POST"
    assert json.loads(received["body"]) == {"order_id": 42, "amount": 9.5}
    assert received["headers"]["content-type"] == "application/json"
    assert received["headers"]["x-order"] == "42"
    assert received["headers"]["authorization"] == "Bearer s3cret"
    assert received["query"] == {"page": ["2"], "tag": ["a", "b"]}


def test_body_string_is_sent_verbatim_and_non_string_body_as_json(base_url: str) -> None:
    assert run(method="PUT", url=f"{base_url}/echo", body="a=1&b=2")["body"]["body"] == "a=1&b=2"
    sent = run(method="PUT", url=f"{base_url}/echo", body={"k": [1, 2]})["body"]["body"]
    assert json.loads(sent) == {"k": [1, 2]}


def test_json_and_body_together_fail_permanently(base_url: str) -> None:
    with pytest.raises(PermanentError, match="either 'json' or 'body'"):
        run(method="POST", url=f"{base_url}/echo", json={"a": 1}, body="x")


def test_201_is_success_by_default(base_url: str) -> None:
    result = run(method="POST", url=f"{base_url}/status/201")
    assert result["status"] == 201
    assert result["body"] == {"code": 201}


def test_404_fails_permanently_with_a_one_line_message(base_url: str) -> None:
    with pytest.raises(PermanentError) as raised:
        run(method="GET", url=f"{base_url}/status/404")
    message = str(raised.value)
    assert message == f"GET {base_url}/status/404: 404 Not Found (expected 2xx)"


def test_expect_status_accepts_listed_codes_and_rejects_others(base_url: str) -> None:
    assert run(url=f"{base_url}/status/404", expect_status=[200, 404])["status"] == 404
    with pytest.raises(PermanentError, match="201 Created \\(expected 200\\)"):
        run(url=f"{base_url}/status/201", expect_status=[200])


@pytest.mark.parametrize("code", [500, 503])
def test_5xx_is_retryable_not_permanent(base_url: str, code: int) -> None:
    with pytest.raises(TaskError) as raised:
        run(method="POST", url=f"{base_url}/status/{code}")
    assert not isinstance(raised.value, PermanentError)
    assert str(raised.value).startswith(f"POST {base_url}/status/{code}: {code} ")
    assert "\n" not in str(raised.value)


def test_expected_5xx_is_a_result(base_url: str) -> None:
    assert run(url=f"{base_url}/status/500", expect_status=[500])["status"] == 500


def test_request_timeout_is_retryable(base_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(TaskError) as raised:
        run(url=f"{base_url}/slow?seconds=2", request_timeout=0.2)
    assert time.monotonic() - started < 1.5
    assert not isinstance(raised.value, PermanentError)
    assert "no response within 0.2s" in str(raised.value)


def test_slow_response_within_timeout_succeeds(base_url: str) -> None:
    assert run(url=f"{base_url}/slow?seconds=0.1", request_timeout=5)["body"] == {"slow": True}


def test_connection_refused_is_retryable_with_a_short_reason() -> None:
    url = f"http://127.0.0.1:{closed_port()}/charge"
    with pytest.raises(TaskError) as raised:
        run(method="POST", url=url)
    assert not isinstance(raised.value, PermanentError)
    assert str(raised.value) == f"POST {url}: Connection refused"


def test_invalid_url_fails_permanently() -> None:
    with pytest.raises(PermanentError, match="invalid URL"):
        run(url="not a url")
    with pytest.raises(PermanentError, match="needs a 'url'"):
        run(method="GET")


def test_credentials_and_query_are_kept_out_of_error_messages(base_url: str) -> None:
    url = base_url.replace("http://", "http://user:pw@") + "/status/404?token=t0ps3cret"
    with pytest.raises(PermanentError) as raised:
        run(url=url)
    assert "pw" not in str(raised.value)
    assert "t0ps3cret" not in str(raised.value)


def test_one_session_per_process_reuses_connections(base_url: str) -> None:
    first = run(url=f"{base_url}/echo")["body"]["client_port"]
    second = run(url=f"{base_url}/echo")["body"]["client_port"]
    assert http.session() is http.session()
    assert first == second  # the same pooled keep-alive connection


def _child_session_id(queue: Any, url: str) -> None:
    queue.put((id(http.session()), run(url=url)["status"]))


def test_a_forked_process_gets_its_own_session(base_url: str) -> None:
    parent = id(http.session())
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_session_id, args=(queue, f"{base_url}/echo"))
    child.start()
    child_session, status = queue.get(timeout=10)
    child.join(10)
    assert child_session != parent
    assert status == 200
    assert http.session() is not None and id(http.session()) == parent
