"""flowq's Redis transport (``workers.transport``): kombu's, reusing one client per channel."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import pytest
import redis
from kombu.asynchronous import Hub
from kombu.transport import memory
from kombu.transport import redis as kombu_redis

from flowq.settings import Settings
from workers import transport
from workers.app import create_app

pytestmark = pytest.mark.integration


def test_a_redis_broker_runs_on_flowqs_transport_and_keeps_its_url(redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url, database_url="sqlite://"))
    with app.connection_for_write() as conn:
        assert type(conn.transport) is transport.Transport
        assert isinstance(conn.transport, kombu_redis.Transport)
        # what Flower and the worker banner read: still a redis URL
        assert conn.as_uri().startswith("redis://")
        assert conn.clone().transport_cls == "redis"


def test_a_channel_reuses_its_client_until_its_pool_is_replaced(redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url, database_url="sqlite://"))
    queue = f"flowq-transport-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel._create_client()
        assert channel._create_client() is client
        assert channel._create_client(asynchronous=True) is not client  # the poller's own
        with conn.Producer() as producer:
            for n in range(3):
                producer.publish({"n": n}, routing_key=queue, exchange="", declare=[])
        assert client.llen(queue) == 3
        assert channel._create_client() is client  # the publishes used it
        # a fork (or close) replaces the pool: the client goes with it
        channel._disconnect_pools()
        fresh = channel._create_client()
        assert fresh is not client
        assert fresh.connection_pool is channel.pool
        assert fresh.llen(queue) == 3
        fresh.delete(queue)


def test_other_brokers_keep_kombus_transports() -> None:
    app = create_app(Settings(broker_url="memory://", database_url="sqlite://"))
    with app.connection_for_write() as conn:
        assert type(conn.transport) is memory.Transport


def _take(conn: Any, queue: str) -> Any:
    """Publish one message to ``queue`` and take it unacknowledged, as a worker does."""
    with conn.Producer() as producer:
        producer.publish({"n": 1}, routing_key=queue, exchange="", declare=[])
    message = conn.default_channel.basic_get(queue, no_ack=False)
    assert message is not None
    return message


def test_a_taken_message_is_recorded_as_kombu_records_it_until_acked(redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url, database_url="sqlite://"))
    queue = f"flowq-qos-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        qos = channel.qos
        assert type(qos) is transport.QoS
        client = redis.Redis.from_url(redis_url)
        message = _take(conn, queue)
        tag = message.delivery_tag
        qos.settle()
        assert qos.unconfirmed == 0
        # what kombu's restore reads back: [the message, its exchange, its routing key]
        stored = json.loads(client.hget(qos.unacked_key, tag) or b"null")
        assert stored == [message._raw, "", queue]
        assert client.zscore(qos.unacked_index_key, tag) == pytest.approx(time.time(), abs=60)
        message.ack()
        qos.settle()
        assert client.hget(qos.unacked_key, tag) is None
        assert client.zscore(qos.unacked_index_key, tag) is None
        assert client.llen(queue) == 0


def test_an_unacked_message_is_restored_by_kombus_restore(redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url, database_url="sqlite://"))
    queue = f"flowq-qos-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        client = redis.Redis.from_url(redis_url)
        message = _take(conn, queue)
        assert client.llen(queue) == 0
        conn.default_channel.qos.restore_unacked()  # what a worker's shutdown does
        assert client.llen(queue) == 1
        again = conn.default_channel.basic_get(queue, no_ack=False)
        assert again is not None and again.payload == message.payload
        again.ack()


def test_a_channel_closed_after_its_transport_was_collected_leaves_its_messages_unacked(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # After a lost connection Celery collects the transport, then closes the connection; a
    # channel still open then must close without a broker (kombu's restore raised
    # AttributeError there, and the worker stopped) and leave its messages to restore_visible
    app = create_app(Settings(broker_url=redis_url, database_url="sqlite://"))
    queue = f"flowq-qos-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    conn = app.connection_for_write()
    channel = conn.default_channel
    message = _take(conn, queue)
    conn._do_close_transport()  # what Connection.collect does once its channels' close failed
    conn.close()
    assert channel.closed
    assert "1 unacknowledged message(s) left for restore" in caplog.text
    assert client.hexists(channel.qos.unacked_key, message.delivery_tag)
    assert client.llen(queue) == 0
    client.hdel(channel.qos.unacked_key, message.delivery_tag)
    client.zrem(channel.qos.unacked_index_key, message.delivery_tag)


def test_acks_through_a_channel_whose_transport_was_collected_are_left_to_the_restore(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Tasks that end after Celery reconnected are acknowledged through the channel their
    # messages came on, which is gone; one ack was sent on a connection that Redis then
    # dropped (a restart), its reply unread. Neither may stop the worker (an AttributeError
    # from kombu's pool did: "Unrecoverable error").
    with taken(redis_url) as t:
        second = _take(t.conn, t.queue)
        t.qos.settle()
        own = t.qos._connection()
        t.client.client_pause(1000, all=False)  # the first ack waits in Redis, unanswered...
        t.message.ack()
        assert t.qos.unconfirmed == 1
        t.client.client_kill_filter(_id=str(_client_id_of(t.client, own)))  # ...and is dropped
        t.conn._do_close_transport()  # a lost connection: Celery collects the transport
        t.conn.close()
        second.ack()
        first, then = t.message.delivery_tag, second.delivery_tag
        assert f"acknowledging message {first} left undone" in caplog.text
        assert f"acknowledging message {then} left undone" in caplog.text
        assert t.qos.unconfirmed == 0
        # both stay recorded: Redis's restore of the unacked hands them out again after the
        # visibility timeout, and flowq runs a task once whatever its messages
        assert t.client.hexists(t.unacked, first) and t.client.hexists(t.unacked, then)


def test_a_requeue_through_a_channel_whose_transport_was_collected_is_left_to_the_restore(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # a pool process lost after Celery reconnected: its message is rejected and requeued
    # through the channel it came on, which is gone (kombu's restore raised AttributeError)
    with taken(redis_url) as t:
        t.qos.settle()
        t.conn._do_close_transport()
        t.conn.close()
        t.message.reject(requeue=True)
        tag = t.message.delivery_tag
        assert f"message {tag} left for restore after the visibility timeout" in caplog.text
        assert t.client.hexists(t.unacked, tag)  # restored from there after the timeout
        assert t.client.llen(t.queue) == 0


def _client_id(conn: Any) -> int:
    conn.send_command("CLIENT", "ID")
    return int(conn.read_response())


def test_the_bookkeeping_survives_a_dropped_connection(redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url, database_url="sqlite://"))
    queue = f"flowq-qos-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        qos = conn.default_channel.qos
        client = redis.Redis.from_url(redis_url)
        message = _take(conn, queue)
        qos.settle()
        own = qos._connection()
        before = _client_id(own)
        assert client.client_kill_filter(_id=str(before)) == 1  # the server drops its connection
        message.ack()  # sent into the dropped connection, or sent again at once if that failed
        qos.settle()  # its replies are not there: sent again on a new connection
        assert qos.unconfirmed == 0
        assert client.hget(qos.unacked_key, message.delivery_tag) is None
        assert client.zscore(qos.unacked_index_key, message.delivery_tag) is None
        assert _client_id(qos._connection()) != before


class Taken(NamedTuple):
    """A message taken unacknowledged on a channel whose unacked hash and index are the test's
    own (``taken``), its record's transaction sent and not confirmed yet."""

    conn: Any
    qos: transport.QoS
    client: redis.Redis
    message: Any
    queue: str
    unacked: str
    unacked_index: str


