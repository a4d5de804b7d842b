"""Operations: the health check (broker and store, for real) and Prometheus metrics."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any, cast

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from kombu.connection import Connection
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from flowq.api.routes import ClientDep, errors
from flowq.api.schemas import Health
from flowq.client import Client

health = APIRouter(tags=["service"])
metrics = APIRouter(tags=["service"])

CHECK_TIMEOUT = 3.0  # seconds each dependency gets to answer


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def check_broker(client: Client) -> None:
    """Connect to the broker once (an embedded memory:// broker always answers)."""
    url = client.settings.effective_broker_url
    with Connection(url, connect_timeout=CHECK_TIMEOUT) as conn:  # type: ignore[no-untyped-call]
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, interval_max=0.2)


def check_store(client: Client) -> None:
    """Run SELECT 1 on the state store, without the store's retries."""
    with client.store.engine.connect() as conn:
        conn.execution_options(flowq_readonly=True).execute(sa.text("SELECT 1"))


def run_checks(checks: dict[str, Callable[[], None]], timeout: float) -> dict[str, str]:
    """Run the checks in parallel; each answers ``ok`` or its error in one line."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(checks))
    try:
        futures = {name: pool.submit(check) for name, check in checks.items()}
        results: dict[str, str] = {}
        for name, future in futures.items():
            try:
                future.result(timeout=timeout)
                results[name] = "ok"
            except concurrent.futures.TimeoutError:
                results[name] = f"no answer within {timeout:g}s"
            except Exception as exc:  # any failure means the dependency is down
                results[name] = _one_line(exc)
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@health.get(
    "/healthz",
    response_model=Health,
    response_model_exclude_none=True,
    responses={503: {"model": Health, "description": "the broker or the store does not answer"}},
    operation_id="healthz",
    summary="Health: the broker and the state store answer",
)
def healthz(client: ClientDep) -> Any:
    """200 ``{"status": "ok"}`` when both answer, else 503 naming the one that failed."""
    checks = run_checks(
        {"broker": lambda: check_broker(client), "store": lambda: check_store(client)},
        CHECK_TIMEOUT,
    )
    if all(v == "ok" for v in checks.values()):
        return Health(status="ok")
    body = Health(status="unavailable", checks=checks)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503)


@metrics.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **errors(),
    },
    operation_id="metrics",
    summary="Prometheus metrics, read from the state store",
)
def get_metrics(request: Request) -> Response:
    """Counters, gauges and histograms computed from the state store on each scrape."""
    registry = cast(CollectorRegistry, request.app.state.registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
