"""A sans-I/O MQTT 3.1.1 client codec: packet encoders and an incremental ``PacketReader``.

No sockets and no event loop: bytes go in, packets come out (and the other way round). The
transport (broker/client.py) and the benchmarks use this one implementation.

The hot path of the emulator is bulk QoS 0 PUBLISH in both directions, so two parts are shaped
for it: ``PublishEncoder.append`` adds a packet to a caller's bytearray with the topic's
header cached, and ``PacketReader.feed_split`` decodes a whole read at once, appending each
PUBLISH as a caller-chosen message type straight into the caller's list (no intermediate
packet object). Everything the broker sends that is not what MQTT 3.1.1 allows raises
:class:`ProtocolError` saying what was wrong.

This module is the decoding half and the codec's one import path: the encoders live in
mqtt_encode.py and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from orbitmesh.errors import BrokerError
from orbitmesh.protocol.mqtt_encode import (
    MAX_PACKET_ID,
    MAX_REMAINING_LENGTH,
    PROTOCOL_LEVEL_311,
    PublishEncoder,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_puback,
    encode_publish,
    encode_remaining_length,
    encode_subscribe,
    encode_unsubscribe,
)

__all__ = [
    "CONNACK_REASONS",
    "MAX_PACKET_ID",
    "MAX_REMAINING_LENGTH",
    "PROTOCOL_LEVEL_311",
    "SUBACK_FAILURE",
    "Connack",
    "MessageFactory",
    "Packet",
    "PacketReader",
    "Pingresp",
    "ProtocolError",
    "Puback",
    "Publish",
    "PublishEncoder",
    "Suback",
    "Unsuback",
    "encode_connect",
    "encode_disconnect",
    "encode_pingreq",
    "encode_puback",
    "encode_publish",
    "encode_remaining_length",
    "encode_subscribe",
    "encode_unsubscribe",
]

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}
"""CONNACK return codes of MQTT 3.1.1 (3.2.2.3); 0 is "accepted"."""
SUBACK_FAILURE = 0x80

_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
          7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
          12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT"}


class ProtocolError(BrokerError):
    """The broker sent bytes that are not valid MQTT 3.1.1 for a client to receive."""


# -- packets a client receives -------------------------------------------------------------


class Connack(NamedTuple):
    """CONNACK: ``return_code`` 0 means accepted (see CONNACK_REASONS for the others)."""

    session_present: bool
    return_code: int


class Publish(NamedTuple):
    """PUBLISH; ``packet_id`` is None for QoS 0."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0
    packet_id: int | None = None
    dup: bool = False


class Puback(NamedTuple):
    """PUBACK: the broker has taken a QoS 1 PUBLISH."""

    packet_id: int


class Suback(NamedTuple):
    """SUBACK: one granted QoS (0, 1, 2) or SUBACK_FAILURE (0x80) per requested filter."""

    packet_id: int
    granted: tuple[int, ...]


class Unsuback(NamedTuple):
    """UNSUBACK."""

    packet_id: int


class Pingresp(NamedTuple):
    """PINGRESP."""


Packet = Connack | Publish | Puback | Suback | Unsuback | Pingresp


# -- decoder -------------------------------------------------------------------------------


MessageFactory = Callable[[str, bytes, bool], Any]
"""Builds the caller's message object from (topic, payload, retain)."""
_NO_PACKETS: list[Packet] = []


class PacketReader:
    """Incremental decoder of the packets a broker sends to a client.

    Feed it bytes as they arrive, in chunks of any size: complete packets come out, a packet
    split across reads waits for its remaining bytes. After a ProtocolError the reader (and the
    connection) must be thrown away: the stream has lost its framing.
    """

    def __init__(self, message: MessageFactory = Publish) -> None:
        self._message = message
        self._rx = bytearray()
        self._need = 0
        """Bytes the packet at the start of _rx needs in all (0: not known yet)."""

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete packet held until the rest arrives."""
        return len(self._rx)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Every packet completed by ``data``, in stream order (PUBLISH as :class:`Publish`)."""
        out: list[Any] = []
        self._parse(data, out, Publish, out)
        return out

    def feed_split(self, data: bytes | bytearray | memoryview, messages: list[Any]
                   ) -> list[Packet]:
        """The fast path: append every PUBLISH, built by the reader's ``message`` factory, to
        ``messages``; return the packets the client must act on (acks, pings, and QoS 1/2
        PUBLISH again, as :class:`Publish`, so that it can acknowledge them)."""
        control: list[Packet] = []
        self._parse(data, messages, self._message, control)
        return control or _NO_PACKETS

    def _parse(self, data: bytes | bytearray | memoryview, sink: list[Any],
               message: MessageFactory, control: list[Any]) -> None:
        rx = self._rx
        if rx:
            rx += data
            if len(rx) < self._need:
                return  # a large packet still arriving: do not re-scan it on every read
            buf = bytes(rx)
            rx.clear()
        elif type(data) is bytes:
            buf = data
        else:
            buf = bytes(data)  # slices of bytes are bytes: payloads are copied exactly once
        size = len(buf)
        pos = 0
        self._need = 0
        try:
            while size - pos >= 2:
                header = buf[pos]
                length = buf[pos + 1]
                index = pos + 2
                if length & 0x80:
                    length &= 0x7F
                    shift = 7
                    while True:
                        if index >= size:
                            length = -1  # the length itself is still incomplete
                            break
                        digit = buf[index]
                        index += 1
                        length |= (digit & 0x7F) << shift
                        if not digit & 0x80:
                            break
                        shift += 7
                        if shift > 21:
                            raise ProtocolError(
                                f"MQTT packet header {header:#04x}: the remaining length has "
                                "more than 4 bytes (at most 268435455 can be encoded)")
                    if length < 0:
                        break
                end = index + length
                if end > size:
                    self._need = end - pos
                    break
                if header & 0xF6 == 0x30:  # QoS 0 PUBLISH: nearly all traffic
                    if length < 2:
                        raise ProtocolError(_bad_topic_length(length, buf, index))
                    topic_end = index + 2 + ((buf[index] << 8) | buf[index + 1])
                    if topic_end > end:
                        raise ProtocolError(_bad_topic_length(length, buf, index))
                    sink.append(message(buf[index + 2 : topic_end].decode(),
                                        buf[topic_end:end], bool(header & 1)))
                else:
                    packet = _decode_other(header, buf, index, end)
                    if type(packet) is Publish and sink is not control:
                        sink.append(message(packet.topic, packet.payload, packet.retain))
                    control.append(packet)
                pos = end
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"MQTT PUBLISH topic is not valid UTF-8: {exc}") from exc
        if pos < size:
            rx += memoryview(buf)[pos:]


