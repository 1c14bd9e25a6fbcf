"""MQTT 3.1.1 packets a client sends: encoders, and ``PublishEncoder`` for bulk QoS 0 PUBLISH.

Sans-I/O like the rest of the codec; mqtt.py re-exports every name here, so callers keep using
``orbitmesh.protocol.mqtt``.
"""

from __future__ import annotations

from collections.abc import Sequence

from orbitmesh.errors import BrokerError

MAX_REMAINING_LENGTH = 268_435_455
"""The largest "remaining length" a four-byte variable byte integer can hold (MQTT 2.2.3)."""
MAX_PACKET_ID = 65_535
PROTOCOL_LEVEL_311 = 4


def encode_remaining_length(n: int) -> bytes:
    """MQTT "remaining length" (variable byte integer, 1-4 bytes) encoding of ``n``."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise BrokerError(f"MQTT packet of {n} bytes: the remaining length must be "
                          f"0..{MAX_REMAINING_LENGTH}")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _string(text: str, what: str) -> bytes:
    """A UTF-8 string with its two-byte length prefix."""
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise BrokerError(f"MQTT {what} is {len(raw)} bytes of UTF-8; at most 65535 fit")
    return len(raw).to_bytes(2, "big") + raw


def _blob(data: bytes, what: str) -> bytes:
    if len(data) > 0xFFFF:
        raise BrokerError(f"MQTT {what} is {len(data)} bytes; at most 65535 fit")
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_remaining_length(len(body)) + body


def _check_packet_id(packet_id: int) -> None:
    if not 1 <= packet_id <= MAX_PACKET_ID:
        raise BrokerError(f"MQTT packet id {packet_id}: expected 1..{MAX_PACKET_ID}")


def _check_topic_name(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise BrokerError(f"topic {topic!r} cannot be published to: it must be non-empty and "
                          "contain no '+' or '#'")


def _check_qos(qos: int, what: str) -> None:
    if qos not in (0, 1, 2):
        raise BrokerError(f"MQTT {what} QoS {qos}: expected 0, 1 or 2")


def encode_connect(
    client_id: str,
    *,
    clean_session: bool = True,
    keepalive_s: int = 60,
    will: tuple[str, bytes, bool] | None = None,
    will_qos: int = 0,
    username: str | None = None,
    password: str | bytes | None = None,
) -> bytes:
    """CONNECT (protocol level 4); ``will`` is (topic, payload, retain)."""
    if not 0 <= keepalive_s <= 0xFFFF:
        raise BrokerError(f"MQTT keepalive {keepalive_s} s: expected 0..65535")
    if password is not None and username is None:
        raise BrokerError("MQTT 3.1.1 cannot send a password without a user name")
    if not client_id and not clean_session:
        raise BrokerError("MQTT 3.1.1 needs a client id for a persistent session "
                          "(clean_session=False)")
    _check_qos(will_qos, "will")
    flags = 0x02 if clean_session else 0
    payload = _string(client_id, "client id")
    if will is not None:
        topic, message, retain = will
        flags |= 0x04 | (will_qos << 3) | (0x20 if retain else 0)
        payload += _string(topic, "will topic") + _blob(bytes(message), "will payload")
    if username is not None:
        flags |= 0x80
        payload += _string(username, "user name")
    if password is not None:
        flags |= 0x40
        secret = password.encode() if isinstance(password, str) else password
        payload += _blob(secret, "password")
    variable = b"\x00\x04MQTT" + bytes([PROTOCOL_LEVEL_311, flags]) + keepalive_s.to_bytes(2, "big")
    return _packet(0x10, variable + payload)


def encode_publish(topic: str, payload: bytes, *, retain: bool = False, qos: int = 0,
                   packet_id: int | None = None, dup: bool = False) -> bytes:
    """PUBLISH; QoS 1 and 2 need a ``packet_id``, QoS 0 must not have one."""
    _check_qos(qos, "publish")
    _check_topic_name(topic)
    variable = _string(topic, "topic")
    if qos:
        if packet_id is None:
            raise BrokerError(f"MQTT PUBLISH with QoS {qos} needs a packet id")
        _check_packet_id(packet_id)
        variable += packet_id.to_bytes(2, "big")
    elif packet_id is not None or dup:
        raise BrokerError("MQTT QoS 0 PUBLISH takes no packet id and no DUP flag")
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return _packet(first, variable + bytes(payload))


def encode_subscribe(packet_id: int, topics: Sequence[tuple[str, int]]) -> bytes:
    """SUBSCRIBE to (filter, requested QoS) pairs."""
    _check_packet_id(packet_id)
    if not topics:
        raise BrokerError("MQTT SUBSCRIBE needs at least one topic filter")
    body = bytearray(packet_id.to_bytes(2, "big"))
    for topic, qos in topics:
        _check_qos(qos, f"subscription {topic!r}")
        body += _string(topic, "topic filter")
        body.append(qos)
    return _packet(0x82, bytes(body))


def encode_unsubscribe(packet_id: int, topics: Sequence[str]) -> bytes:
    """UNSUBSCRIBE from topic filters."""
    _check_packet_id(packet_id)
    if not topics:
        raise BrokerError("MQTT UNSUBSCRIBE needs at least one topic filter")
    body = packet_id.to_bytes(2, "big") + b"".join(_string(t, "topic filter") for t in topics)
    return _packet(0xA2, body)


def encode_puback(packet_id: int) -> bytes:
    """PUBACK for a received QoS 1 PUBLISH."""
    _check_packet_id(packet_id)
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def encode_pingreq() -> bytes:
    """PINGREQ."""
    return b"\xc0\x00"


def encode_disconnect() -> bytes:
    """DISCONNECT (a clean goodbye: the broker discards the will)."""
    return b"\xe0\x00"


class PublishEncoder:
    """Appends QoS 0 PUBLISH packets to a bytearray, caching each topic's encoded header.

    The cache means each topic is validated and UTF-8 encoded once; it is cleared when it holds
    ``max_topics`` entries, so a stream of ever-new topics cannot grow it without bound.
    """

    def __init__(self, max_topics: int = 100_000) -> None:
        self._cache: dict[tuple[str, bool], tuple[int, bytes]] = {}
        self._max_topics = max_topics

    def append(self, out: bytearray, topic: str, payload: bytes, retain: bool = False) -> None:
        """Append one QoS 0 PUBLISH of ``payload`` to ``topic`` to ``out``."""
        cached = self._cache.get((topic, retain))
        if cached is None:
            cached = self._header(topic, retain)
        head, topic_field = cached
        length = len(topic_field) + len(payload)
        out.append(head)
        if length < 128:
            out.append(length)
        elif length < 16384:
            out.append((length & 0x7F) | 0x80)
            out.append(length >> 7)
        else:
            out += encode_remaining_length(length)
        out += topic_field
        out += payload

    def _header(self, topic: str, retain: bool) -> tuple[int, bytes]:
        _check_topic_name(topic)
        cached = (0x31 if retain else 0x30, _string(topic, "topic"))
        if len(self._cache) >= self._max_topics:
            self._cache.clear()
        self._cache[(topic, retain)] = cached
        return cached
