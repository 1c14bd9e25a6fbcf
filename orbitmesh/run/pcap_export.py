"""Trace export as a classic libpcap file: one IPv4/UDP packet per hop (docs/traces.md, "pcap").

Frames from IP endpoints are written as the packet the program sent; every other frame becomes a
UDP packet standing for it, between addresses that exist only inside the file (nothing is ever
sent). ``export_node_map`` writes which address stands for which node.
"""

from __future__ import annotations

import csv
import struct
from collections import Counter
from pathlib import Path
from typing import IO

from orbitmesh.run.export import TraceView, epoch_us_of, iter_sorted_events, kind_of
from orbitmesh.run.records import Damage
from orbitmesh.run.trace import read_manifest

PCAP_MAGIC_US = 0xA1B2C3D4
LINKTYPE_RAW = 101
PCAP_SNAPLEN = 96
USER_FLOW_PORT_BASE = 40000
BUILTIN_FLOW_PORTS = {-1: 30001, -2: 30002, -3: 30003}
FRAME_HEADER = struct.Struct(">2sBBqi")
"""UDP payload header: magic ``OM``, kind, hop number, frame id, flow index (16 bytes)."""
FRAME_MAGIC = b"OM"
_IPV4 = struct.Struct(">BBHHHBBH4s4s")
_UDP = struct.Struct(">HHHH")
_HEADERS_B = _IPV4.size + _UDP.size


def node_address(index: int) -> str:
    """The IPv4 address standing for node ``index`` in exported pcaps (10.0.0.1 is node 0)."""
    if not 0 <= index < 254 * 65536:
        raise ValueError(f"node index {index} has no pcap address (at most {254 * 65536} nodes)")
    block, host = divmod(index, 254)
    return f"10.{block >> 8 & 255}.{block & 255}.{host + 1}"


def flow_port(flow: int) -> int:
    """UDP port standing for a flow index in exported pcaps."""
    return BUILTIN_FLOW_PORTS.get(flow, USER_FLOW_PORT_BASE + flow % (65536 - USER_FLOW_PORT_BASE))


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packet(frame: int, flow: int, hop: int, u: int, v: int, size: int) -> tuple[bytes, int]:
    """Captured bytes (up to the snaplen) and original length of one hop's packet."""
    orig = _HEADERS_B + size
    ip_len = min(orig, 0xFFFF)
    src = bytes(int(x) for x in node_address(u).split("."))
    dst = bytes(int(x) for x in node_address(v).split("."))
    ttl = max(1, 65 - hop)
    ip = _IPV4.pack(0x45, 0, ip_len, frame & 0xFFFF, 0x4000, ttl, 17, 0, src, dst)
    ip = ip[:10] + struct.pack(">H", _ipv4_checksum(ip)) + ip[12:]
    port = flow_port(flow)
    udp = _UDP.pack(port, port, min(_UDP.size + size, 0xFFFF), 0)
    body = FRAME_HEADER.pack(FRAME_MAGIC, kind_of(flow), min(hop, 255), frame, flow)[:size]
    captured = (ip + udp + body)[:PCAP_SNAPLEN]
    pad = min(PCAP_SNAPLEN, orig) - len(captured)
    return captured + b"\0" * pad, orig


def export_pcap(run_dir: Path, out: IO[bytes], *, salvage: bool = False,
                damage: list[Damage] | None = None) -> int:
    """Write a libpcap file (raw IP, µs stamps = epoch + scenario time), a packet per hop: the
    real packet for frames from IP endpoints (as captured, see ``packet`` events), else a UDP
    packet standing for the frame."""
    trace = TraceView(run_dir)
    epoch_us = epoch_us_of(trace.manifest)
    # The file's snaplen allows whole captured endpoint packets; stand-in packets stop at 96 B.
    out.write(struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, 0xFFFF, LINKTYPE_RAW))
    hops: Counter[int] = Counter()
    packets: dict[int, bytes] = {}
    n = 0
    for r in iter_sorted_events(run_dir, salvage=salvage, damage=damage):
        if r[0] == "hop":
            frame, flow = int(r[2]), int(r[3])
            hops[frame] += 1
            real = packets.get(frame)
            if real is not None:  # what the program sent, on every hop it crossed
                data, orig = real, max(int(r[6]), len(real))
            else:
                data, orig = _packet(frame, flow, hops[frame], int(r[4]), int(r[5]), int(r[6]))
            sec, usec = divmod(epoch_us + round(trace.t_s(r[1]) * 1e6), 1_000_000)
            out.write(struct.pack("<IIII", sec, usec, len(data), orig) + data)
            n += 1
        elif r[0] == "packet":
            packets[int(r[2])] = bytes(r[3])
        elif r[0] in ("deliver", "drop"):
            hops.pop(int(r[2]), None)
            packets.pop(int(r[2]), None)
    return n


def export_node_map(run_dir: Path, out: IO[str]) -> int:
    """Write ``address,node_id`` rows for every node (also a valid pcap-import mapping file)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("address", "node_id"))
    ids = read_manifest(Path(run_dir))["node_ids"]
    for i, node in enumerate(ids):
        writer.writerow((node_address(i), node))
    return len(ids)
