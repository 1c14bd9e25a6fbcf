"""IP packet peeking and the ICMP errors the emulated network answers with (sans I/O).

Only what a router needs: the version and destination of a packet, whether an IPv4 packet forbids
fragmentation, and ICMP / ICMPv6 "destination unreachable", "fragmentation needed" and "packet
too big" quoting the offending packet (RFC 792, RFC 1191, RFC 4443).
"""

from __future__ import annotations

import ipaddress
import struct

IPV4_HEADER_MIN = 20
IPV6_HEADER = 40
IPV6_MIN_MTU = 1280
PROTO_ICMP, PROTO_ICMPV6 = 1, 58


def destination(packet: bytes) -> tuple[int, bytes] | None:
    """(IP version, destination address bytes) of ``packet``, or None if it is not IP."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= IPV4_HEADER_MIN:
        return 4, packet[16:20]
    if version == 6 and len(packet) >= IPV6_HEADER:
        return 6, packet[24:40]
    return None


def source(packet: bytes) -> bytes:
    """Source address bytes of an IPv4 or IPv6 packet (checked by :func:`destination`)."""
    return packet[12:16] if packet[0] >> 4 == 4 else packet[8:24]


def dont_fragment(packet: bytes) -> bool:
    """True when an IPv4 packet has DF set (IPv6 packets are never fragmented en route)."""
    return packet[0] >> 4 == 6 or bool(packet[6] & 0x40)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(src: bytes, dst: bytes, body: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, IPV4_HEADER_MIN + len(body), 0, 0, 64,
                         PROTO_ICMP, 0, src, dst)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + body


def _ipv6(src: bytes, dst: bytes, body: bytes) -> bytes:
    pseudo = src + dst + struct.pack("!I3xB", len(body), PROTO_ICMPV6)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), PROTO_ICMPV6, 64, src, dst) + body


def _quote4(packet: bytes) -> bytes:
    """The original IPv4 header and the first 8 octets of its data (RFC 792)."""
    ihl = (packet[0] & 0x0F) * 4
    return packet[:ihl + 8]


def unreachable(packet: bytes, router: tuple[bytes, bytes]) -> bytes:
    """ICMP host unreachable (v4 type 3 code 1) / ICMPv6 address unreachable (type 1 code 3)
    from ``router`` (its IPv4 and IPv6 address) back to the sender of ``packet``."""
    if packet[0] >> 4 == 4:
        body = struct.pack("!BBHI", 3, 1, 0, 0) + _quote4(packet)
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        return _ipv4(router[0], source(packet), body)
    body = struct.pack("!BBHI", 1, 3, 0, 0) + packet[:IPV6_MIN_MTU - IPV6_HEADER - 8]
    return _ipv6(router[1], source(packet), body)


def too_big(packet: bytes, mtu_bytes: int, router: tuple[bytes, bytes]) -> bytes:
    """ICMP fragmentation needed (v4 type 3 code 4, next-hop MTU) / ICMPv6 packet too big."""
    if packet[0] >> 4 == 4:
        body = struct.pack("!BBHHH", 3, 4, 0, 0, mtu_bytes) + _quote4(packet)
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        return _ipv4(router[0], source(packet), body)
    body = struct.pack("!BBHI", 2, 0, 0, mtu_bytes) + packet[:IPV6_MIN_MTU - IPV6_HEADER - 8]
    return _ipv6(router[1], source(packet), body)


def address_bytes(text: str) -> bytes:
    """Packed form of an IPv4 or IPv6 address."""
    return ipaddress.ip_address(text).packed
