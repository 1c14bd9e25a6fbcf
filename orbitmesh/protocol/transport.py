"""The one I/O seam between nodes and MQTT: ``Transport``, with a real and an in-memory backend.

The MQTT backend, ``MqttTransport``, lives in broker/client.py. Both backends are async context
managers with the same surface::

    async with MqttTransport(url, client_id="worker-0") as transport:
        await transport.subscribe("orbitmesh/run1/node/+/in")     # returns after SUBACK
        transport.publish("orbitmesh/run1/node/gs-1/in", frame)  # non-blocking, QoS 0
        async for batch in transport.batches():                  # lists of Message
            ...

Throughput comes from batching on both sides. ``publish`` encodes QoS 0 PUBLISH packets into
one buffer that is handed to the socket once per event-loop turn, and the receive path decodes
everything a read brought and hands it over as one list. On a 2-vCPU box one process moved
150k-250k messages/s this way (bench/transport.py, measured on the earlier paho-based fast
path; the asyncio one costs about the same CPU per message), against 6-7k with aiomqtt's
``await publish`` / ``async for client.messages``.

The bytes come from one sans-I/O codec, orbitmesh/protocol/mqtt.py; the socket is an
``asyncio.Protocol`` on ``loop.create_connection`` (broker/connection.py). No third-party MQTT
library is involved, so none of their internals can break the message plane.

Semantics follow MQTT 3.1.1 as mosquitto implements it, and ``MemoryTransport`` copies them:
a client gets its own publications if it subscribed to them, one copy per message even when
several of its filters match, the retain flag only on messages replayed at subscribe time, and
its will when its connection ends without DISCONNECT (``abort()``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import NamedTuple, Protocol, Self

from orbitmesh.errors import BrokerError

log = logging.getLogger(__name__)

Will = tuple[str, bytes, bool]
"""Last will: (topic, payload, retain), published by the broker if the client dies."""


class Message(NamedTuple):
    """One received MQTT message."""

    topic: str
    payload: bytes
    retain: bool = False


class Transport(Protocol):
    """What nodes need from MQTT: subscribe, fire-and-forget publish, batched receive."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def subscribe(self, *topics: str) -> None:
        """Subscribe to topic filters; returns once the broker has acknowledged them."""
        ...

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 0) -> None:
        """Queue one message for sending; never blocks."""
        ...

    async def flush(self) -> None:
        """Return once the broker has processed everything published so far."""
        ...

    def batches(self) -> AsyncIterator[list[Message]]:
        """Received messages, in arrival order, as lists of everything available at once."""
        ...


