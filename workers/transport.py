"""flowq's Redis transport: kombu's, keeping one client object per channel.

kombu's Redis channel builds a new ``redis.Redis`` object for every command it sends outside
its polling connection: each publish, and twice per delivered message in a worker (the
unacked bookkeeping on delivery, then the ack). Building one copies redis-py's table of
response callbacks, about 60 microseconds of CPU on this kind of machine, which is more than
the command costs. Here a channel keeps the client it built and reuses it for as long as its
connection pool is the same one; the client takes a connection from that pool for each
command, as a new one would. A pool kombu replaces (after a fork, on close) gets a new client.

``workers.app.create_app`` selects it through the app's ``amqp`` class: its connections
(``Connection``) swap kombu's Redis transport for ``Transport`` below, and keep the URL's own
transport name, so that URLs and Flower's broker view still say ``redis``. Other brokers,
Redis Sentinel included, keep kombu's transports.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP as CeleryAMQP
from kombu.connection import Connection as KombuConnection
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses its synchronous client object."""

    _flowq_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the polling connection's client: kombu's own
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        client = self._flowq_client
        if client is None or client.connection_pool is not pool:
            client = self._flowq_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with ``Channel`` above."""

    Channel = Channel


class Connection(KombuConnection):
    """A kombu connection that runs kombu's Redis transport as ``Transport``."""

    def get_transport_cls(self) -> Any:
        cls = super().get_transport_cls()  # type: ignore[no-untyped-call]
        return Transport if cls is kombu_redis.Transport else cls


class AMQP(CeleryAMQP):  # type: ignore[misc]
    """Celery's messaging layer, on ``Connection``."""

    Connection = Connection