@contextmanager
def taken(
    redis_url: str, before: Callable[[redis.Redis, str], Any] | None = None
) -> Iterator[Taken]:
    """``Taken``; ``before(client, unacked key)`` runs before the message is taken."""
    app = create_app(Settings(broker_url=redis_url, database_url="sqlite://"))
    suffix = uuid.uuid4().hex[:8]
    unacked, index = f"flowq-test-unacked-{suffix}", f"flowq-test-unacked-index-{suffix}"
    app.conf.broker_transport_options = {
        **(app.conf.broker_transport_options or {}),
        "unacked_key": unacked,
        "unacked_index_key": index,
    }
    queue = f"flowq-qos-{suffix}"
    client = redis.Redis.from_url(redis_url)
    try:
        if before is not None:
            before(client, unacked)
        with app.connection_for_write() as conn:
            qos = conn.default_channel.qos
            assert isinstance(qos, transport.QoS)
            yield Taken(conn, qos, client, _take(conn, queue), queue, unacked, index)
    finally:
        client.delete(unacked, index, queue)


def test_the_bookkeeping_goes_on_without_waiting_for_redis_and_is_confirmed_later(
    redis_url: str,
) -> None:
    # the worker's main process does not wait for the replies: a paused Redis does not hold
    # up an ack, and settle() waits for them
    with taken(redis_url) as t:
        t.qos.settle()
        assert t.client.hexists(t.unacked, t.message.delivery_tag)
        t.client.client_pause(1000, all=False)  # every other client's writes wait a second
        began = time.monotonic()
        t.message.ack()
        assert time.monotonic() - began < 0.5
        assert t.qos.unconfirmed == 1
        t.qos.settle()
        assert time.monotonic() - began > 0.5  # it waited for Redis's replies
        assert t.qos.unconfirmed == 0
        assert not t.client.hexists(t.unacked, t.message.delivery_tag)
        assert t.client.zscore(t.unacked_index, t.message.delivery_tag) is None


