"""A small payment and notification service for the order example (standard library only).

Run it on its own, for workers on several machines::

    python -m examples.payment_service --host 0.0.0.0 --port 8400

or let ``ensure_running()`` start it in a daemon thread of the current process, on 127.0.0.1 and
a free port: the order example's ``open_shop`` task does that, so ``flowq run`` needs no server.

- ``POST /charge`` ``{"order_id", "amount"}`` → 200 ``{"status": "paid" | "declined",
  "charge_id", "order_id", "amount"}``; amounts above ``CARD_LIMIT`` are declined. A repeated
  ``Idempotency-Key`` header gets the first answer again and charges nothing more.
- ``POST /notify`` ``{...}`` → 202 ``{"queued": true}``.
- ``GET /charges``, ``GET /notifications``: what was received, oldest first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CARD_LIMIT = 500.0


class PaymentServer(ThreadingHTTPServer):
    """The service's state: charges by idempotency key, notifications in arrival order."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.lock = threading.Lock()
        self.charges: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}
        self.notifications: list[Any] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def charge(self, order: dict[str, Any], key: str | None) -> dict[str, Any]:
        """Decide a charge once per idempotency key."""
        with self.lock:
            if key and key in self.by_key:
                return self.by_key[key]
            amount = float(order["amount"])
            answer = {
                "status": "paid" if amount <= CARD_LIMIT else "declined",
                "charge_id": f"ch_{order['order_id']}_{len(self.charges) + 1}",
                "order_id": order["order_id"],
                "amount": amount,
            }
            self.charges.append(answer)
            if key:
                self.by_key[key] = answer
            return answer


class _Handler(BaseHTTPRequestHandler):
    server: PaymentServer

    def do_GET(self) -> None:
        if self.path == "/charges":
            with self.server.lock:
                self._reply(200, list(self.server.charges))
        elif self.path == "/notifications":
            with self.server.lock:
                self._reply(200, list(self.server.notifications))
        else:
            self._reply(404, {"error": f"no such path {self.path}"})

    def do_POST(self) -> None:
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        except ValueError:
            self._reply(400, {"error": "the body must be JSON"})
            return
        if self.path == "/charge":
            if not isinstance(body, dict) or "order_id" not in body or "amount" not in body:
                self._reply(422, {"error": "a charge needs order_id and amount"})
                return
            self._reply(200, self.server.charge(body, self.headers.get("Idempotency-Key")))
        elif self.path == "/notify":
            with self.server.lock:
                self.server.notifications.append(body)
            self._reply(202, {"queued": True})
        else:
            self._reply(404, {"error": f"no such path {self.path}"})

    def _reply(self, status: int, doc: Any) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: ``flowq run`` prints the progress that matters."""


_started: tuple[int, PaymentServer] | None = None
_start_lock = threading.Lock()


def serve(host: str = "127.0.0.1", port: int = 0) -> PaymentServer:
    """Start a service in a daemon thread and return it (``port=0``: any free port)."""
    server = PaymentServer((host, port))
    threading.Thread(target=server.serve_forever, name="payment-service", daemon=True).start()
    return server


def ensure_running() -> str:
    """The URL of this process's service, started on 127.0.0.1 on first use (and after a fork)."""
    global _started
    with _start_lock:
        if _started is None or _started[0] != os.getpid():
            _started = (os.getpid(), serve())
        return _started[1].url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8400)
    args = parser.parse_args()
    server = PaymentServer((args.host, args.port))
    print(f"payment service on {server.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
