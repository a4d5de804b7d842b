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
redis-py pipeline, whose Python costs more than the round trip, and waits for its replies: two
round trips per message in the worker's main process, the one process every message passes
through, while a pool process waits for its next task. ``QoS`` sends the same commands, in the
same transaction, packed by hand in one write on a connection of the channel's own, and goes on
without waiting: the replies are read before its next transaction on that connection (by then
they have arrived), before kombu restores a message (``restore_by_tag``, ``restore_unacked``:
they read what was written), and every ``SETTLE_SECONDS`` by the worker's event loop when no
transaction came. Each transaction is idempotent, so those whose replies are lost with their
connection are sent again, in order, on a new one. An error among the replies is logged, naming
what it leaves: an ack that failed leaves the message to be redelivered after the visibility
timeout (flowq runs a task once whatever its messages); a record that failed leaves the message
unrecorded, as kombu leaves one whose worker dies between taking it and recording it. kombu's
restore of unacknowledged messages (``restore_visible``, ``restore_unacked``) reads what ``QoS``
wrote as it reads its own. With a ``global_keyprefix`` kombu's own code runs.

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
republishes their tasks). The same goes for what reaches such a channel later, and for what the
lost connection left unconfirmed: Celery acknowledges a message whose task ends after it
reconnected (or requeues it, its pool process lost) through the channel the message came on, and
``QoS`` leaves that undone (logged), the message in the unacked hash, rather than reach for the
collected transport's settings.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from time import time
from typing import Any, NamedTuple

import redis
from celery.app.amqp import AMQP as CeleryAMQP
from kombu.connection import Connection as KombuConnection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

log = logging.getLogger("flowq.worker")

