"""flowq's Redis transport (``workers.transport``): kombu's, reusing one client per channel."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis
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
        # what kombu's restore reads back: [the message, its exchange, its routing key]
        stored = json.loads(client.hget(qos.unacked_key, tag) or b"null")
        assert stored == [message._raw, "", queue]
        assert client.zscore(qos.unacked_index_key, tag) == pytest.approx(time.time(), abs=60)
        message.ack()
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
        own = qos._connection()
        before = _client_id(own)
        assert client.client_kill_filter(_id=str(before)) == 1  # the server drops its connection
        message.ack()  # sent again on a new connection
        assert client.hget(qos.unacked_key, message.delivery_tag) is None
        assert _client_id(qos._connection()) != before


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
