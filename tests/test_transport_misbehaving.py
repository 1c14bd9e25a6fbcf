"""MqttTransport against brokers that go quiet or misbehave: keepalive, refusals, garbage.

The fake brokers here are a few lines of asyncio streams each, so the failure under test is
exact (a SUBACK of 0x80, a CONNACK of 5, a PINGREQ sent to a client) and needs no ACL set-up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from broker.client import MqttTransport
from broker.embedded import EmbeddedBroker
from broker.url import BrokerURL
from orbitmesh.errors import BrokerError
from tests.test_transport import GUARD_S, receive


async def test_a_broker_that_stops_answering_is_detected_by_keepalive(
    embedded_broker: EmbeddedBroker, topic_root: str
) -> None:
    async with MqttTransport(embedded_broker.url, client_id="watchful", keepalive_s=1) as node:
        await node.subscribe(f"{topic_root}/#")
        embedded_broker.pause()  # the socket stays open; only the answers stop
        try:
            with pytest.raises(BrokerError, match="lost the connection"):
                await receive(node, bool)
        finally:
            embedded_broker.resume()


async def fake_broker(connack: bytes, after_subscribe: Callable[[bytes], bytes],
                      pings: list[float] | None = None) -> asyncio.Server:
    """A TCP server that answers CONNECT with ``connack``, SUBSCRIBE with a reply of choice and
    PINGREQ with PINGRESP (noting when in ``pings``). One packet per read: the client under
    test sends nothing else at once here."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # CONNECT
        writer.write(connack)
        while data := await reader.read(1 << 16):
            if data[0] == 0x82:
                writer.write(after_subscribe(data))
            elif data[0] == 0xC0:
                if pings is not None:
                    pings.append(asyncio.get_running_loop().time())
                writer.write(b"\xd0\x00")
            elif data[0] == 0xE0:
                break
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def suback_refusing(subscribe: bytes) -> bytes:
    """SUBACK with 0x80 (failure) for a one-filter SUBSCRIBE."""
    return b"\x90\x03" + subscribe[2:4] + b"\x80"


async def test_an_idle_connection_sends_pings_and_stays_up() -> None:
    pings: list[float] = []
    server = await fake_broker(b"\x20\x02\x00\x00", suback_refusing, pings)
    url = BrokerURL("127.0.0.1", server.sockets[0].getsockname()[1])
    async with server, MqttTransport(url, client_id="idle", keepalive_s=1) as node:
        await asyncio.sleep(2.3)  # the behaviour under test is over time: nothing to wait on
        assert node.connected.is_set()
    assert len(pings) >= 2, "an idle client must PINGREQ within every keepalive period"
    assert all(b - a < 1.0 for a, b in itertools.pairwise(pings))


async def test_a_refused_subscription_says_so_and_names_the_filter() -> None:
    server = await fake_broker(b"\x20\x02\x00\x00", suback_refusing)
    url = BrokerURL("127.0.0.1", server.sockets[0].getsockname()[1])
    async with server, asyncio.timeout(GUARD_S), MqttTransport(url, client_id="acl") as node:
        with pytest.raises(BrokerError, match="refused subscriptions") as caught:
            await node.subscribe("secret/+")
    assert "secret/+" in str(caught.value)
    assert "ACL" in str(caught.value)


async def test_a_refused_connack_names_the_reason() -> None:
    server = await fake_broker(b"\x20\x02\x00\x05", suback_refusing)
    url = BrokerURL("127.0.0.1", server.sockets[0].getsockname()[1])
    async with server, asyncio.timeout(GUARD_S):
        with pytest.raises(BrokerError, match="not authorised"):
            async with MqttTransport(url, client_id="unwelcome"):
                pass


async def test_garbage_after_connect_drops_the_connection_with_a_broker_error() -> None:
    server = await fake_broker(b"\x20\x02\x00\x00", lambda subscribe: b"\xc0\x00")  # PINGREQ
    url = BrokerURL("127.0.0.1", server.sockets[0].getsockname()[1])
    async with server, asyncio.timeout(GUARD_S), MqttTransport(url, client_id="confused") as node:
        with pytest.raises(BrokerError):
            await node.subscribe("a/b")
        with pytest.raises(BrokerError, match="lost the connection"):
            await receive(node, bool)
