"""orbitmesh.protocol.mqtt: the sans-I/O MQTT 3.1.1 codec.

Unit tests check the encoders against the byte tables of the MQTT 3.1.1 specification and the
reader against streams cut at every offset; the live tests hold the codec against an
independent implementation, mosquitto (and its C clients), over a raw socket.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from broker.url import BrokerURL
from orbitmesh.errors import BrokerError
from orbitmesh.protocol import mqtt
from orbitmesh.protocol.mqtt import (
    Connack,
    PacketReader,
    Pingresp,
    ProtocolError,
    Puback,
    Publish,
    PublishEncoder,
    Suback,
    Unsuback,
)

SOCKET_GUARD_S = 10.0
"""Hang guard for raw-socket reads from the broker."""

# -- remaining length ------------------------------------------------------------------------

# MQTT 3.1.1, table 2.4 "Size of Remaining Length field": the edges of each byte count.
SPEC_LENGTHS = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


@pytest.mark.parametrize(("n", "encoded"), SPEC_LENGTHS)
def test_remaining_length_matches_the_specification_table(n: int, encoded: bytes) -> None:
    assert mqtt.encode_remaining_length(n) == encoded


@pytest.mark.parametrize("n", [-1, 268_435_456])
def test_remaining_length_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(BrokerError, match="remaining length"):
        mqtt.encode_remaining_length(n)


@pytest.mark.parametrize(("n", "encoded"), SPEC_LENGTHS[:-1])
def test_reader_decodes_publish_of_every_length_class(n: int, encoded: bytes) -> None:
    topic = b"t"
    if n == 0:  # no PUBLISH is that short: PINGRESP is the packet with an empty body
        assert PacketReader().feed(b"\xd0" + encoded) == [Pingresp()]
        return
    payload = bytes(range(256)) * (n // 256 + 1)
    payload = payload[: n - 2 - len(topic)]
    packet = b"\x30" + encoded + len(topic).to_bytes(2, "big") + topic + payload
    assert mqtt.encode_publish("t", payload) == packet
    assert PacketReader().feed(packet) == [Publish("t", payload)]


def test_reader_waits_for_a_packet_of_the_maximum_length() -> None:
    reader = PacketReader()
    head = b"\x30\xff\xff\xff\x7f\x00\x01t"
    assert reader.feed(head) == []
    assert reader.feed(bytes(1000)) == []
    assert reader.pending_bytes == len(head) + 1000


def test_a_five_byte_remaining_length_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="more than 4 bytes"):
        PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")


# -- round trips -----------------------------------------------------------------------------


def stream() -> tuple[bytes, list[mqtt.Packet]]:
    """A broker-to-client byte stream of every packet kind, and what it must decode to."""
    packets: list[tuple[bytes, mqtt.Packet]] = [
        (b"\x20\x02\x01\x00", Connack(True, 0)),
        (b"\x90\x05\x00\x07\x00\x01\x80", Suback(7, (0, 1, 0x80))),
        (mqtt.encode_publish("a/b", b"x"), Publish("a/b", b"x")),
        (mqtt.encode_publish("ünï/cødé", b"", retain=True), Publish("ünï/cødé", b"", True)),
        (mqtt.encode_publish("q1", b"p" * 300, qos=1, packet_id=513, dup=True),
         Publish("q1", b"p" * 300, False, 1, 513, True)),
        (mqtt.encode_publish("big", bytes(20_000)), Publish("big", bytes(20_000))),
        (b"\x40\x02\x00\x09", Puback(9)),
        (b"\xb0\x02\xff\xff", Unsuback(65535)),
        (b"\xd0\x00", Pingresp()),
        (mqtt.encode_publish("last", b"end"), Publish("last", b"end")),
    ]
    return b"".join(p for p, _ in packets), [d for _, d in packets]


def test_a_stream_split_at_every_offset_decodes_the_same() -> None:
    data, expected = stream()
    # Every cut near the small packets, a sample inside the 20 kB payload (same code path).
    cuts = [c for c in range(len(data) + 1) if c < 400 or c > len(data) - 100 or c % 97 == 0]
    for cut in cuts:
        reader = PacketReader()
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert got == expected, f"cut at byte {cut}"
        assert reader.pending_bytes == 0


def test_a_stream_fed_one_byte_at_a_time_decodes_the_same() -> None:
    data, expected = stream()
    reader = PacketReader()
    got: list[mqtt.Packet] = []
    for index in range(len(data)):
        got += reader.feed(data[index : index + 1])
    assert got == expected


def test_feed_split_puts_every_publish_in_the_message_list_and_acks_aside() -> None:
    data, expected = stream()
    messages: list[tuple[str, bytes, bool]] = []
    reader = PacketReader(message=lambda topic, payload, retain: (topic, payload, retain))
    control = reader.feed_split(memoryview(data), messages)
    publishes = [p for p in expected if isinstance(p, Publish)]
    assert messages == [(p.topic, p.payload, p.retain) for p in publishes]
    assert all(type(m[1]) is bytes for m in messages)
    # The QoS 1 PUBLISH comes back as a control packet too, so the client can PUBACK it.
    assert control == [p for p in expected if not isinstance(p, Publish) or p.qos]


def test_many_publishes_in_one_read_arrive_complete_and_in_order() -> None:
    out = bytearray()
    encoder = PublishEncoder()
    for seq in range(10_000):
        encoder.append(out, f"orbitmesh/run/node/n{seq % 50}/in", seq.to_bytes(4, "big"))
    messages: list[Publish] = []
    assert PacketReader().feed_split(bytes(out), messages) == []
    assert [int.from_bytes(m.payload, "big") for m in messages] == list(range(10_000))
    assert messages[123].topic == "orbitmesh/run/node/n23/in"


@pytest.mark.parametrize("size", [0, 1, 120, 124, 125, 126, 16_000, 16_378, 16_379, 3_000_000])
@pytest.mark.parametrize("retain", [False, True])
def test_publish_encoder_writes_what_encode_publish_writes(size: int, retain: bool) -> None:
    out = bytearray()
    payload = bytes([size % 251]) * size
    PublishEncoder().append(out, "a/bc", payload, retain)
    assert bytes(out) == mqtt.encode_publish("a/bc", payload, retain=retain)


def test_publish_encoder_cache_is_bounded() -> None:
    encoder = PublishEncoder(max_topics=10)
    out = bytearray()
    for index in range(25):
        encoder.append(out, f"t/{index}", b"")
    assert len(encoder._cache) <= 10  # the bound this test exists for
    assert [p.topic for p in PacketReader().feed(bytes(out))] == [f"t/{i}" for i in range(25)]


def test_connect_carries_every_field_in_order() -> None:
    packet = mqtt.encode_connect("cid", clean_session=True, keepalive_s=300,
                                 will=("w/t", b"gone", True), username="u", password="pw")
    # 3.1.1 figure 3.x: protocol name, level 4, flags, keepalive, then the payload fields.
    body = (b"\x00\x04MQTT\x04" + bytes([0x80 | 0x40 | 0x20 | 0x04 | 0x02]) + b"\x01\x2c"
            + b"\x00\x03cid" + b"\x00\x03w/t" + b"\x00\x04gone" + b"\x00\x01u" + b"\x00\x02pw")
    assert packet == b"\x10" + bytes([len(body)]) + body


def test_subscribe_unsubscribe_and_small_packets_are_as_specified() -> None:
    assert mqtt.encode_subscribe(10, [("a/+", 1), ("#", 0)]) == (
        b"\x82\x0c\x00\x0a\x00\x03a/+\x01\x00\x01#\x00")
    assert mqtt.encode_unsubscribe(10, ["a/+"]) == b"\xa2\x07\x00\x0a\x00\x03a/+"
    assert mqtt.encode_puback(258) == b"\x40\x02\x01\x02"
    assert mqtt.encode_pingreq() == b"\xc0\x00"
    assert mqtt.encode_disconnect() == b"\xe0\x00"


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: mqtt.encode_connect("c", password="p"), "without a user name"),
        (lambda: mqtt.encode_connect("", clean_session=False), "needs a client id"),
        (lambda: mqtt.encode_connect("c", keepalive_s=70_000), "keepalive"),
        (lambda: mqtt.encode_publish("a/#", b""), "cannot be published"),
        (lambda: mqtt.encode_publish("a", b"", qos=1), "needs a packet id"),
        (lambda: mqtt.encode_publish("a", b"", packet_id=3), "takes no packet id"),
        (lambda: mqtt.encode_publish("a", b"", qos=3, packet_id=1), "expected 0, 1 or 2"),
        (lambda: mqtt.encode_subscribe(0, [("a", 0)]), "packet id 0"),
        (lambda: mqtt.encode_subscribe(1, []), "at least one"),
        (lambda: mqtt.encode_publish("x" * 70_000, b""), "at most 65535"),
    ],
)
def test_encoders_refuse_what_mqtt_cannot_carry(call: object, says: str) -> None:
    with pytest.raises(BrokerError, match=says):
        call()  # type: ignore[operator]


# -- malformed input from the broker ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\x36\x03\x00\x01t", "QoS 3"),
        (b"\x30\x03\x00\x09t", "topic length 9 does not fit"),
        (b"\x30\x01\x00", "topic length None"),
        (b"\x30\x04\x00\x02\xff\xfe", "not valid UTF-8"),
        (b"\x32\x05\x00\x01t\x00\x00", "packet id 0"),
        (b"\x32\x03\x00\x01t", "do not fit"),
        (b"\x20\x02\x02\x00", "acknowledge flags"),
        (b"\x20\x03\x00\x00\x00", "expected 2"),
        (b"\x21\x02\x00\x00", "reserved flags"),
        (b"\x90\x02\x00\x01", "at least 3"),
        (b"\x90\x03\x00\x01\x05", "return codes [5]"),
        (b"\xd0\x01\x00", "expected 0"),
        (b"\x10\x00", "CONNECT"),
        (b"\x82\x00", "SUBSCRIBE"),
        (b"\xc0\x00", "PINGREQ"),
        (b"\x00\x00", "type 0"),
        (b"\x50\x02\x00\x01", "QoS 2"),
    ],
)
def test_malformed_broker_input_raises_protocol_error_saying_what(data: bytes, says: str
                                                                    ) -> None:
    with pytest.raises(ProtocolError) as caught:
        PacketReader().feed(data)
    assert says in str(caught.value)
    assert isinstance(caught.value, BrokerError)


# -- against mosquitto -----------------------------------------------------------------------


class RawClient:
    """A blocking MQTT client made of a socket and this codec, nothing else."""

    def __init__(self, url: BrokerURL, client_id: str, **connect: object) -> None:
        self.sock = socket.create_connection((url.host, url.port), timeout=SOCKET_GUARD_S)
        self.reader = PacketReader()
        self.pending: list[mqtt.Packet] = []
        self.sock.sendall(mqtt.encode_connect(client_id, **connect))  # type: ignore[arg-type]
        assert self.next() == Connack(False, 0)

    def next(self) -> mqtt.Packet:
        """The next packet from the broker (blocking, with the socket's timeout)."""
        while not self.pending:
            data = self.sock.recv(1 << 16)
            assert data, "the broker closed the connection"
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(broker_url: BrokerURL) -> Iterator[RawClient]:
    """A raw client on the session's mosquitto."""
    client = RawClient(broker_url, f"raw-{uuid.uuid4().hex}")
    yield client
    client.close()


def tool(name: str) -> str:
    """Path of a mosquitto client program (the test fails with a hint when it is missing)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"this test needs {name}: apt-get install mosquitto-clients", pytrace=False)
    return path


SIZES = [0, 1, 120, 16_300, 16_400, 2_097_200]
"""Payloads on both sides of the 1/2/3/4-byte remaining-length boundaries."""


def test_mosquitto_pub_messages_decode_exactly(raw: RawClient, broker_url: BrokerURL,
                                               topic_root: str) -> None:
    topic = f"{topic_root}/in"
    raw.sock.sendall(mqtt.encode_subscribe(1, [(topic, 1)]))
    assert raw.next() == Suback(1, (1,))
    payloads = [bytes([65 + i]) * size for i, size in enumerate(SIZES)]
    for qos, payload in [(0, p) for p in payloads] + [(1, payloads[-1])]:
        source = ["-s"] if payload else ["-n"]  # -n: a null (empty) message
        subprocess.run([tool("mosquitto_pub"), "-h", broker_url.host, "-p",
                        str(broker_url.port), "-t", topic, "-q", str(qos), *source],
                       input=payload, check=True, timeout=SOCKET_GUARD_S)
        got = raw.next()
        assert isinstance(got, Publish)
        assert (got.topic, got.qos, len(got.payload)) == (topic, qos, len(payload))
        assert got.payload == payload
        if qos:
            assert got.packet_id is not None
            raw.sock.sendall(mqtt.encode_puback(got.packet_id))
    raw.close()


def test_mosquitto_accepts_our_publishes_and_wills(raw: RawClient, broker_url: BrokerURL,
                                                   topic_root: str) -> None:
    # Retained messages reach mosquitto_sub whenever it subscribes: no race with its start.
    # (An empty retained payload would clear the topic, so size 0 is left out here.)
    sizes = [size for size in SIZES if size]
    for index, size in enumerate(sizes):
        raw.sock.sendall(mqtt.encode_publish(f"{topic_root}/r/{index}", b"z" * size,
                                             retain=True))
    raw.sock.sendall(mqtt.encode_publish(f"{topic_root}/r/q1", b"one", retain=True, qos=1,
                                         packet_id=77))
    assert raw.next() == Puback(77)
    # A client with a will that vanishes without DISCONNECT: mosquitto publishes the will.
    will = (f"{topic_root}/r/will", b"lost", True)
    RawClient(broker_url, f"doomed-{uuid.uuid4().hex}", will=will).close()
    wanted = len(sizes) + 2
    sub = subprocess.run(
        [tool("mosquitto_sub"), "-h", broker_url.host, "-p", str(broker_url.port),
         "-t", f"{topic_root}/r/#", "-C", str(wanted), "-W", "10", "-F", "%t %l %r"],
        capture_output=True, check=True, timeout=SOCKET_GUARD_S * 2)
    lines = set(sub.stdout.decode().splitlines())
    expected = {f"{topic_root}/r/{i} {size} 1" for i, size in enumerate(sizes)}
    expected |= {f"{topic_root}/r/q1 3 1", f"{topic_root}/r/will 4 1"}
    assert lines == expected
    for index in range(len(sizes)):  # leave no retained messages on the shared broker
        raw.sock.sendall(mqtt.encode_publish(f"{topic_root}/r/{index}", b"", retain=True))
    for name in ("q1", "will"):
        raw.sock.sendall(mqtt.encode_publish(f"{topic_root}/r/{name}", b"", retain=True))
    raw.sock.sendall(mqtt.encode_unsubscribe(5, [f"{topic_root}/r/#"]))
    assert raw.next() == Unsuback(5)
    raw.sock.sendall(mqtt.encode_pingreq())
    assert raw.next() == Pingresp()
    raw.sock.sendall(mqtt.encode_disconnect())
    raw.close()
