"""``MqttTransport``: the Transport over one MQTT 3.1.1 connection, on asyncio's public API.

See orbitmesh/protocol/transport.py for the interface and the in-memory fake; this is the real
one. The bytes are orbitmesh/protocol/mqtt.py's (one sans-I/O codec), the socket is
broker/connection.py's (an ``asyncio.Protocol``). This class adds what outlives one
connection: remembered subscriptions, reconnecting with backoff, the inbox and its
backpressure, publish coalescing (QoS 0 packets of one event-loop turn leave as one write), and
the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self

from broker import connect_error, make_client
from broker.connection import MqttConnection
from broker.url import BrokerURL
from orbitmesh.errors import BrokerError
from orbitmesh.protocol import mqtt
from orbitmesh.protocol.transport import Message, Will, check_topic_filter, check_topic_name

log = logging.getLogger("orbitmesh.protocol.transport")

_FLUSH_FILTER = "$orbitmesh/flush"
"""Never subscribed: UNSUBSCRIBE from it is a harmless round trip that orders after publishes."""
_OUT_BUFFER_BYTES = 256 * 1024
"""Coalesced QoS 0 bytes that are written at once, without waiting for the end of the turn."""
_CLIENT_ID_UNSAFE = re.compile(r"[.*> ]")
"""Characters NATS' MQTT gateway refuses in a client id (CONNACK 2): it builds subjects of it."""


def wire_client_id(client_id: str) -> str:
    """The client id as sent in CONNECT: ``.``, ``*``, ``>`` and spaces become ``_`` (NATS)."""
    return _CLIENT_ID_UNSAFE.sub("_", client_id)


