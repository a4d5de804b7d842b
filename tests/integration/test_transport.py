"""flowq's Redis transport (``workers.transport``): kombu's, reusing one client per channel."""

from __future__ import annotations

import uuid

import pytest
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
