"""Packets of a pcap or pcapng capture and their IP headers, parsed with the stdlib only.

Containers, link layers (Ethernet with VLAN tags, raw IP, Linux cooked v1/v2, BSD loopback) and
IPv4/IPv6 headers are read here so that a cut-short or foreign file is reported at the packet
where it goes wrong (packets numbered from 1, as Wireshark counts), as a ScenarioError.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from orbitmesh.errors import ScenarioError

MAX_RECORD_B = 64 * 2**20
"""A capture record larger than this is taken for a corrupt length field."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Record(NamedTuple):
    """One captured packet: its number (from 1), timestamp, link type and captured bytes."""

    number: int
    ts_ns: int
    linktype: int
    data: bytes


_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1000), b"\xa1\xb2\xc3\xd4": (">", 1000),
                b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1)}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


def iter_capture(path: Path) -> Iterator[Record]:
    """Packets of a pcap or pcapng file, with exact errors where the file is cut short."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the capture: {exc}") from exc
    magic = data[:4]
    if magic in _PCAP_MAGICS:
        yield from _iter_pcap(path, data, *_PCAP_MAGICS[magic])
    elif magic == _PCAPNG_SHB:
        yield from _iter_pcapng(path, data)
    else:
        hint = "; it is gzip-compressed: decompress it first" if magic[:2] == b"\x1f\x8b" else ""
        raise ScenarioError(f"{path}: not a pcap or pcapng capture (starts with "
                            f"{magic.hex() or 'nothing'}){hint}")


def _cut(path: Path, number: int, what: str) -> ScenarioError:
    return ScenarioError(f"{path}: packet {number}: {what} (the capture is truncated or "
                         "corrupt; packets before it are fine)")


def _iter_pcap(path: Path, data: bytes, order: str, ns_per_tick: int) -> Iterator[Record]:
    if len(data) < 24:
        raise ScenarioError(f"{path}: truncated pcap file header ({len(data)} of 24 bytes)")
    linktype = struct.unpack(order + "I", data[20:24])[0] & 0xFFFF
    pos, number = 24, 0
    while pos < len(data):
        number += 1
        if len(data) - pos < 16:
            raise _cut(path, number, f"the file ends inside its record header "
                                     f"({len(data) - pos} of 16 bytes)")
        sec, frac, caplen, _orig = struct.unpack(order + "IIII", data[pos:pos + 16])
        if caplen > MAX_RECORD_B:
            raise _cut(path, number, f"record claims {caplen} captured bytes")
        body = data[pos + 16:pos + 16 + caplen]
        if len(body) < caplen:
            raise _cut(path, number, f"record holds {caplen} captured bytes, the file ends "
                                     f"after {len(body)}")
        yield Record(number, sec * 1_000_000_000 + frac * ns_per_tick, linktype, body)
        pos += 16 + caplen


def _iter_pcapng(path: Path, data: bytes) -> Iterator[Record]:
    order = "<"
    interfaces: list[tuple[int, int, int, int]] = []  # linktype, resolution base, exponent, s
    pos, number = 0, 0
    while pos < len(data):
        head = data[pos:pos + 12]
        is_packet = head[:4] in (b"\x06\x00\x00\x00", b"\x00\x00\x00\x06",
                                 b"\x03\x00\x00\x00", b"\x00\x00\x00\x03",
                                 b"\x02\x00\x00\x00", b"\x00\x00\x00\x02")
        where = number + 1 if is_packet else number
        if len(head) < 12:
            raise _cut(path, where, f"the file ends inside a block header ({len(head)} bytes)")
        if head[:4] == _PCAPNG_SHB:
            order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(head[8:12], "")
            if not order:
                raise ScenarioError(f"{path}: pcapng section header with an unknown byte-order "
                                    f"mark {head[8:12].hex()} (after packet {number})")
            interfaces = []
        block_type, length = struct.unpack(order + "II", head[:8])
        if length < 12 or length % 4:
            raise _cut(path, where, f"block length {length} is not a multiple of 4 >= 12")
        block = data[pos:pos + length]
        if len(block) < length:
            raise _cut(path, where, f"the file ends inside its block ({len(block)} of "
                                    f"{length} bytes)")
        body = block[8:-4]
        pos += length
        if block_type == 1:
            interfaces.append(_interface(order, body))
        elif block_type in (2, 6):
            number += 1
            if len(body) < 20:
                raise _cut(path, number, f"packet block of {length} bytes is too short")
            if block_type == 6:
                iface, high, low, caplen = struct.unpack(order + "IIII", body[:16])
                payload = body[20:20 + caplen]
            else:
                iface, high, low, caplen = struct.unpack(order + "HxxIII", body[:16])
                payload = body[20:20 + caplen]
            if len(payload) < caplen:
                raise _cut(path, number, f"block holds {len(payload)} bytes of a {caplen}-byte "
                                         "capture")
            if iface >= len(interfaces):
                raise _cut(path, number, f"names interface {iface}, the section has "
                                         f"{len(interfaces)}")
            linktype, base, exponent, offset_s = interfaces[iface]
            ticks = (high << 32) | low
            ts_ns = offset_s * 1_000_000_000 + (
                ticks * 10 ** (9 - exponent) if base == 10 and exponent <= 9
                else ticks * 1_000_000_000 // base ** exponent)
            yield Record(number, ts_ns, linktype, payload)
        elif block_type == 3:
            number += 1
            raise ScenarioError(f"{path}: packet {number} is a simple packet block, which has "
                                "no timestamp; re-save the capture with timestamps "
                                "(e.g. tshark -r IN -w OUT.pcapng)")


def _interface(order: str, body: bytes) -> tuple[int, int, int, int]:
    """Link type, timestamp resolution (base, exponent) and offset (s) of an IDB body."""
    linktype = struct.unpack(order + "H", body[:2])[0]
    base, exponent, offset_s = 10, 6, 0
    pos = 8
    while pos + 4 <= len(body):
        code, size = struct.unpack(order + "HH", body[pos:pos + 4])
        value = body[pos + 4:pos + 4 + size]
        if code == 0:
            break
        if code == 9 and size >= 1:
            base, exponent = (2, value[0] & 0x7F) if value[0] & 0x80 else (10, value[0])
        elif code == 14 and size >= 8:
            offset_s = struct.unpack(order + "q", value[:8])[0]
        pos += 4 + (size + 3) // 4 * 4
    return linktype, base, exponent, offset_s


class IpHeader(NamedTuple):
    """Addresses, ports (UDP/TCP, first fragment only) and IP payload length of one packet."""

    src: IPAddress
    dst: IPAddress
    sport: int | None
    dport: int | None
    payload_b: int


_ETHERTYPES = {0x0800: 4, 0x86DD: 6}
_BSD_AF = {2: 4, 10: 6, 24: 6, 28: 6, 30: 6}
_IPV6_EXT = {0, 43, 60, 51, 44}


def _network(path: Path, rec: Record) -> bytes:
    """The IP packet inside a link-layer record (error naming the packet if it is none)."""
    data, link = rec.data, rec.linktype
    if link == 1:  # Ethernet, with any VLAN tags
        pos, ethertype = 12, -1
        while len(data) >= pos + 2:
            ethertype = struct.unpack(">H", data[pos:pos + 2])[0]
            if ethertype not in (0x8100, 0x88A8, 0x9100):
                break
            pos += 4
        if ethertype not in _ETHERTYPES:
            raise _not_ip(path, rec, f"ethertype 0x{ethertype:04x}" if ethertype >= 0
                          else "frame too short for Ethernet")
        return data[pos + 2:]
    if link in (101, 12, 14, 228, 229):
        return data
    if link in (113, 276):  # Linux cooked v1 / v2
        proto_at, start = (14, 16) if link == 113 else (0, 20)
        proto = struct.unpack(">H", data[proto_at:proto_at + 2])[0] if len(data) >= start else -1
        if proto not in _ETHERTYPES:
            raise _not_ip(path, rec, f"protocol 0x{proto:04x}" if proto >= 0 else "cut short")
        return data[start:]
    if link in (0, 108):  # BSD loopback: address family, host order (0) or big endian (108)
        family = -1
        if len(data) >= 4:
            le, be = struct.unpack("<I", data[:4])[0], struct.unpack(">I", data[:4])[0]
            family = be if link == 108 or be in _BSD_AF else le
        if family not in _BSD_AF:
            raise _not_ip(path, rec, f"address family {family}")
        return data[4:]
    raise ScenarioError(f"{path}: packet {rec.number}: link type {link} is not supported "
                        "(Ethernet, raw IP, Linux cooked and loopback captures are)")


def _not_ip(path: Path, rec: Record, what: str) -> ScenarioError:
    return ScenarioError(f"{path}: packet {rec.number} is not an IP packet ({what}); keep only "
                         f"IP traffic, e.g. tshark -r {path} -Y ip -w ip-only.pcap")


def ip_header(path: Path, rec: Record) -> IpHeader:
    """Addresses, ports (UDP/TCP, first fragment) and payload length of one packet."""
    pkt = _network(path, rec)
    version = pkt[0] >> 4 if pkt else 0
    cut = ScenarioError(f"{path}: packet {rec.number}: IPv{version} header cut short "
                        f"({len(pkt)} bytes captured)")
    if version == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if len(pkt) < 20 or len(pkt) < ihl or ihl < 20:
            raise cut
        total, frag, proto = (struct.unpack(">H", pkt[2:4])[0],
                              struct.unpack(">H", pkt[6:8])[0] & 0x1FFF, pkt[9])
        payload_b = total - ihl if total >= ihl else len(pkt) - ihl  # 0: offloaded length
        start = ihl if frag == 0 else -1
        src, dst = ipaddress.ip_address(pkt[12:16]), ipaddress.ip_address(pkt[16:20])
    elif version == 6:
        if len(pkt) < 40:
            raise cut
        payload_b = struct.unpack(">H", pkt[4:6])[0] or len(pkt) - 40
        proto, start = pkt[6], 40
        while proto in _IPV6_EXT and len(pkt) >= start + 8:
            if proto == 44:
                if struct.unpack(">H", pkt[start + 2:start + 4])[0] >> 3:
                    start = -1
                    break
                proto, start = pkt[start], start + 8
            else:
                step = (pkt[start + 1] + 2) * 4 if proto == 51 else (pkt[start + 1] + 1) * 8
                proto, start = pkt[start], start + step
        src, dst = ipaddress.ip_address(pkt[8:24]), ipaddress.ip_address(pkt[24:40])
    else:
        raise _not_ip(path, rec, f"IP version field {version}")
    sport = dport = None
    if proto in (6, 17) and start >= 0 and len(pkt) >= start + 4:
        sport, dport = struct.unpack(">HH", pkt[start:start + 4])
    return IpHeader(src, dst, sport, dport, max(1, payload_b))
