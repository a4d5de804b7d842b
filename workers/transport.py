"""flowq's Redis transport: kombu's, keeping one client object per channel and packing the
unacknowledged-message bookkeeping by hand.

kombu's Redis channel builds a new ``redis.Redis`` object for every command it sends outside
its polling connection: each publish, and twice per delivered message in a worker (the
unacked bookkeeping on delivery, then the ack). Building one copies redis-py's table of
response callbacks, about 60 microseconds of CPU on this kind of machine, which is more than
the command costs. Here a channel keeps the client it built and reuses it for as long as its
connection pool is the same one; the client takes a connection from that pool for each
command, as a new one would. A pool kombu replaces (after a fork, on close) gets a new client.

A worker records each message it takes (``QoS.append``: ``MULTI``, ``ZADD`` of the delivery tag
to the unacked index, ``HSET`` of the message to the unacked hash, ``EXEC``) and removes it once
acknowledged (``QoS.ack``: ``MULTI``, ``ZREM``, ``HDEL``, ``EXEC``). kombu sends each as a
redis-py pipeline, whose Python costs more than the round trip. ``QoS`` sends the same commands,
in the same transaction, packed by hand in one write on a connection of the channel's own; kombu's
restore of unacknowledged messages (``restore_visible``, ``restore_unacked``) reads what it wrote
as it reads its own. With a ``global_keyprefix`` kombu's own code runs.

``workers.app.create_app`` selects it through the app's ``amqp`` class: its connections
(``Connection``) swap kombu's Redis transport for ``Transport`` below, and keep the URL's own
transport name, so that URLs and Flower's broker view still say ``redis``. Other brokers,
Redis Sentinel included, keep kombu's transports.

After a lost broker connection, Celery collects the connection's transport and then closes the
connection; a channel left open by the first step (its close failed there) is closed by the
second, and kombu's restore of its unacknowledged messages builds a connection pool from the
collected transport's settings, which are gone: the ``AttributeError`` stopped the worker
("Unrecoverable error"). ``QoS.restore_unacked`` leaves those messages where they are
instead: in the unacked hash, from which ``restore_visible`` requeues them after the
visibility timeout (a Redis that restarted empty lost them anyway; flowq's reconciler
republishes their tasks).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from time import time
from typing import Any

import redis
from celery.app.amqp import AMQP as CeleryAMQP
from kombu.connection import Connection as KombuConnection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

log = logging.getLogger("flowq.worker")


def pack(*commands: tuple[str | bytes | int, ...]) -> bytes:
    """Commands in Redis's protocol (RESP), ready to send in one write."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            raw = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def exchange(connection: Callable[[], Any], data: bytes, replies: int) -> list[Any]:
    """Send ``data`` (``pack``'s) on ``connection()``'s connection and read ``replies`` replies;
    a Redis error reply raises. A connection that fails is made again once (``connection`` is
    asked again); one left with replies unread is dropped."""
    for retry in (False, True):
        conn = connection()
        try:
            conn.send_packed_command([data], check_health=False)
            return [conn.read_response() for _ in range(replies)]
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()  # connects again on the next send
            if retry:
                raise
        except BaseException:
            conn.disconnect()  # replies may be left unread: start afresh
            raise
    raise AssertionError("unreachable")


class QoS(kombu_redis.QoS):
    """kombu's acknowledgement emulation, its two transactions sent packed (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._flowq_conn: Any = None  # a redis.connection.AbstractConnection of ``pool``'s
        self._flowq_pool: Any = None
        self._flowq_pid = 0
        # one transaction at a time on the connection: under a threads pool, acks come from
        # the pool's threads while the consumer appends
        self._flowq_lock = threading.Lock()

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.global_keyprefix:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        info = message.delivery_info
        raw = [message._raw, info["exchange"], info["routing_key"]]
        payload = dumps(raw)  # type: ignore[no-untyped-call]
        self._transact(
            ("ZADD", self.unacked_index_key, repr(time()), delivery_tag),
            ("HSET", self.unacked_key, delivery_tag, payload),
        )
        virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: str) -> None:
        if self.channel.global_keyprefix:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
            return
        self._transact(
            ("ZREM", self.unacked_index_key, delivery_tag),
            ("HDEL", self.unacked_key, delivery_tag),
        )
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]

    def restore_unacked(self, client: Any = None) -> Any:
        connection = self.channel.connection
        if client is None and (connection is None or connection.client is None):
            # the transport was collected (see the module): nothing to reach Redis through
            log.warning(
                "%d unacknowledged message(s) left for restore after the visibility timeout: "
                "the broker connection is gone",
                len(self._delivered),
            )
            self._delivered.clear()
            return []
        return super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def _transact(self, *commands: tuple[str, ...]) -> None:
        """``MULTI``, ``commands``, ``EXEC`` in one write; raise the first error among them.

        A connection that fails is made again once; a reply left unread drops it.
        """
        data = pack(("MULTI",), *commands, ("EXEC",))
        with self._flowq_lock:
            replies = exchange(self._connection, data, len(commands) + 2)
        for reply in replies[-1] or ():  # EXEC's: each command's reply
            if isinstance(reply, Exception):
                raise reply

    def _connection(self) -> Any:
        pool = self.channel.pool  # kombu's for commands outside the poller (a new one after a fork)
        conn = self._flowq_conn
        if conn is None or self._flowq_pool is not pool or self._flowq_pid != os.getpid():
            if conn is not None and self._flowq_pid == os.getpid():
                conn.disconnect()  # its pool was replaced (a close): not a parent's socket
            conn = self._flowq_conn = pool.make_connection()
            self._flowq_pool, self._flowq_pid = pool, os.getpid()
        return conn


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses its synchronous client object, with ``QoS`` above."""

    QoS = QoS
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