def test_a_refused_transaction_is_logged_with_what_it_leaves(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # HSET into a string fails inside the record's transaction
    with taken(redis_url, before=lambda client, unacked: client.set(unacked, "not a hash")) as t:
        tag = t.message.delivery_tag
        t.qos.settle()
        assert f"the broker refused recording message {tag} as unacknowledged" in caplog.text
        assert "WRONGTYPE" in caplog.text
        # the connection stays in step: the next transaction is confirmed as usual
        t.client.delete(t.unacked)
        t.message.ack()
        t.qos.settle()
        assert "acknowledging" not in caplog.text
        assert t.client.zscore(t.unacked_index, tag) is None


def test_a_requeued_message_is_restored_from_an_unconfirmed_record(redis_url: str) -> None:
    # a rejected message (its pool process was lost) is put back from its record: the
    # record's transaction is confirmed before kombu reads it back
    with taken(redis_url) as t:
        assert t.qos.unconfirmed == 1  # the record's transaction
        t.message.reject(requeue=True)
        assert t.qos.unconfirmed == 0  # confirmed before kombu read the record back
        assert t.client.llen(t.queue) == 1
        again = t.conn.default_channel.basic_get(t.queue, no_ack=False)
        assert again is not None and again.payload == t.message.payload
        again.ack()
        t.qos.settle()
        assert t.client.hlen(t.unacked) == 0 and t.client.zcard(t.unacked_index) == 0


def test_a_workers_event_loop_confirms_the_bookkeeping_left_unread(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "SETTLE_SECONDS", 0.05)
    app = create_app(Settings(broker_url=redis_url, database_url="sqlite://"))
    queue = f"flowq-qos-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        hub = Hub()
        try:
            conn.transport.register_with_event_loop(conn.connection, hub)
            conn.transport.register_with_event_loop(conn.connection, hub)  # as a reconnection
            settles = [
                s.entry
                for s in hub.timer.queue
                if getattr(s.entry.fun, "__wrapped__", None) == conn.transport.settle
                and not s.entry.canceled
            ]
            assert len(settles) == 1
            message = _take(conn, queue)
            message.ack()
            qos = conn.default_channel.qos
            assert qos.unconfirmed == 1  # the ack's: it read the record's replies first
            time.sleep(0.1)
            hub.fire_timers()
            assert qos.unconfirmed == 0
        finally:
            hub.close()


def test_a_global_key_prefix_keeps_kombus_bookkeeping(redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url, database_url="sqlite://"))
    prefix = f"p{uuid.uuid4().hex[:6]}:"
    app.conf.broker_transport_options = {
        **(app.conf.broker_transport_options or {}),
        "global_keyprefix": prefix,
    }
    queue = f"flowq-qos-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        qos = conn.default_channel.qos
        client = redis.Redis.from_url(redis_url)
        message = _take(conn, queue)
        assert client.hget(prefix + qos.unacked_key, message.delivery_tag) is not None
        message.ack()
        assert client.hget(prefix + qos.unacked_key, message.delivery_tag) is None
        assert qos._flowq_conn is None  # kombu's own pipelines did it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bookkeeping_left_unconfirmed_by_a_lost_broker_is_sent_when_it_is_back(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with taken(redis_url) as t:
        t.qos.settle()
        own = t.qos._connection()
        t.client.client_pause(1000, all=False)  # the ack waits in Redis, unanswered...
        t.message.ack()
        assert t.qos.unconfirmed == 1
        t.client.client_kill_filter(_id=str(_client_id_of(t.client, own)))  # ...and is dropped
        real_port, own.port = own.port, _free_port()  # nothing listens there: a broker down
        t.qos.settle()
        assert "could not confirm 1 message bookkeeping transaction(s)" in caplog.text
        assert t.qos.unconfirmed == 1
        own.port = real_port  # back
        t.qos.settle()
        assert t.qos.unconfirmed == 0
        assert not t.client.hexists(t.unacked, t.message.delivery_tag)
        assert t.client.zscore(t.unacked_index, t.message.delivery_tag) is None


def _client_id_of(client: redis.Redis, conn: Any) -> int:
    """The server's id of ``conn``, found by its local port in CLIENT LIST."""
    port = conn._sock.getsockname()[1]
    for entry in client.client_list():
        if entry["addr"].endswith(f":{port}"):
            return int(entry["id"])
    raise AssertionError("the connection is not in CLIENT LIST")