# How often the worker's event loop reads the replies of bookkeeping transactions that no later
# transaction read (``QoS.settle``)
SETTLE_SECONDS = 1.0
_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def pack(*commands: tuple[str | bytes | int, ...]) -> bytes:
    """Commands in Redis's protocol (RESP), ready to send in one write."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            raw = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def exchange(
    connection: Callable[[], Any], data: bytes, replies: int, *, raise_errors: bool = True
) -> list[Any]:
    """Send ``data`` (``pack``'s) on ``connection()``'s connection and read ``replies`` replies;
    a Redis error reply raises (``raise_errors``), else it is returned in its place. A
    connection that fails is made again once (``connection`` is asked again); one left with
    replies unread is dropped."""
    for retry in (False, True):
        conn = connection()
        try:
            conn.send_packed_command([data], check_health=False)
            if not raise_errors:
                return read_replies(conn, replies)
            return [conn.read_response() for _ in range(replies)]
        except _CONNECTION_ERRORS:
            conn.disconnect()  # connects again on the next send
            if retry:
                raise
        except BaseException:
            conn.disconnect()  # replies may be left unread: start afresh
            raise
    raise AssertionError("unreachable")


def read_replies(conn: Any, count: int) -> list[Any]:
    """``count`` replies from ``conn``; an error reply is returned, not raised."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:  # read whole: the next reply is in step
            replies.append(exc)
    return replies


class Sent(NamedTuple):
    """A bookkeeping transaction sent and not yet confirmed: its bytes, how many replies it
    gets, and what it does (for the log)."""

    data: bytes
    replies: int
    what: str


def failure(replies: Sequence[Any]) -> Exception | None:
    """The first error among a ``MULTI`` ... ``EXEC`` transaction's replies, if any."""
    for reply in replies:
        if isinstance(reply, Exception):
            return reply
    executed = replies[-1] if replies else None
    for reply in executed if isinstance(executed, list) else ():
        if isinstance(reply, Exception):
            return reply
    return None


class QoS(kombu_redis.QoS):
    """kombu's acknowledgement emulation, its two transactions sent packed and confirmed later
    (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._flowq_conn: Any = None  # a redis.connection.AbstractConnection of ``pool``'s
        self._flowq_pool: Any = None
        self._flowq_pid = 0
        # sent on ``_flowq_conn``, replies not read yet, in order
        self._flowq_sent: list[Sent] = []
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
            f"recording message {delivery_tag} as unacknowledged",
            ("ZADD", self.unacked_index_key, repr(time()), delivery_tag),
            ("HSET", self.unacked_key, delivery_tag, payload),
        )
        virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: str) -> None:
        if self.channel.global_keyprefix:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
            return
        self._transact(
            f"acknowledging message {delivery_tag}",
            ("ZREM", self.unacked_index_key, delivery_tag),
            ("HDEL", self.unacked_key, delivery_tag),
        )
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]

    @property
    def unconfirmed(self) -> int:
        """How many transactions were sent and their replies not read yet."""
        return len(self._flowq_sent)

    def settle(self) -> None:
        """Read the replies of the transactions sent so far; log their errors (see the
        module). A connection lost on the way is logged too: its transactions are sent again
        with the next one."""
        with self._flowq_lock:
            try:
                self._settle()
            except _CONNECTION_ERRORS as exc:
                log.warning(
                    "could not confirm %d message bookkeeping transaction(s) with the broker "
                    "(%s); they are sent again with the next one",
                    len(self._flowq_sent),
                    exc,
                )

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> Any:
        if client is None and self._gone():  # a requeue through a collected transport
            log.warning(
                "message %s left for restore after the visibility timeout: the broker "
                "connection is gone",
                tag,
            )
            return None
        self.settle()  # the message's record is in Redis before kombu reads it back
        return super().restore_by_tag(tag, client, leftmost)  # type: ignore[no-untyped-call]

    def restore_unacked(self, client: Any = None) -> Any:
        self.settle()  # the records are in Redis before kombu reads them back (else left)
        if client is None and self._gone():
            log.warning(
                "%d unacknowledged message(s) left for restore after the visibility timeout: "
                "the broker connection is gone",
                len(self._delivered),
            )
            self._delivered.clear()
            return []
        return super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def _gone(self) -> bool:
        """The channel's transport was collected (see the module): nothing reaches Redis
        through it any more. Celery still acknowledges, through the channel they came on, the
        messages whose tasks end after it reconnected."""
        connection = self.channel.connection
        return connection is None or connection.client is None

    def _leave(self, sent: Sequence[Sent]) -> None:
        """Give up on ``sent``, the channel being gone: their messages are left to Redis's
        restore of the unacked after the visibility timeout (a task runs once whatever its
        messages), or to flowq's reconciler for a record that never reached Redis."""
        for s in sent:
            log.warning("%s left undone: the broker connection is gone", s.what)

    def _transact(self, what: str, *commands: tuple[str, ...]) -> None:
        """Send ``MULTI``, ``commands``, ``EXEC`` in one write, its replies read later
        (``_settle``), after reading those of the transactions before it. A connection that
        fails is made again, and what it left unconfirmed sent again (``_settle``); a second
        failure raises."""
        sent = Sent(pack(("MULTI",), *commands, ("EXEC",)), len(commands) + 2, what)
        with self._flowq_lock:
            self._settle()
            if self._gone():
                self._leave([sent])
                return
            try:
                self._connection().send_packed_command([sent.data], check_health=False)
            except _CONNECTION_ERRORS:
                self._flowq_sent.append(sent)
                self._settle()  # on a new connection, waiting for the replies
                return
            self._flowq_sent.append(sent)

    def _settle(self) -> None:
        """``settle`` under the lock. If the connection is lost, what it left unconfirmed is
        sent again on a new one, waiting for the replies (each transaction is idempotent, and
        they go in their order); a second failure raises and leaves them unconfirmed."""
        if self._flowq_pid != os.getpid():
            self._flowq_sent = []  # sent by the parent process, which reads them
        sent, self._flowq_sent = self._flowq_sent, []
        if not sent:
            return
        count = sum(s.replies for s in sent)
        conn = self._flowq_conn
        try:
            if conn is None or conn._sock is None:  # dropped: nothing to read them from
                raise redis.ConnectionError("the connection was closed")
            replies = read_replies(conn, count)
        except (redis.RedisError, OSError):  # lost, or out of step: start afresh
            if conn is not None:
                conn.disconnect()
            if self._gone():  # no new connection to send them on
                self._leave(sent)
                return
            self._flowq_sent = sent  # still unconfirmed, should the new connection fail too
            data = b"".join(s.data for s in sent)
            replies = exchange(self._connection, data, count, raise_errors=False)
            self._flowq_sent = []
        for s in sent:
            error, replies = failure(replies[: s.replies]), replies[s.replies :]
            if error is not None:
                log.warning("the broker refused %s: %s", s.what, error)

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
    """kombu's Redis transport with ``Channel`` above; a worker's event loop confirms its
    channels' bookkeeping every ``SETTLE_SECONDS`` (``QoS.settle``)."""

    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)  # type: ignore[no-untyped-call]
        cycle: Any = self.cycle  # kombu's MultiChannelPoller
        before = getattr(cycle, "_flowq_settle_tref", None)
        if before is not None:  # a reconnection registers again: one timer, as kombu's own
            before.cancel()
        cycle._flowq_settle_tref = loop.call_repeatedly(SETTLE_SECONDS, self.settle)

    def settle(self) -> None:
        """Confirm what each channel's ``QoS`` sent and did not read back yet."""
        for channel in list(self.channels):
            qos = channel._qos
            if qos is not None and isinstance(qos, QoS):
                qos.settle()


class Connection(KombuConnection):
    """A kombu connection that runs kombu's Redis transport as ``Transport``."""

    def get_transport_cls(self) -> Any:
        cls = super().get_transport_cls()  # type: ignore[no-untyped-call]
        return Transport if cls is kombu_redis.Transport else cls


class AMQP(CeleryAMQP):  # type: ignore[misc]
    """Celery's messaging layer, on ``Connection``."""

    Connection = Connection
