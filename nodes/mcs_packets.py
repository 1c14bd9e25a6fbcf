"""The sans-I/O half of the MCS bridge: space-packet framing, TC routing, the TM ack packet.

Framing is the one Yamcs and OpenC3 COSMOS read (docs/mcs.md): on UDP one CCSDS space packet
per datagram; on TCP packets back to back, each delimited by its primary header's packet data
length field (total length = that field + 7). Nothing here touches a socket or a clock, so the
tests drive it byte by byte.
"""

from __future__ import annotations

import struct
from collections import Counter

from spacepackets.ccsds.spacepacket import PacketType, SpacePacketHeader

from orbitmesh.core.mcs_spec import ACK_APID, ACK_EXECUTED, ACK_NOT_A_PACKET
from orbitmesh.protocol.wire import TM, space_packet

HEADER_BYTES = 6
MAX_PACKET_BYTES = 65_542
"""A data length field of 0xFFFF: 65,536 octets of data after the 6-octet header."""
_ACK = struct.Struct(">IHHB")
"""Ack data field: satellite node index, TC APID, TC sequence count, status."""


def packet_length(header: bytes | bytearray | memoryview) -> int:
    """Total length of the space packet whose primary header starts ``header`` (≥ 6 octets)."""
    return ((header[4] << 8) | header[5]) + HEADER_BYTES + 1


class StreamSplitter:
    """Cuts a TCP byte stream into space packets by their length fields."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every packet now complete (a partial one waits)."""
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        start = 0
        while len(buf) - start >= HEADER_BYTES:
            total = packet_length(memoryview(buf)[start:start + HEADER_BYTES])
            if len(buf) - start < total:
                break
            out.append(bytes(buf[start:start + total]))
            start += total
        del buf[:start]
        return out

    @property
    def pending_bytes(self) -> int:
        """Octets of an incomplete packet still waiting for the rest."""
        return len(self._buffer)


def datagram_packet(datagram: bytes) -> tuple[bytes | None, str | None]:
    """The one space packet a UDP datagram holds, or None and why it is refused."""
    if len(datagram) < HEADER_BYTES + 1:
        return None, "short"
    if packet_length(datagram) != len(datagram):
        return None, "length_mismatch"
    return datagram, None


class TcRouter:
    """Decides which satellite node a telecommand packet from the MCS goes to."""

    def __init__(self, routes: dict[int, int]) -> None:
        self.routes = dict(routes)
        """TC APID -> satellite node index."""
        self.refused: Counter[str] = Counter()

    def route(self, packet: bytes) -> tuple[int, SpacePacketHeader] | None:
        """``(satellite node, header)`` for a TC packet, or None (counted by reason)."""
        try:
            header = SpacePacketHeader.unpack(packet)
        except ValueError:  # spacepackets raises BytesTooShortError, a ValueError
            self.refused["short"] += 1
            return None
        if header.packet_type != PacketType.TC:
            self.refused["not_tc"] += 1
            return None
        if header.ccsds_version != 0:
            self.refused["version"] += 1
            return None
        sat = self.routes.get(header.apid)
        if sat is None:
            self.refused["unknown_apid"] += 1
            return None
        return sat, header


def tc_identity(payload: bytes) -> tuple[int, int] | None:
    """``(APID, sequence count)`` of the space packet starting ``payload``, or None."""
    if len(payload) < HEADER_BYTES:
        return None
    word1, word2 = struct.unpack_from(">HH", payload)
    return word1 & 0x7FF, word2 & 0x3FFF


def ack_packet(sat: int, tc_payload: bytes, seq_count: int) -> bytes:
    """The TM acknowledgement satellite ``sat`` emits for a TC whose packet is ``tc_payload``."""
    ident = tc_identity(tc_payload)
    apid, seq = ident if ident is not None else (0, 0)
    status = ACK_EXECUTED if ident is not None else ACK_NOT_A_PACKET
    return space_packet(TM, ACK_APID, seq_count, _ACK.pack(sat, apid, seq, status))


def read_ack(packet: bytes) -> tuple[int, int, int, int] | None:
    """``(satellite, TC APID, TC sequence count, status)`` of an ack packet, else None."""
    if len(packet) != HEADER_BYTES + _ACK.size or tc_identity(packet) is None:
        return None
    apid = (packet[0] << 8 | packet[1]) & 0x7FF
    if apid != ACK_APID:
        return None
    sat, tc_apid, tc_seq, status = _ACK.unpack_from(packet, HEADER_BYTES)
    return sat, tc_apid, tc_seq, status