# -- topics --------------------------------------------------------------------------------


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when MQTT ``topic_filter`` (with ``+`` and ``#``) matches the concrete ``topic``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # wildcards never match $SYS-style topics (MQTT 3.1.1, 4.7.2)
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


def check_topic_filter(topic_filter: str) -> None:
    """BrokerError unless ``topic_filter`` is a valid MQTT subscription filter."""
    levels = topic_filter.split("/")
    ok = bool(topic_filter) and "\x00" not in topic_filter
    for index, level in enumerate(levels):
        if ("#" in level and (level != "#" or index != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            ok = False
    if not ok:
        raise BrokerError(f"topic filter {topic_filter!r} is not valid MQTT: '+' must fill a "
                          "whole level and '#' must be the whole last level")


def check_topic_name(topic: str) -> None:
    """BrokerError unless ``topic`` is a valid topic to publish to (no wildcards)."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise BrokerError(f"topic {topic!r} cannot be published to: it must be non-empty and "
                          "contain no '+' or '#'")


# -- in memory -----------------------------------------------------------------------------


class MemoryBroker:
    """An in-process MQTT 3.1.1 bus for unit tests: filters, retained messages, wills."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.clients: dict[str, MemoryTransport] = {}
        self.routed = 0

    def attach(self, transport: MemoryTransport) -> None:
        """Register a connecting client; an older client with the same id is taken over."""
        previous = self.clients.get(transport.client_id)
        if previous is not None and previous is not transport:
            previous._lose(BrokerError(
                f"client id {transport.client_id!r} was taken over by a new connection; "
                "client ids must be unique per broker"))
        self.clients[transport.client_id] = transport

    def detach(self, transport: MemoryTransport) -> None:
        """Forget a disconnected client."""
        if self.clients.get(transport.client_id) is transport:
            del self.clients[transport.client_id]

    def route(self, topic: str, payload: bytes, retain: bool) -> None:
        """Deliver one publication to every matching subscriber (once each) and retain it."""
        check_topic_name(topic)
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        self.routed += 1
        message = Message(topic, payload, False)
        for client in self.clients.values():
            if client.wants(topic):
                client._deliver(message)

    def retained_for(self, topic_filter: str) -> list[Message]:
        """Retained messages matching a filter, flagged retain=True."""
        return [Message(topic, payload, True) for topic, payload in self.retained.items()
                if topic_matches(topic_filter, topic)]


class MemoryTransport:
    """Transport on a :class:`MemoryBroker`: same semantics, no sockets, synchronous delivery."""

    def __init__(self, broker: MemoryBroker, client_id: str, will: Will | None = None) -> None:
        self.broker = broker
        self.client_id = client_id
        self._will = will
        self._exact: set[str] = set()
        self._wildcards: list[str] = []
        self._inbox: list[Message] = []
        self._wake = asyncio.Event()
        self._open = False
        self._error: BrokerError | None = None
        self.published = 0
        self.received = 0
        self.dropped_publishes = 0
        self._lost = False

    async def __aenter__(self) -> Self:
        self._open, self._error, self._lost = True, None, False
        self.broker.attach(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lost = False
        self._disconnect()

    async def abort(self) -> None:
        """End the connection as a crash would: the broker publishes the will."""
        was_open = self._open
        self._disconnect()
        self._lost = was_open
        if was_open and self._will is not None:
            self.broker.route(*self._will)

    def _disconnect(self) -> None:
        self._open = False
        self.broker.detach(self)
        self._wake.set()

    def _lose(self, error: BrokerError) -> None:
        self._error = error
        self._disconnect()

    def wants(self, topic: str) -> bool:
        """True when one of this client's subscriptions matches ``topic``."""
        if topic in self._exact:
            return True
        return any(topic_matches(f, topic) for f in self._wildcards)

    def _deliver(self, message: Message) -> None:
        self._inbox.append(message)
        self._wake.set()

    async def subscribe(self, *topics: str) -> None:
        """Subscribe to filters; matching retained messages arrive flagged retain=True."""
        self._check_open()
        for topic in topics:
            check_topic_filter(topic)
        for topic in topics:
            if "+" in topic or "#" in topic:
                if topic not in self._wildcards:
                    self._wildcards.append(topic)
            else:
                self._exact.add(topic)
            for message in self.broker.retained_for(topic):
                self._deliver(message)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 0) -> None:
        """Deliver at once to every matching subscriber on the broker.

        After :meth:`abort` the message is counted in ``dropped_publishes``, as MqttTransport
        counts what is published while its connection is lost (the client still runs until it
        leaves its ``async with``).
        """
        if self._lost and self._error is None:
            self.dropped_publishes += 1
            return
        self._check_open()
        self.broker.route(topic, bytes(payload), retain)
        self.published += 1

    async def flush(self) -> None:
        """Nothing to wait for: delivery is synchronous."""
        self._check_open()

    async def batches(self) -> AsyncIterator[list[Message]]:
        """Lists of received messages until the transport closes."""
        while True:
            if self._inbox:
                batch, self._inbox = self._inbox, []
                self.received += len(batch)
                yield batch
                continue
            if self._error is not None:
                raise self._error
            if not self._open:
                return
            self._wake.clear()
            await self._wake.wait()

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._open:
            raise BrokerError(f"memory transport {self.client_id!r} is not connected; "
                              "use it inside 'async with'")

