"""Publishing task messages (``workers.app.CeleryDispatcher``) to a real Redis."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery._state import _task_stack
from kombu.exceptions import BatchPublishError
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.transport import redis as kombu_redis

from flowq.execution import Dispatch
from flowq.settings import Settings
from workers import app as worker_app
from workers.app import PUBLISH_BATCH, CeleryDispatcher, create_app

pytestmark = pytest.mark.integration


@pytest.fixture
def app(redis_url: str) -> Celery:
    return create_app(Settings(broker_url=redis_url, database_url="sqlite://"))


@pytest.fixture
def queue(redis_url: str) -> Iterator[str]:
    name = f"flowq-dispatch-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.keys(name + "*"):
        client.delete(key)


def _dispatches(n: int, priority: int = 5) -> list[Dispatch]:
    eid = str(uuid.uuid4())
    return [
        Dispatch(eid, f"t{i}", "wf", 1, "d" * 40, priority, "flowq", timeout=30.0 if i else None)
        for i in range(n)
    ]


def _messages(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """Every message waiting in ``queue`` (all its priority lists), oldest first."""
    client = redis.Redis.from_url(redis_url)
    out = []
    for key in sorted(client.keys(queue + "*")):
        if client.type(key) == b"list":
            out += [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]
    return out


def _kwargs(message: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(base64.b64decode(message["body"]))
    kwargs: dict[str, Any] = body[1]
    return kwargs


def _shape(message: dict[str, Any]) -> tuple[Any, ...]:
    """What must not differ between two messages of the same task but their ids."""
    headers, props = message["headers"], message["properties"]
    return (
        sorted(headers),
        sorted(props),
        headers["task"],
        headers["retries"],
        headers["ignore_result"],
        props["priority"],
        props["delivery_info"],
        message["content-type"],
    )


def test_a_send_publishes_each_task_once_in_chunks_as_celery_would_one_by_one(
    app: Celery, queue: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes: list[int] = []
    real_flush = kombu_redis.PublishBatch.flush

    def counted(self: Any) -> None:
        flushes.append(self._buffered)
        real_flush(self)

    monkeypatch.setattr(kombu_redis.PublishBatch, "flush", counted)
    dispatcher = CeleryDispatcher(app, only_queue=queue)
    single = _dispatches(1)
    dispatcher.send(single)  # one message: Celery's own publish, unbatched
    assert flushes == []
    many = _dispatches(60)
    dispatcher.send(many)
    # a pipeline per chunk: small ones first, so that the first tasks start at once
    assert [n for n in flushes if n] == [2, 4, 8, 16, PUBLISH_BATCH, 5]

    messages = _messages(redis_url, queue)
    sent = [(d.execution_id, d.task_id) for d in single + many]
    got = [(_kwargs(m)["execution_id"], _kwargs(m)["task_id"]) for m in messages]
    assert sorted(got) == sorted(sent)  # each exactly once
    by_task = {(_kwargs(m)["execution_id"], _kwargs(m)["task_id"]): m for m in messages}
    one = by_task[(single[0].execution_id, "t0")]
    for d in many:
        m = by_task[(d.execution_id, d.task_id)]
        assert _shape(m) == _shape(one)
        assert _kwargs(m)["digest"] == d.digest
        limits = [None, None] if d.timeout is None else [d.timeout + 5.0, d.timeout]
        assert m["headers"]["timelimit"] == limits
        assert m["headers"]["id"] == m["properties"]["correlation_id"]
    assert len({m["headers"]["id"] for m in messages}) == len(messages)
    assert len({m["properties"]["delivery_tag"] for m in messages}) == len(messages)


def test_a_chunk_that_fails_to_flush_is_published_again_one_by_one_with_the_rest(
    app: Celery,
    queue: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real_flush = kombu_redis.PublishBatch.flush
    flushes: list[int] = []

    def third_fails(self: Any) -> None:
        if self._buffered:
            flushes.append(self._buffered)
            if len(flushes) == 3:
                self.discard()  # nothing of it reached Redis
                raise BatchPublishError("Redis publish batch failed; delivery is uncertain")
        real_flush(self)

    monkeypatch.setattr(kombu_redis.PublishBatch, "flush", third_fails)
    many = _dispatches(PUBLISH_BATCH + 5)
    with caplog.at_level(logging.WARNING, logger=worker_app.log.name):
        CeleryDispatcher(app, only_queue=queue).send(many)
    assert flushes == [2, 4, 8]  # the third chunk failed; it and the rest went one by one
    got = sorted(_kwargs(m)["task_id"] for m in _messages(redis_url, queue))
    # each exactly once: the first two chunks are not sent again
    assert got == sorted(d.task_id for d in many)
    assert any(
        "publishing 24 task messages at once failed" in r.getMessage() for r in caplog.records
    )


def _sans_ids(message: dict[str, Any]) -> dict[str, Any]:
    """A message without what differs per publish: its ids and body."""
    headers = {k: v for k, v in message["headers"].items() if k not in ("id", "root_id")}
    props = {
        k: v
        for k, v in message["properties"].items()
        # apply_async copies the reprs into the properties too; Celery reads the headers'
        if k not in ("correlation_id", "delivery_tag", "reply_to", "argsrepr", "kwargsrepr")
    }
    return {**message, "headers": headers, "properties": props, "body": None}


def test_a_message_is_the_one_celery_apply_async_sends_for_the_same_task(
    app: Celery, queue: str, redis_url: str
) -> None:
    d = _dispatches(2)[1]  # with a timeout
    CeleryDispatcher(app, only_queue=queue).send([d])
    ids = {"execution_id": d.execution_id, "task_id": d.task_id}
    app.tasks[worker_app.TASK_NAME].apply_async(
        kwargs={**ids, "digest": d.digest},
        argsrepr="()",
        kwargsrepr=repr({**ids, "workflow_id": d.workflow_id}),
        queue=queue,
        priority=worker_app.celery_priority(d.priority),
        **worker_app.time_limits(d.timeout),
    )
    ours, celerys = _messages(redis_url, queue)
    assert _sans_ids(ours) == _sans_ids(celerys)
    assert _kwargs(ours) == _kwargs(celerys)
    assert ours["headers"]["root_id"] == ours["headers"]["id"]  # a root: no parent task


def test_a_message_sent_from_inside_a_task_names_its_parent_and_its_root(
    app: Celery, queue: str, redis_url: str
) -> None:
    task = app.tasks[worker_app.TASK_NAME]
    parent_id, root_id = str(uuid.uuid4()), str(uuid.uuid4())
    task.push_request(id=parent_id, root_id=root_id, called_directly=False)
    _task_stack.push(task)  # what Celery's tracer does while a task runs
    try:
        assert app.current_worker_task is task
        CeleryDispatcher(app, only_queue=queue).send(_dispatches(3))
    finally:
        _task_stack.pop()
        task.pop_request()
    messages = _messages(redis_url, queue)
    assert len(messages) == 3
    assert {(m["headers"]["parent_id"], m["headers"]["root_id"]) for m in messages} == {
        (parent_id, root_id)
    }


def test_a_broker_lost_while_publishing_raises_kombus_operational_error(
    app: Celery, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what Celery's send_task raises; a start catches it (Coordinator._dispatch_start)
    app.conf.task_publish_retry = False

    def gone(*_: Any, **__: Any) -> None:
        raise redis.exceptions.ConnectionError("Connection refused")

    dispatcher = CeleryDispatcher(app, only_queue=queue)
    dispatcher.send(_dispatches(1))  # the queue is declared, the connection made
    monkeypatch.setattr(kombu_redis.Channel, "_put", gone)
    with pytest.raises(KombuOperationalError, match="Connection refused"):
        dispatcher.send(_dispatches(1))
