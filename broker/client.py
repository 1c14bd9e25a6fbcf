"""``MqttTransport``: the Transport over one MQTT 3.1.1 connection (aiomqtt/paho), fast path.

See orbitmesh/protocol/transport.py for the interface and the in-memory fake; this is the real one.
aiomqtt does the connection work (CONNECT, TLS, SUBSCRIBE, keepalive, DISCONNECT); QoS 0 PUBLISH
packets are encoded and decoded here, in bulk, which is what lets one process move well over a
hundred thousand messages per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self, cast

import aiomqtt
import paho.mqtt.client as mqtt

from broker import connect_error, discard_client, make_client
from broker.url import BrokerURL
from orbitmesh.errors import BrokerError
from orbitmesh.protocol.transport import Message, Will, check_topic_filter, check_topic_name

log = logging.getLogger("orbitmesh.protocol.transport")

_FLUSH_FILTER = "$orbitmesh/flush"
"""Never subscribed: UNSUBSCRIBE from it is a harmless round trip that orders after publishes."""
_OUT_BUFFER_BYTES = 256 * 1024
_READ_CHUNK_BYTES = 256 * 1024
_READ_BUDGET_BYTES = 1024 * 1024
"""At most ~1 MiB is read per wakeup, so one busy connection cannot starve the loop."""
_PAHO_PRIVATE = ("_packet_read", "_packet_handle", "_packet_queue", "_loop_rc_handle",
                 "_sock_recv")
"""paho internals the fast path uses; without them the transport falls back to public calls."""





def _in_packet(command: int, length: int, body: bytearray) -> dict[str, Any]:
    """paho's record of a fully read incoming packet (Client._in_packet)."""
    return {"command": command, "have_remaining": 1 if command else 0, "remaining_count": [],
            "remaining_mult": 1, "remaining_length": length, "packet": body, "to_process": 0,
            "pos": 0}