def _bad_topic_length(length: int, buf: bytes, index: int) -> str:
    declared = (buf[index] << 8) | buf[index + 1] if length >= 2 else None
    return (f"malformed MQTT PUBLISH: topic length {declared} does not fit in the packet "
            f"(remaining length {length})")


def _decode_other(header: int, buf: bytes, index: int, end: int) -> Packet:
    """Decode one packet that is not a QoS 0 PUBLISH (``buf[index:end]`` is its body)."""
    kind = header >> 4
    flags = header & 0x0F
    length = end - index
    name = _NAMES.get(kind, f"type {kind}")
    if kind == 3:
        return _decode_publish(header, buf, index, end)
    if kind in (5, 6, 7):
        raise ProtocolError(f"MQTT {name} received, but this client never uses QoS 2")
    if kind not in (2, 4, 9, 11, 13):
        raise ProtocolError(f"MQTT packet {name} (first byte {header:#04x}) is never sent by a "
                            "broker to a client; is that port an MQTT broker?")
    if flags:
        raise ProtocolError(f"MQTT {name}: reserved flags {flags:#x} must be 0")
    if kind == 13:
        if length:
            raise ProtocolError(f"MQTT PINGRESP: remaining length {length}, expected 0")
        return Pingresp()
    if kind == 9:
        if length < 3:
            raise ProtocolError(f"MQTT SUBACK: remaining length {length}, expected at least 3")
        granted = tuple(buf[index + 2 : end])
        bad = [code for code in granted if code not in (0, 1, 2, SUBACK_FAILURE)]
        if bad:
            raise ProtocolError(f"MQTT SUBACK: return codes {bad}; expected 0, 1, 2 or 0x80")
        return Suback((buf[index] << 8) | buf[index + 1], granted)
    if length != 2:
        raise ProtocolError(f"MQTT {name}: remaining length {length}, expected 2")
    first, second = buf[index], buf[index + 1]
    if kind == 2:
        if first & 0xFE:
            raise ProtocolError(f"MQTT CONNACK: acknowledge flags {first:#04x}; only bit 0 "
                                "(session present) may be set")
        return Connack(bool(first & 1), second)
    packet_id = (first << 8) | second
    return Puback(packet_id) if kind == 4 else Unsuback(packet_id)


def _decode_publish(header: int, buf: bytes, index: int, end: int) -> Publish:
    """A PUBLISH with QoS 1 or 2 (QoS 0 is decoded inline by the reader)."""
    qos = (header >> 1) & 3
    length = end - index
    if qos == 3:
        raise ProtocolError("MQTT PUBLISH with QoS 3: both QoS bits set is malformed")
    if length < 2:
        raise ProtocolError(_bad_topic_length(length, buf, index))
    topic_end = index + 2 + ((buf[index] << 8) | buf[index + 1])
    if topic_end + 2 > end:
        raise ProtocolError(f"malformed MQTT PUBLISH (QoS {qos}): topic and packet id do not "
                            f"fit in the packet (remaining length {length})")
    packet_id = (buf[topic_end] << 8) | buf[topic_end + 1]
    if packet_id == 0:
        raise ProtocolError(f"MQTT PUBLISH (QoS {qos}) with packet id 0; expected 1..65535")
    try:
        topic = buf[index + 2 : topic_end].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"MQTT PUBLISH topic is not valid UTF-8: {exc}") from exc
    return Publish(topic, buf[topic_end + 2 : end], bool(header & 1), qos, packet_id,
                   bool(header & 0x08))
