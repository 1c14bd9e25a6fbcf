"""The transport seam: topic matching, MemoryTransport, and MqttTransport through mosquitto.

The semantic tests run against both backends, so the in-memory fake is held to what a real
mosquitto does. To prove that something did *not* arrive, a test publishes a fence message
after it and reads up to the fence: per-publisher order is guaranteed, so anything that would
have arrived has arrived by then.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import check_broker
from broker.client import MqttTransport
from broker.embedded import EmbeddedBroker, free_loopback_port
from broker.url import BrokerURL
from orbitmesh.errors import BrokerError
from orbitmesh.protocol.transport import (
    MemoryBroker,
    MemoryTransport,
    Message,
    Will,
    check_topic_filter,
    check_topic_name,
    topic_matches,
)
from tests.conftest import require_mosquitto

GUARD_S = 20.0
"""Hang guard for anything that waits on the network; tests assert no speed."""

AnyTransport = MemoryTransport | MqttTransport
Connect = Callable[..., AnyTransport]


async def receive(transport: AnyTransport, until: Callable[[list[Message]], bool]
                  ) -> list[Message]:
    """Collect messages until ``until(received)`` holds (or fail after GUARD_S)."""
    got: list[Message] = []
    async with asyncio.timeout(GUARD_S):
        async for batch in transport.batches():
            got.extend(batch)
            if until(got):
                break
    return got


async def receive_until_fence(transport: AnyTransport, fence_topic: str) -> list[Message]:
    """Everything received before the first message on ``fence_topic``."""
    got = await receive(transport, lambda msgs: any(m.topic == fence_topic for m in msgs))
    return got[: [m.topic for m in got].index(fence_topic)]


@pytest.fixture(params=["memory", pytest.param("mosquitto", marks=pytest.mark.broker)])
def connect(request: pytest.FixtureRequest) -> Connect:
    """Make a transport (not yet entered) on the backend under test."""
    suffix = uuid.uuid4().hex[:8]
    if request.param == "memory":
        bus = MemoryBroker()
        return lambda client_id, will=None: MemoryTransport(bus, client_id, will)
    url: BrokerURL = request.getfixturevalue("broker_url")
    return lambda client_id, will=None: MqttTransport(url, client_id=f"{client_id}-{suffix}",
                                                      will=will)


# -- topics --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a/", True),
        ("+/+", "a/b", True),
        ("+", "a", True),
        ("+", "/a", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("#", "a/b", True),
        ("#", "$SYS/load", False),
        ("+/load", "$SYS/load", False),
        ("$SYS/#", "$SYS/load", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
    ],
)
def test_topic_matches_follows_mqtt_3_1_1(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a+/b", "#a"])
def test_invalid_filters_are_refused(bad: str) -> None:
    with pytest.raises(BrokerError, match="not valid MQTT"):
        check_topic_filter(bad)


@pytest.mark.parametrize("bad", ["", "a/+", "a/#"])
def test_wildcards_cannot_be_published_to(bad: str) -> None:
    with pytest.raises(BrokerError, match="cannot be published"):
        check_topic_name(bad)


# -- semantics, both backends --------------------------------------------------------------


async def test_wildcard_subscribers_get_one_copy_and_others_none(
    connect: Connect, topic_root: str
) -> None:
    fence = f"{topic_root}/fence"
    async with connect("pub") as pub, connect("sub-a") as sub_a, connect("sub-b") as sub_b:
        await sub_a.subscribe(f"{topic_root}/+/in", f"{topic_root}/gs/#", f"{topic_root}/gs/in",
                              fence)
        await sub_b.subscribe(f"{topic_root}/sat/#", fence)
        pub.publish(f"{topic_root}/gs/in", b"one")
        pub.publish(f"{topic_root}/gs/out", b"two")
        pub.publish(fence, b"")
        got_a = await receive_until_fence(sub_a, fence)
        got_b = await receive_until_fence(sub_b, fence)
    assert got_a == [Message(f"{topic_root}/gs/in", b"one"),
                     Message(f"{topic_root}/gs/out", b"two")]
    assert got_b == []


async def test_publisher_receives_its_own_messages_when_subscribed(
    connect: Connect, topic_root: str
) -> None:
    async with connect("echo") as node:
        await node.subscribe(f"{topic_root}/#")
        node.publish(f"{topic_root}/x", b"hello")
        got = await receive(node, bool)
    assert got == [Message(f"{topic_root}/x", b"hello", False)]


async def test_retained_messages_reach_late_subscribers_flagged_as_retained(
    connect: Connect, topic_root: str
) -> None:
    topic = f"{topic_root}/state/sat-1"
    async with connect("pub") as pub:
        pub.publish(topic, b"v1", retain=True)
        pub.publish(topic, b"v2", retain=True)
        await pub.flush()
        async with connect("late") as late:
            await late.subscribe(f"{topic_root}/state/+")
            replayed = await receive(late, bool)
            pub.publish(topic, b"v3", retain=True)
            live = await receive(late, bool)
    assert replayed == [Message(topic, b"v2", True)]
    assert live == [Message(topic, b"v3", False)]


async def test_empty_retained_payload_clears_the_retained_message(
    connect: Connect, topic_root: str
) -> None:
    topic, fence = f"{topic_root}/state", f"{topic_root}/fence"
    async with connect("pub") as pub:
        pub.publish(topic, b"old", retain=True)
        pub.publish(topic, b"", retain=True)
        pub.publish(fence, b"fence", retain=True)
        await pub.flush()
        async with connect("late") as late:
            await late.subscribe(topic, fence)
            got = await receive_until_fence(late, fence)
        pub.publish(fence, b"", retain=True)
    assert got == []


async def test_will_is_published_on_abort_but_not_on_clean_exit(
    connect: Connect, topic_root: str
) -> None:
    fence = f"{topic_root}/fence"
    will: Will = (f"{topic_root}/status/sat-1", b"lost", False)
    async with connect("watcher") as watcher:
        await watcher.subscribe(f"{topic_root}/status/#", fence)
        async with connect("polite", will):
            pass
        crashing = connect("crashing", will)
        async with crashing:
            await crashing.abort()
        got = await receive(watcher, bool)
        async with connect("fencer") as fencer:
            fencer.publish(fence, b"")
            rest = await receive_until_fence(watcher, fence)
    assert got == [Message(will[0], b"lost", False)]
    assert rest == []


async def test_many_messages_from_two_publishers_arrive_complete_and_in_order(
    connect: Connect, topic_root: str
) -> None:
    count = 20_000
    async with connect("p0") as p0, connect("p1") as p1, connect("sink") as sink:
        await sink.subscribe(f"{topic_root}/+/seq")
        for seq in range(count):
            p0.publish(f"{topic_root}/p0/seq", seq.to_bytes(4, "big") + bytes(60))
            p1.publish(f"{topic_root}/p1/seq", seq.to_bytes(4, "big") + bytes(60))
            if seq % 1000 == 999:
                await asyncio.sleep(0)  # as a node would: yield to the loop now and then
        got = await receive(sink, lambda msgs: len(msgs) >= 2 * count)
    for name in ("p0", "p1"):
        seqs = [int.from_bytes(m.payload[:4], "big") for m in got if m.topic.split("/")[-2] == name]
        assert seqs == list(range(count)), f"{name}: lost or reordered messages"


async def test_closed_transport_refuses_to_publish(connect: Connect, topic_root: str) -> None:
    transport = connect("closed")
    async with transport:
        pass
    with pytest.raises(BrokerError):
        transport.publish(f"{topic_root}/x", b"late")


# -- memory only ---------------------------------------------------------------------------


async def test_memory_client_id_takeover_ends_the_older_connection() -> None:
    bus = MemoryBroker()
    async with MemoryTransport(bus, "dup") as first, MemoryTransport(bus, "dup"):
        with pytest.raises(BrokerError, match="taken over"):
            await receive(first, bool)


# -- MQTT only -----------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1])
async def test_payload_sizes_across_length_encoding_boundaries_round_trip(
    broker_url: BrokerURL, topic_root: str, qos: int
) -> None:
    topic = f"{topic_root}/blob"
    overhead = 2 + len(topic.encode())  # remaining length = 2 + topic + payload (QoS 0)
    sizes = [0, 1, 127 - overhead, 128 - overhead, 16383 - overhead, 16384 - overhead,
             300_000, 3_000_000]
    payloads = [bytes([n % 251]) * n for n in sizes]
    async with MqttTransport(broker_url, client_id=f"blob-{uuid.uuid4().hex}") as node:
        await node.subscribe(topic, qos=qos)
        for payload in payloads:
            node.publish(topic, payload, qos=qos)
        got = await receive(node, lambda msgs: len(msgs) >= len(payloads))
    assert [len(m.payload) for m in got] == sizes
    assert [m.payload for m in got] == payloads


async def test_flush_returns_after_the_broker_has_routed_everything(
    broker_url: BrokerURL, topic_root: str
) -> None:
    count = 500
    async with MqttTransport(broker_url, client_id=f"flusher-{uuid.uuid4().hex}") as pub:
        for index in range(count):
            pub.publish(f"{topic_root}/cfg/{index}", b"x", retain=True)
        await pub.flush()
        async with MqttTransport(broker_url, client_id=f"reader-{uuid.uuid4().hex}") as reader:
            await reader.subscribe(f"{topic_root}/cfg/+")
            got = await receive(reader, lambda msgs: len(msgs) >= count)
        for index in range(count):  # leave no retained messages on the shared broker
            pub.publish(f"{topic_root}/cfg/{index}", b"", retain=True)
    assert {m.topic for m in got} == {f"{topic_root}/cfg/{i}" for i in range(count)}


async def test_reading_pauses_under_backpressure_without_losing_messages(
    broker_url: BrokerURL, topic_root: str
) -> None:
    count = 5_000
    async with MqttTransport(broker_url, client_id=f"slow-{uuid.uuid4().hex}",
                             inbox_high_water=50) as sink, MqttTransport(
        broker_url, client_id=f"fast-{uuid.uuid4().hex}"
    ) as source:
        await sink.subscribe(f"{topic_root}/bp")
        for seq in range(count):
            source.publish(f"{topic_root}/bp", seq.to_bytes(4, "big"))
        await source.flush()
        got: list[int] = []
        async with asyncio.timeout(GUARD_S):
            async for batch in sink.batches():
                got.extend(int.from_bytes(m.payload, "big") for m in batch)
                await asyncio.sleep(0.001)  # a slow consumer
                if len(got) >= count:
                    break
    assert got == list(range(count))


async def test_connecting_to_a_closed_port_raises_a_clear_broker_error() -> None:
    url = BrokerURL("127.0.0.1", free_loopback_port())
    async with asyncio.timeout(GUARD_S):
        with pytest.raises(BrokerError, match="connection refused") as caught:
            async with MqttTransport(url, client_id="nobody-home"):
                pass
    assert url.address in str(caught.value)
    assert "--broker embedded" in str(caught.value)


async def test_without_reconnect_a_broker_outage_ends_batches_with_broker_error(
    embedded_broker: EmbeddedBroker, topic_root: str
) -> None:
    async with MqttTransport(embedded_broker.url, client_id="fragile") as node:
        await node.subscribe(f"{topic_root}/#")
        embedded_broker.stop()
        with pytest.raises(BrokerError, match="lost the connection"):
            await receive(node, bool)
        with pytest.raises(BrokerError, match="lost the connection"):
            node.publish(f"{topic_root}/x", b"after the outage")
            await node.flush()


async def test_reconnect_after_broker_restart_resubscribes(
    embedded_broker: EmbeddedBroker, topic_root: str
) -> None:
    reconnected = asyncio.Event()
    url = embedded_broker.url
    async with MqttTransport(url, client_id="survivor", reconnect=True,
                             on_reconnect=reconnected.set) as node:
        await node.subscribe(f"{topic_root}/+/in")
        embedded_broker.restart()
        async with asyncio.timeout(GUARD_S):
            await reconnected.wait()
        assert node.connected.is_set()
        assert node.reconnects == 1
        async with MqttTransport(url, client_id="sender") as sender:
            sender.publish(f"{topic_root}/gs/in", b"after restart")
            got = await receive(node, bool)
    assert got == [Message(f"{topic_root}/gs/in", b"after restart")]


async def test_publishing_during_an_outage_counts_drops_instead_of_raising(
    embedded_broker: EmbeddedBroker, topic_root: str
) -> None:
    reconnected = asyncio.Event()
    async with MqttTransport(embedded_broker.url, client_id="patient", reconnect=True,
                             reconnect_delay_s=(0.05, 0.2),
                             on_reconnect=reconnected.set) as node:
        embedded_broker.stop()
        async with asyncio.timeout(GUARD_S):
            await node.disconnected.wait()
        node.publish(f"{topic_root}/x", b"into the void")
        await asyncio.sleep(0)  # the end-of-turn push happens here
        assert node.dropped_publishes == 1
        embedded_broker.start()
        async with asyncio.timeout(GUARD_S):
            await reconnected.wait()


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture
def tls_broker() -> Iterator[BrokerURL]:
    """A mosquitto with a TLS listener on 127.0.0.1 and a self-signed certificate (as ca=)."""
    require_mosquitto()
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("this test needs the openssl command: apt-get install openssl", pytrace=False)
    # mosquitto drops root privileges before reading the key, so the directory is not private.
    workdir = Path(tempfile.mkdtemp(prefix="orbitmesh-test-tls-"))
    workdir.chmod(0o755)
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o644)
    tls_port = free_loopback_port()
    extra = [f"listener {tls_port} 127.0.0.1", f"certfile {cert}", f"keyfile {key}"]
    with EmbeddedBroker(engine="mosquitto", extra_config=extra, workdir=workdir):
        yield BrokerURL("127.0.0.1", tls_port, scheme="mqtts", ca_file=str(cert))
    shutil.rmtree(workdir)


async def test_tls_round_trip_with_small_and_large_messages(tls_broker: BrokerURL) -> None:
    await check_broker(tls_broker)
    sizes = [10] * 2000 + [3_000_000] + [10] * 2000
    async with MqttTransport(tls_broker, client_id="tls-node") as node:
        await node.subscribe("tls/+")
        for seq, size in enumerate(sizes):
            node.publish(f"tls/{seq % 7}", seq.to_bytes(4, "big") + bytes(size))
        got = await receive(node, lambda msgs: len(msgs) >= len(sizes))
    assert [int.from_bytes(m.payload[:4], "big") for m in got] == list(range(len(sizes)))
    assert [len(m.payload) - 4 for m in got] == sizes


async def test_tls_with_an_untrusted_certificate_says_tls_failed(tls_broker: BrokerURL) -> None:
    untrusted = BrokerURL(tls_broker.host, tls_broker.port, scheme="mqtts")  # system CAs only
    with pytest.raises(BrokerError, match="TLS failed"):
        await check_broker(untrusted, timeout_s=5)



async def test_a_memory_client_whose_connection_dropped_counts_what_it_still_publishes() -> None:
    """A process whose connection was cut (abort) may publish once more before it stops, as a
    worker's heartbeat did in test_choreography: counted as dropped, like MqttTransport's drops
    while its connection is lost; publishing after leaving ``async with`` still raises."""
    broker = MemoryBroker()
    async with MemoryTransport(broker, "watcher") as watcher:
        await watcher.subscribe("run/status")
        client = MemoryTransport(broker, "dying", will=("run/status", b"lost", False))
        async with client:
            await client.abort()
            client.publish("run/status", b"still beating")
            assert client.dropped_publishes == 1
        with pytest.raises(BrokerError, match="not connected"):
            client.publish("run/status", b"after exit")
        batch = await asyncio.wait_for(anext(watcher.batches()), GUARD_S)
    assert [m.payload for m in batch] == [b"lost"]