def remaining_length(n: int) -> bytes:
    """MQTT "remaining length" (variable byte integer) encoding of ``n``."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


class MqttTransport:
    """Transport over one MQTT 3.1.1 connection (aiomqtt/paho), optionally reconnecting.

    ``client_id`` must be unique on the broker (a second connection with the same id takes the
    first one over). Entering fails at once with a one-line BrokerError if the broker cannot be
    reached, even with ``reconnect=True``: that flag only covers losses after the first
    connect. While reconnecting, QoS 0 publications are dropped and counted in
    ``dropped_publishes``; subscriptions are restored before ``connected`` is set again and
    ``on_reconnect`` runs. Without ``reconnect``, a lost connection ends ``batches()`` and
    later calls with a BrokerError. ``inbox_high_water`` received messages that nobody has
    taken from ``batches()`` pause reading from the socket (the broker queues meanwhile).
    """

    def __init__(
        self,
        url: BrokerURL,
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
        fast_path: bool = True,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self._will = will
        self._clean_session = clean_session
        self._reconnect = reconnect
        self._delay_min_s, self._delay_max_s = reconnect_delay_s
        self._on_reconnect = on_reconnect
        self._keepalive_s = keepalive_s
        self._timeout_s = timeout_s
        self._high_water = inbox_high_water
        self._fast = fast_path and all(hasattr(mqtt.Client, n) for n in _PAHO_PRIVATE)
        self.connected = asyncio.Event()
        """Set while the connection is up (cleared during reconnect attempts)."""
        self.disconnected = asyncio.Event()
        """Set while the connection is down: before connecting, after a loss, after close."""
        self.disconnected.set()
        self.reconnects = 0
        self.published = 0
        self.received = 0
        self.dropped_publishes = 0
        """QoS 0 messages published while the connection was down (they are lost)."""
        self._client: aiomqtt.Client | None = None
        self._paho: Any = None
        self._topics: dict[str, int] = {}
        self._inbox: list[Message] = []
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._error: BrokerError | None = None
        self._closing = False
        self._reading_paused = False
        self._rx = bytearray()
        self._out = bytearray()
        self._out_count = 0
        self._push_scheduled = False
        self._topic_cache: dict[tuple[str, bool], tuple[int, bytes]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._closing, self._error = False, None
        await self._connect()
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
            # Like a crash: what has not reached paho yet is lost.
            self.dropped_publishes += self._out_count
            self._out.clear()
            self._out_count = 0
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        client = self._client
        self._client = None
        if client is not None:
            if graceful and self.connected.is_set():
                self._push_out()
                try:
                    async with asyncio.timeout(self._timeout_s):
                        await client.__aexit__(None, None, None)
                except (TimeoutError, aiomqtt.MqttError) as exc:
                    log.debug("%s: disconnect was not clean: %s", self.client_id, exc)
                    discard_client(client)
            else:
                await asyncio.sleep(0)  # let aiomqtt's pending add_writer run before the close
                discard_client(client)
        self._paho = None
        self.connected.clear()
        self.disconnected.set()
        self._wake.set()

    async def _connect(self) -> None:
        """One connection attempt: CONNECT, hook paho, re-subscribe; BrokerError on failure."""
        will = aiomqtt.Will(self._will[0], self._will[1], 0, self._will[2]) if self._will else None
        client = make_client(self.url, client_id=self.client_id, timeout_s=self._timeout_s,
                             keepalive_s=self._keepalive_s, will=will,
                             clean_session=self._clean_session,
                             logger=logging.getLogger(f"{__name__}.paho"))
        paho: Any = client._client
        paho.on_message = self._on_message
        paho.on_publish = None  # we never wait for QoS 0 "published" events
        aiomqtt_on_disconnect = paho.on_disconnect

        def on_disconnect(*args: Any) -> None:
            aiomqtt_on_disconnect(*args)
            if self._paho is paho and self._loop is not None:
                self._loop.call_soon_threadsafe(self._lost.set)

        paho.on_disconnect = on_disconnect
        try:
            async with asyncio.timeout(self._timeout_s):
                await client.__aenter__()
        except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
            discard_client(client)
            raise connect_error(self.url, exc, timeout_s=self._timeout_s) from exc
        self._client, self._paho = client, paho
        self._lost.clear()
        self._reading_paused = False
        self._rx = bytearray()
        if self._fast:
            self._watch_socket()
        if self._topics:
            try:
                await self._subscribe_now(dict(self._topics))
            except BrokerError:
                self._client, self._paho = None, None
                discard_client(client)
                raise
        self.connected.set()
        self.disconnected.clear()

    async def _supervise(self) -> None:
        """Wait for the connection to drop; then reconnect (or record the failure)."""
        while True:
            await self._lost.wait()
            self._lost.clear()
            if self._closing:
                return
            self.connected.clear()
            self.disconnected.set()
            if self._client is not None:
                discard_client(self._client)
                self._client, self._paho = None, None
            if not self._reconnect:
                self._error = BrokerError(
                    f"lost the connection to the MQTT broker at {self.url.address} "
                    f"(client {self.client_id!r}); check the broker, or enable reconnect")
                self._wake.set()
                return
            await self._reconnect_with_backoff()

    async def _reconnect_with_backoff(self) -> None:
        delay_s = self._delay_min_s
        while True:
            try:
                await self._connect()
                break
            except BrokerError as exc:
                log.info("%s: reconnect failed (%s); retrying in %.2f s", self.client_id, exc,
                         delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, self._delay_max_s)
        self.reconnects += 1
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
        for topic in topics:
            check_topic_filter(topic)
        wanted = {topic: qos for topic in topics}
        self._topics.update(wanted)
        if wanted:
            await self._subscribe_now(wanted)

    async def _subscribe_now(self, topics: dict[str, int]) -> None:
        client = self._require_client()
        try:
            granted = await client.subscribe(list(topics.items()), timeout=self._timeout_s)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"MQTT broker at {self.url.address}: subscribing to "
                              f"{sorted(topics)} failed: {exc}") from exc
        refused = [t for t, code in zip(topics, granted, strict=False)
                   if int(cast(int, getattr(code, "value", code))) >= 0x80]
        if refused:
            raise BrokerError(f"MQTT broker at {self.url.address} refused subscriptions "
                              f"{refused} for client {self.client_id!r}; check the broker's ACL")

    # -- publish ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 0) -> None:
        """Queue one message (non-blocking); QoS 0 messages are coalesced per loop turn."""
        if qos or not self._fast or self._paho is None:
            self._publish_paho(topic, payload, retain, qos)  # also: closed, or reconnecting
            return
        cached = self._topic_cache.get((topic, retain))
        if cached is None:
            cached = self._encode_topic(topic, retain)
        head, topic_field = cached
        length = len(topic_field) + len(payload)
        out = self._out
        out.append(head)
        if length < 128:
            out.append(length)
        elif length < 16384:
            out.append((length & 0x7F) | 0x80)
            out.append(length >> 7)
        else:
            out += remaining_length(length)
        out += topic_field
        out += payload
        self._out_count += 1
        if len(out) >= _OUT_BUFFER_BYTES:
            self._push_out()
        elif not self._push_scheduled:
            self._push_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._push_out_soon)

    def _encode_topic(self, topic: str, retain: bool) -> tuple[int, bytes]:
        """PUBLISH header byte and length-prefixed topic, cached (so each topic is checked once)."""
        if self._loop is None:
            raise BrokerError(f"transport {self.client_id!r} is not connected; "
                              "use it inside 'async with'")
        check_topic_name(topic)
        encoded = topic.encode()
        cached = (0x31 if retain else 0x30, len(encoded).to_bytes(2, "big") + encoded)
        if len(self._topic_cache) > 100_000:
            self._topic_cache.clear()
        self._topic_cache[(topic, retain)] = cached
        return cached

    def _push_out_soon(self) -> None:
        """The end-of-turn push; a loop callback must not raise, so losses are only counted."""
        try:
            self._push_out()
        except BrokerError as exc:
            log.debug("%s: %s", self.client_id, exc)

    def _push_out(self) -> None:
        """Hand the coalesced QoS 0 packets to paho's send queue as one write."""
        self._push_scheduled = False
        if not self._out:
            return
        data, count = bytes(self._out), self._out_count
        self._out.clear()
        self._out_count = 0
        paho = self._paho
        if paho is None or paho._sock is None or not self.connected.is_set():
            self._count_drop(count)
            return
        # Command byte 0 is no MQTT packet type, so paho writes the bytes without treating
        # them as one PUBLISH (no on_publish, no message-info bookkeeping).
        paho._packet_queue(0, data, 0, 0)
        self.published += count

    def _publish_paho(self, topic: str, payload: bytes, retain: bool, qos: int) -> None:
        self._push_out()  # keep order with coalesced QoS 0 messages
        check_topic_name(topic)
        if self._paho is None or not self.connected.is_set():
            self._count_drop(1)
            return
        info = self._paho.publish(topic, payload, qos, retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
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
        client = self._require_client()
        try:
            # The broker handles one connection's packets in order, so UNSUBACK for a filter
            # nobody uses proves that every earlier PUBLISH has been routed.
            await client.unsubscribe(_FLUSH_FILTER, timeout=self._timeout_s)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"MQTT broker at {self.url.address}: flush failed: {exc}") from exc

    # -- receive ---------------------------------------------------------------------------

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # paho decodes payloads with struct.unpack, so they are bytes already.
        self._inbox.append(Message(message.topic, cast(bytes, message.payload), message.retain))
        self._wake.set()

    def _watch_socket(self) -> None:
        """Replace aiomqtt's one-packet-per-wakeup reader with one that drains the socket."""
        if self._loop is None or self._paho is None:
            return
        sock = self._paho.socket()
        if sock is not None:
            self._loop.add_reader(sock.fileno(), self._on_readable, self._paho)

    def _on_readable(self, paho: Any) -> None:
        """Read everything the socket has and parse it; paho handles all but QoS 0 PUBLISH."""
        if paho is not self._paho or paho._sock is None or self._reading_paused:
            return  # a late call for a connection that is gone or paused
        try:
            if paho._in_packet["command"]:
                # aiomqtt's reader left a packet half-read before we took over: let paho
                # finish it, so our parser starts on a packet boundary.
                rc = paho._packet_read()
                if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                    paho._loop_rc_handle(rc)
                    return
                if paho._in_packet["command"]:
                    return
            rx = self._rx
            budget = _READ_BUDGET_BYTES
            while budget > 0:
                try:
                    data = paho._sock_recv(_READ_CHUNK_BYTES)
                except BlockingIOError:
                    break
                except OSError:
                    paho._loop_rc_handle(mqtt.MQTT_ERR_CONN_LOST)
                    return
                if not data:
                    paho._loop_rc_handle(mqtt.MQTT_ERR_CONN_LOST)
                    return
                rx += data
                budget -= len(data)
            else:
                # Budget spent with data left. A TLS socket may hold decrypted bytes that the
                # selector cannot see, so come back explicitly rather than wait for the fd.
                assert self._loop is not None
                self._loop.call_soon(self._on_readable, paho)
            paho._last_bytes_received = mqtt.time_func()
            rc = self._parse(paho, rx)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                paho._loop_rc_handle(rc)
                return
        except Exception:
            log.exception("%s: reading from the broker failed; dropping the connection",
                          self.client_id)
            with contextlib.suppress(Exception):
                paho._loop_rc_handle(mqtt.MQTT_ERR_CONN_LOST)
            return
        if len(self._inbox) >= self._high_water and paho is self._paho:
            # Backpressure: stop reading until the consumer catches up; the broker queues.
            sock = paho.socket()
            if sock is not None and self._loop is not None:
                self._loop.remove_reader(sock.fileno())
                self._reading_paused = True

    def _parse(self, paho: Any, rx: bytearray) -> mqtt.MQTTErrorCode:
        """Consume the complete packets at the start of ``rx``; the rest waits for more bytes.

        QoS 0 PUBLISH (nearly all traffic) is decoded here; every other packet is handed to
        paho exactly as its own reader would, so acks, pings and QoS 1/2 keep paho's logic.
        """
        inbox = self._inbox
        size = len(rx)
        pos = 0
        rc = mqtt.MQTT_ERR_SUCCESS
        while size - pos >= 2:
            header = rx[pos]
            index = pos + 1
            length = shift = 0
            while index < size:  # "remaining length": 1-4 bytes, 7 bits each
                digit = rx[index]
                index += 1
                length |= (digit & 0x7F) << shift
                shift += 7
                if not digit & 0x80:
                    break
                if shift >= 28:
                    return mqtt.MQTT_ERR_PROTOCOL
            if (rx[index - 1] & 0x80) or index + length > size:
                break  # incomplete: wait for more bytes
            end = index + length
            if header & 0xF6 == 0x30:  # PUBLISH, QoS 0
                topic_end = index + 2 + ((rx[index] << 8) | rx[index + 1])
                inbox.append(Message(rx[index + 2 : topic_end].decode(),
                                     bytes(rx[topic_end:end]), bool(header & 1)))
            else:
                paho._in_packet = _in_packet(header, length, rx[index:end])
                rc = paho._packet_handle()
                paho._in_packet = _in_packet(0, 0, bytearray())
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
            pos = end
        del rx[:pos]
        if inbox:
            self._wake.set()
        return rc

    async def batches(self) -> AsyncIterator[list[Message]]:
        """Lists of received messages until the transport closes; BrokerError if it is lost."""
        while True:
            if self._inbox:
                batch, self._inbox = self._inbox, []
                self.received += len(batch)
                if self._reading_paused:
                    self._reading_paused = False
                    self._watch_socket()
                yield batch
                continue
            if self._error is not None:
                raise self._error
            if self._closing:
                return
            self._wake.clear()
            await self._wake.wait()

    def _require_client(self) -> aiomqtt.Client:
        if self._client is None:
            if self._error is not None:
                raise self._error
            raise BrokerError(f"transport {self.client_id!r} is not connected to "
                              f"{self.url.address}")
        return self._client
