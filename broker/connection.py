"""One MQTT 3.1.1 client connection on asyncio's public API, driving orbitmesh.protocol.mqtt.

``MqttConnection`` is an :class:`asyncio.Protocol`: ``loop.create_connection`` gives it a
transport (TCP, or TLS through an ``ssl.SSLContext``), the codec turns bytes into packets. It
does one connection's work (CONNECT/CONNACK, SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, QoS 1
acks both ways, keepalive pings, DISCONNECT or abort) and appends received messages to a list
its owner chooses. Reconnecting, remembered subscriptions and publish coalescing are the
owner's business (broker/client.py). Connection failures are raised as the foreign errors
they are (OSError, ssl.SSLError, TimeoutError) or :class:`ConnackRefusedError`;
:func:`broker.connect_error` turns any of them into one BrokerError line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from orbitmesh.errors import BrokerError
from orbitmesh.protocol import mqtt
from orbitmesh.protocol.mqtt import Connack, Pingresp, Puback, Publish, Suback, Unsuback

log = logging.getLogger(__name__)


class ConnackRefusedError(ConnectionError):
    """The broker answered CONNECT with a non-zero CONNACK return code."""

    def __init__(self, return_code: int) -> None:
        self.return_code = return_code
        reason = mqtt.CONNACK_REASONS.get(return_code, "unknown reason")
        super().__init__(f"CONNACK return code {return_code} ({reason})")


class BrokerClosedError(ConnectionError):
    """The broker closed the connection (before CONNACK, or while waiting for an ack)."""


class MqttConnection(asyncio.Protocol):
    """One connection to one broker; ``await connect()`` once, then use, then close or abort."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        will: tuple[str, bytes, bool] | None = None,
        clean_session: bool = True,
        timeout_s: float = 5.0,
        message: mqtt.MessageFactory = Publish,
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self._ssl = ssl_context
        self._username, self._password = username, password
        self._keepalive_s = keepalive_s
        self._will = will
        self._clean_session = clean_session
        self.timeout_s = timeout_s
        self._reader = mqtt.PacketReader(message)
        self.sink: list[Any] = []
        """Received messages are appended here (the owner may swap in a fresh list)."""
        self.on_messages: Callable[[], None] | None = None
        """Called after each read that appended messages to ``sink``."""
        self.on_lost: Callable[[BaseException | None], None] | None = None
        """Called once when the connection ends for any reason (None: closed by us, cleanly)."""
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[Connack] | None = None
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._qos1_unacked: set[int] = set()
        self._ids = itertools.cycle(range(1, mqtt.MAX_PACKET_ID + 1))
        self._closed: asyncio.Future[None] | None = None
        self._lost_error: BaseException | None = None
        self._closing = False
        self._wrote = False
        self._last_rx_s = 0.0
        self._pinger: asyncio.Task[None] | None = None
        self.reading_paused = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called by asyncio once TCP (and TLS) is up."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        """Decode what arrived: messages go to ``sink``, the rest is handled here."""
        self._last_rx_s = time.monotonic()
        try:
            if self._connack is not None and not self._connack.done() and data[:1] != b"\x20" \
                    and not self._reader.pending_bytes:
                # Say so at once, rather than wait for a "packet" whose length is garbage.
                raise mqtt.ProtocolError(f"the first packet must be CONNACK (0x20), not first "
                                         f"byte {data[0]:#04x}")
            control = self._reader.feed_split(data, self.sink)
        except mqtt.ProtocolError as exc:
            log.error("%s: %s; dropping the connection", self.client_id, exc)
            self._fail(exc)
            return
        for packet in control:
            self._handle(packet)
        if self.sink and self.on_messages is not None:
            self.on_messages()

    def eof_received(self) -> bool | None:
        """The broker half-closed: treat it as the end (False lets asyncio close)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Called by asyncio when the connection has ended, for whatever reason."""
        error: BaseException | None = self._lost_error or exc
        if error is None and not self._closing:
            error = BrokerClosedError("the broker closed the connection")
        self._transport = None
        for future in [self._connack, *self._acks.values()]:
            if future is not None and not future.done():
                future.set_exception(error or BrokerClosedError("connection closed"))
        self._acks.clear()
        if self._qos1_unacked:
            log.info("%s: %d QoS 1 publications were not acknowledged before the connection "
                     "ended", self.client_id, len(self._qos1_unacked))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self.on_lost is not None:
            callback, self.on_lost = self.on_lost, None
            callback(error)

    # -- connect / close ------------------------------------------------------------------

    async def connect(self) -> None:
        """TCP (+TLS), CONNECT, wait for CONNACK: all within ``timeout_s``; raise on failure."""
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        self._connack = loop.create_future()
        try:
            async with asyncio.timeout(self.timeout_s):
                await loop.create_connection(
                    lambda: self, self.host, self.port, ssl=self._ssl,
                    ssl_handshake_timeout=self.timeout_s if self._ssl else None)
                self.write(mqtt.encode_connect(
                    self.client_id, clean_session=self._clean_session,
                    keepalive_s=self._keepalive_s, will=self._will, username=self._username,
                    password=self._password))
                connack = await self._connack
        except BaseException:
            self.abort()
            raise
        if connack.return_code:
            self.abort()
            raise ConnackRefusedError(connack.return_code)
        self._last_rx_s = time.monotonic()
        if self._keepalive_s:
            self._pinger = asyncio.create_task(self._keepalive(),
                                               name=f"mqtt-keepalive-{self.client_id}")

    async def close(self) -> None:
        """Send DISCONNECT (the broker discards the will) and wait for the socket to close."""
        transport = self._transport
        if transport is None:
            await self._stop_pinger()
            return
        await self._stop_pinger()
        self._closing = True
        transport.write(mqtt.encode_disconnect())
        transport.close()  # flushes what is buffered first
        if self._closed is not None:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await asyncio.shield(self._closed)
            except TimeoutError:
                log.debug("%s: the socket did not close in %.1f s; aborting", self.client_id,
                          self.timeout_s)
                transport.abort()

    def abort(self) -> None:
        """Drop the connection at once, without DISCONNECT (the broker publishes the will)."""
        self._closing = True
        if self._pinger is not None and self._pinger is not asyncio.current_task():
            self._pinger.cancel()  # awaited later by wait_closed / close
        if self._transport is not None:
            self._transport.abort()

    async def _stop_pinger(self) -> None:
        pinger, self._pinger = self._pinger, None
        if pinger is not None and pinger is not asyncio.current_task():
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def wait_closed(self) -> None:
        """Return once the connection has ended (and the keepalive task is gone)."""
        # Without a transport there is nothing to wait for: never connected, or already lost.
        if self._closed is not None and self._transport is not None:
            await asyncio.shield(self._closed)
        await self._stop_pinger()

    def _fail(self, exc: BaseException) -> None:
        self._lost_error = exc
        self.abort()

    @property
    def is_open(self) -> bool:
        """True while the socket is up (CONNACK may still be outstanding)."""
        return self._transport is not None and not self._transport.is_closing()

    # -- sending --------------------------------------------------------------------------

    def write(self, data: bytes | bytearray) -> bool:
        """Hand bytes to the socket; False (nothing sent) when the connection is gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        self._wrote = True
        return True

    def publish_qos1(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Send one QoS 1 PUBLISH (the PUBACK is only counted); False if not connected."""
        packet_id = self._packet_id()
        if not self.write(mqtt.encode_publish(topic, payload, retain=retain, qos=1,
                                              packet_id=packet_id)):
            return False
        self._qos1_unacked.add(packet_id)
        return True

    async def subscribe(self, topics: Sequence[tuple[str, int]]) -> tuple[int, ...]:
        """SUBSCRIBE and wait for SUBACK; the granted QoS (or 0x80) per filter."""
        packet_id = self._packet_id()
        suback: Suback = await self._request(packet_id,
                                             mqtt.encode_subscribe(packet_id, topics))
        if len(suback.granted) != len(topics):
            self._fail(mqtt.ProtocolError(
                f"MQTT SUBACK carries {len(suback.granted)} return codes for "
                f"{len(topics)} filters"))
            raise BrokerError(f"MQTT broker at {self.host}:{self.port} answered a SUBSCRIBE "
                              f"of {len(topics)} filters with {len(suback.granted)} codes")
        return suback.granted

    async def unsubscribe(self, topics: Sequence[str]) -> None:
        """UNSUBSCRIBE and wait for UNSUBACK."""
        packet_id = self._packet_id()
        await self._request(packet_id, mqtt.encode_unsubscribe(packet_id, topics))

    async def _request(self, packet_id: int, packet: bytes) -> Any:
        """Send a packet and wait (``timeout_s``) for the ack that carries ``packet_id``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[packet_id] = future
        if not self.write(packet):
            self._acks.pop(packet_id, None)
            raise BrokerClosedError("not connected")
        try:
            async with asyncio.timeout(self.timeout_s):
                return await future
        finally:
            self._acks.pop(packet_id, None)

    def _packet_id(self) -> int:
        for _, packet_id in zip(range(mqtt.MAX_PACKET_ID), self._ids, strict=False):
            if packet_id not in self._acks and packet_id not in self._qos1_unacked:
                return packet_id
        raise BrokerError(f"MQTT client {self.client_id!r}: all {mqtt.MAX_PACKET_ID} packet "
                          "ids are in use by unacknowledged QoS 1 publications; await flush() "
                          "now and then, or publish with QoS 0")

    # -- receiving ------------------------------------------------------------------------

    def _handle(self, packet: mqtt.Packet) -> None:
        kind = type(packet)
        if kind is Publish:
            assert isinstance(packet, Publish)
            if packet.qos == 1 and packet.packet_id is not None:
                self.write(mqtt.encode_puback(packet.packet_id))
        elif kind is Puback:
            assert isinstance(packet, Puback)
            self._qos1_unacked.discard(packet.packet_id)
        elif kind is Suback or kind is Unsuback:
            assert isinstance(packet, Suback | Unsuback)
            future = self._acks.get(packet.packet_id)
            if future is not None and not future.done():
                future.set_result(packet)
        elif kind is Connack:
            assert isinstance(packet, Connack)
            if self._connack is None or self._connack.done():
                self._fail(mqtt.ProtocolError("MQTT CONNACK received twice"))
            else:
                self._connack.set_result(packet)
        elif kind is Pingresp:
            pass  # _last_rx_s was updated on arrival; that is all a PINGRESP is for

    def pause_reading(self) -> None:
        """Stop reading from the socket (backpressure); the broker queues meanwhile."""
        if self._transport is not None and not self.reading_paused:
            self._transport.pause_reading()
            self.reading_paused = True

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`."""
        if self._transport is not None and self.reading_paused:
            self.reading_paused = False
            self._transport.resume_reading()

    async def _keepalive(self) -> None:
        """PINGREQ when we have been quiet; drop a connection the broker stopped answering."""
        interval_s = self._keepalive_s / 2
        while self._transport is not None:
            await asyncio.sleep(interval_s)
            silent_s = time.monotonic() - self._last_rx_s
            # Ping when we were quiet (the broker's keepalive) or the broker was (ours).
            if not self._wrote or silent_s >= interval_s:
                self.write(mqtt.encode_pingreq())
            self._wrote = False
            # While reading is paused nothing can arrive, so silence proves nothing then.
            if silent_s > 1.5 * self._keepalive_s and not self.reading_paused:
                log.warning("%s: no answer from the broker for %.0f s (keepalive %d s); "
                            "dropping the connection", self.client_id, silent_s,
                            self._keepalive_s)
                self._fail(TimeoutError(f"no MQTT traffic from the broker for {silent_s:.0f} s"))
                return