class MqttTransport:
    """Transport over one MQTT 3.1.1 connection, optionally reconnecting.

    ``url`` is one broker, or the members of a clustered broker (several URLs, tried in the
    order given): entering connects to the first that answers, and a lost connection is
    re-established with the next member first, round the list, backing off only after a full
    round failed (``failovers`` counts reconnections that landed on another member; ``url`` is
    the member in use). ``client_id`` must be unique on the broker (a second connection with
    the same id takes the first one over); it is sent as :func:`wire_client_id` makes it.
    Entering fails at once with a one-line BrokerError if no broker can be reached, even with
    ``reconnect=True``: that flag only covers losses after the first connect.
    While reconnecting, QoS 0 publications are dropped and counted in
    ``dropped_publishes``; subscriptions are restored before ``connected`` is set again and
    ``on_reconnect`` runs. Without ``reconnect``, a lost connection ends ``batches()`` and
    later calls with a BrokerError. ``inbox_high_water`` received messages that nobody has
    taken from ``batches()`` pause reading from the socket (the broker queues meanwhile).
    QoS 0 and 1 are supported (QoS 1 publications are acknowledged, not retried).
    """

    def __init__(
        self,
        url: BrokerURL | Sequence[BrokerURL],
        *,
        client_id: str,
        will: Will | None = None,
        clean_session: bool = True,
        reconnect: bool = False,
        reconnect_delay_s: tuple[float, float] = (0.05, 2.0),
        on_reconnect: Callable[[], Awaitable[None] | None] | None = None,
        keepalive_s: int = 30,
        timeout_s: float = 5.0,
        inbox_high_water: int = 200_000,
    ) -> None:
        self.urls: tuple[BrokerURL, ...] = (url,) if isinstance(url, BrokerURL) else tuple(url)
        if not self.urls:
            raise BrokerError(f"transport {client_id!r}: no broker URL given")
        self._member = 0
        self.client_id = client_id
        self._will = will
        self._clean_session = clean_session
        self._reconnect = reconnect
        self._delay_min_s, self._delay_max_s = reconnect_delay_s
        self._on_reconnect = on_reconnect
        self._keepalive_s = keepalive_s
        self._timeout_s = timeout_s
        self._high_water = inbox_high_water
        self.connected = asyncio.Event()
        """Set while the connection is up (cleared during reconnect attempts)."""
        self.disconnected = asyncio.Event()
        """Set while the connection is down: before connecting, after a loss, after close."""
        self.disconnected.set()
        self.reconnects = 0
        self.failovers = 0
        """Reconnections that landed on another member of a clustered broker."""
        self.published = 0
        self.received = 0
        self.dropped_publishes = 0
        """QoS 0 messages published while the connection was down (they are lost)."""
        self._conn: MqttConnection | None = None
        self._topics: dict[str, int] = {}
        self._inbox: list[Message] = []
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._error: BrokerError | None = None
        self._closing = False
        self._out = bytearray()
        self._out_count = 0
        self._push_scheduled = False
        self._encoder = mqtt.PublishEncoder()
        self._supervisor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> BrokerURL:
        """The broker (the cluster member) this transport is connected or connecting to."""
        return self.urls[self._member]

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._closing, self._error = False, None
        await self._connect_round(self._member)
        self._supervisor = asyncio.create_task(self._supervise(),
                                               name=f"mqtt-supervisor-{self.client_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close(graceful=True)

    async def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a crash would: the broker sends the will."""
        await self._close(graceful=False)

    async def _close(self, *, graceful: bool) -> None:
        self._closing = True
        if not graceful:
            # Like a crash: what has not reached the socket yet is lost.
            self.dropped_publishes += self._out_count
            self._out = bytearray()
            self._out_count = 0
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.on_lost = None
            if graceful and self.connected.is_set():
                self._push_to(conn)
                await conn.close()
            else:
                conn.abort()
                await conn.wait_closed()
        self.connected.clear()
        self.disconnected.set()
        self._wake.set()

    async def _connect_round(self, first: int) -> None:
        """Try every member once, from ``first`` on; BrokerError if none answers."""
        errors: list[BrokerError] = []
        for step in range(len(self.urls)):
            try:
                await self._connect((first + step) % len(self.urls))
                return
            except BrokerError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise BrokerError(f"none of the {len(self.urls)} broker members answered: "
                          + "; ".join(str(e) for e in errors))

    async def _connect(self, member: int) -> None:
        """One connection attempt to one member: CONNECT, re-subscribe; BrokerError on failure."""
        self._member = member
        conn = make_client(self.url, client_id=wire_client_id(self.client_id),
                           timeout_s=self._timeout_s, keepalive_s=self._keepalive_s,
                           will=self._will, clean_session=self._clean_session, message=Message)
        conn.sink = self._inbox  # before CONNACK: a kept session may deliver at once
        conn.on_messages = self._on_messages
        conn.on_lost = lambda exc: self._connection_lost(conn, exc)
        try:
            await conn.connect()
        except (OSError, BrokerError) as exc:  # TimeoutError and ssl.SSLError are OSErrors
            await conn.wait_closed()
            raise connect_error(self.url, exc, timeout_s=self._timeout_s) from exc
        self._conn = conn
        self._lost.clear()
        if self._topics:
            try:
                await self._subscribe_now(dict(self._topics))
            except BrokerError:
                self._conn = None
                conn.on_lost = None
                conn.abort()
                await conn.wait_closed()
                raise
        self.connected.set()
        self.disconnected.clear()

    def _connection_lost(self, conn: MqttConnection, exc: BaseException | None) -> None:
        if conn is self._conn:
            log.info("%s: connection to %s lost: %s", self.client_id, self.url.address, exc)
            self._lost.set()

    async def _supervise(self) -> None:
        """Wait for the connection to drop; then reconnect (or record the failure)."""
        while True:
            await self._lost.wait()
            self._lost.clear()
            if self._closing:
                return
            self.connected.clear()
            self.disconnected.set()
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.wait_closed()
            if not self._reconnect:
                self._error = BrokerError(
                    f"lost the connection to the MQTT broker at {self.url.address} "
                    f"(client {self.client_id!r}); check the broker, or enable reconnect")
                self._wake.set()
                return
            await self._reconnect_with_backoff()

    async def _reconnect_with_backoff(self) -> None:
        delay_s = self._delay_min_s
        lost = self._member
        # The member that dropped us is tried last: a killed member refuses, a restarted one
        # may still be electing its JetStream leaders.
        first = (lost + 1) % len(self.urls)
        while True:
            try:
                await self._connect_round(first)
                break
            except BrokerError as exc:
                log.info("%s: reconnect failed (%s); retrying in %.2f s", self.client_id, exc,
                         delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, self._delay_max_s)
        self.reconnects += 1
        if self._member != lost:
            self.failovers += 1
        log.info("%s: reconnected to %s (reconnect #%d)", self.client_id, self.url.address,
                 self.reconnects)
        if self._on_reconnect is not None:
            try:
                result = self._on_reconnect()
                if result is not None:
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: on_reconnect hook failed", self.client_id)

    # -- subscribe -------------------------------------------------------------------------

    async def subscribe(self, *topics: str, qos: int = 0) -> None:
        """Subscribe to topic filters (kept across reconnects); returns after SUBACK."""
        if qos not in (0, 1):
            raise BrokerError(f"subscription QoS {qos}: this transport supports 0 and 1")
        for topic in topics:
            check_topic_filter(topic)
        wanted = {topic: qos for topic in topics}
        self._topics.update(wanted)
        if wanted:
            await self._subscribe_now(wanted)

    async def _subscribe_now(self, topics: dict[str, int]) -> None:
        conn = self._require_conn()
        try:
            granted = await conn.subscribe(list(topics.items()))
        except TimeoutError as exc:
            raise BrokerError(f"MQTT broker at {self.url.address}: no SUBACK for "
                              f"{sorted(topics)} within {self._timeout_s:g} s") from exc
        except ConnectionError as exc:
            raise BrokerError(f"MQTT broker at {self.url.address}: subscribing to "
                              f"{sorted(topics)} failed: {exc}") from exc
        refused = [t for t, code in zip(topics, granted, strict=True) if code >= 0x80]
        if refused:
            raise BrokerError(f"MQTT broker at {self.url.address} refused subscriptions "
                              f"{refused} for client {self.client_id!r}; check the broker's ACL")

    # -- publish ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 0) -> None:
        """Queue one message (non-blocking); QoS 0 messages are coalesced per loop turn."""
        if qos or self._conn is None:
            self._publish_one(topic, payload, retain, qos)  # also: closed, or reconnecting
            return
        self._encoder.append(self._out, topic, payload, retain)
        self._out_count += 1
        if len(self._out) >= _OUT_BUFFER_BYTES:
            self._push_out()
        elif not self._push_scheduled:
            self._push_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._push_out_soon)

    def _push_out_soon(self) -> None:
        """The end-of-turn push; a loop callback must not raise, so losses are only counted."""
        try:
            self._push_out()
        except BrokerError as exc:
            log.debug("%s: %s", self.client_id, exc)

    def _push_out(self) -> None:
        """Write the coalesced QoS 0 packets as one write (or count them as dropped)."""
        self._push_scheduled = False
        conn = self._conn
        if conn is not None and self.connected.is_set():
            self._push_to(conn)
        elif self._out:
            count = self._out_count
            self._out = bytearray()
            self._out_count = 0
            self._count_drop(count)

    def _push_to(self, conn: MqttConnection) -> None:
        if not self._out:
            return
        # A fresh bytearray per turn: the socket transport may keep a view of the old one.
        data, count = self._out, self._out_count
        self._out = bytearray()
        self._out_count = 0
        if conn.write(data):
            self.published += count
        else:
            self._count_drop(count)

    def _publish_one(self, topic: str, payload: bytes, retain: bool, qos: int) -> None:
        self._push_out()  # keep order with coalesced QoS 0 messages
        check_topic_name(topic)
        if qos not in (0, 1):
            raise BrokerError(f"publish QoS {qos}: this transport supports 0 and 1")
        conn = self._conn
        if conn is None or not self.connected.is_set():
            self._count_drop(1)
            return
        if qos:
            sent = conn.publish_qos1(topic, payload, retain=retain)
        else:
            sent = conn.write(mqtt.encode_publish(topic, payload, retain=retain))
        if sent:
            self.published += 1
        else:
            self._count_drop(1)

    def _count_drop(self, count: int) -> None:
        if self._error is not None:
            raise self._error
        if self._loop is None or self._closing:
            raise BrokerError(f"transport {self.client_id!r} is closed; publish inside "
                              "'async with'")
        self.dropped_publishes += count

    async def flush(self) -> None:
        """Return once the broker has processed everything published so far."""
        self._push_out()
        conn = self._require_conn()
        try:
            # The broker handles one connection's packets in order, so UNSUBACK for a filter
            # nobody uses proves that every earlier PUBLISH has been routed.
            await conn.unsubscribe([_FLUSH_FILTER])
        except TimeoutError as exc:
            raise BrokerError(f"MQTT broker at {self.url.address}: flush failed: no UNSUBACK "
                              f"within {self._timeout_s:g} s") from exc
        except ConnectionError as exc:
            if self._error is not None:
                raise self._error from exc
            raise BrokerError(f"MQTT broker at {self.url.address}: flush failed: {exc}") from exc

    # -- receive ---------------------------------------------------------------------------

    def _on_messages(self) -> None:
        self._wake.set()
        if len(self._inbox) >= self._high_water and self._conn is not None:
            # Backpressure: stop reading until the consumer catches up; the broker queues.
            self._conn.pause_reading()

    async def batches(self) -> AsyncIterator[list[Message]]:
        """Lists of received messages until the transport closes; BrokerError if it is lost."""
        while True:
            if self._inbox:
                batch, self._inbox = self._inbox, []
                self.received += len(batch)
                conn = self._conn
                if conn is not None:
                    conn.sink = self._inbox
                    conn.resume_reading()
                yield batch
                continue
            if self._error is not None:
                raise self._error
            if self._closing:
                return
            self._wake.clear()
            await self._wake.wait()

    def _require_conn(self) -> MqttConnection:
        if self._conn is None:
            if self._error is not None:
                raise self._error
            raise BrokerError(f"transport {self.client_id!r} is not connected to "
                              f"{self.url.address}")
        return self._conn
