"""Import external traffic as offered frames to replay (``orbitmesh replay FILE --scenario S``).

Two sources (docs/traces.md, "External traffic", is the reference):

* CSV with the header ``time_s,source,destination,bytes[,flow]``: one frame per row, rows in
  time order, node ids of the target scenario; ``flow`` defaults to ``<source>-<destination>``.
* A pcap or pcapng capture plus a mapping file (CSV, header ``address,node_id``; an address is
  ``IP``, ``IPv4:port`` or ``[IPv6]:port``). Each IPv4/IPv6 packet whose source and destination
  both map becomes one frame at (packet time - earliest packet time) seconds, its size the IP
  payload length from the IP header (transport header included, link and IP headers not), in the
  flow ``<source node>-<destination node>``. The capture containers and the IP headers are
  parsed here (stdlib only) so that a cut-short file is reported at the packet where it ends.

Every problem of a file is collected and raised at once as a ScenarioError naming the file and
line, or the packet number (1-based, as Wireshark counts).
"""

from __future__ import annotations

import csv
import difflib
import ipaddress
import math
import struct
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import NamedTuple

from orbitmesh.core.scenario_fields import NODE_ID_RE
from orbitmesh.errors import ScenarioError
from orbitmesh.run.trace import Offered

CSV_COLUMNS = ("time_s", "source", "destination", "bytes")
MAPPING_COLUMNS = ("address", "node_id")
MAX_FRAME_B = 2**31 - 1
MAX_RECORD_B = 64 * 2**20
"""A capture record larger than this is taken for a corrupt length field."""
_MAX_LISTED = 50

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Problems:
    """Problems of one file, listed as ``path:line: what``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, where: int | str, what: str) -> None:
        self.items.append(f"{self.path}:{where}: {what}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:_MAX_LISTED]
        if len(self.items) > _MAX_LISTED:
            shown.append(f"... and {len(self.items) - _MAX_LISTED} more")
        raise ScenarioError(f"{self.path}: {len(self.items)} problem(s)", problems=shown)


class _Nodes:
    """Node-id lookups with did-you-mean suggestions (cached: files repeat names)."""

    def __init__(self, node_ids: Collection[str]) -> None:
        self.ids = set(node_ids)
        self._ordered = list(node_ids)
        self._unknown: dict[str, str] = {}

    def problem(self, name: str) -> str | None:
        if name in self.ids:
            return None
        if name not in self._unknown:
            close = difflib.get_close_matches(name, self._ordered, n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            self._unknown[name] = f"unknown node {name!r}{hint}"
        return self._unknown[name]


def _flow_name(source: str, destination: str, taken: dict[str, tuple[str, str]]) -> str:
    """``<source>-<destination>``, or ``flow-<n>`` when that is not a valid (<= 64 chars) name."""
    name = f"{source}-{destination}"
    if NODE_ID_RE.match(name):
        return name
    for n in range(len(taken) + 1):
        if taken.get(f"flow-{n}", (source, destination)) == (source, destination):
            return f"flow-{n}"
    raise AssertionError("unreachable")


def _open_text(path: Path) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read it as UTF-8 text: {exc}") from exc


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, stripped cells)`` of a CSV file, blank and ``#`` lines skipped."""
    lines = _open_text(path)
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = next(csv.reader([line]))
        yield number, [c.strip() for c in cells]


def load_traffic_csv(path: Path, node_ids: Collection[str]) -> list[Offered]:
    """Frames of a ``time_s,source,destination,bytes[,flow]`` CSV, checked against node ids."""
    path = Path(path)
    problems = _Problems(path)
    nodes = _Nodes(node_ids)
    rows = _rows(path)
    header = next(rows, None)
    if header is None:
        raise ScenarioError(f"{path}: empty; expected a header line "
                            f"{','.join(CSV_COLUMNS)}[,flow] and one row per frame")
    line, cells = header
    columns = tuple(c.lower() for c in cells)
    if columns not in (CSV_COLUMNS, (*CSV_COLUMNS, "flow")):
        problems.add(line, f"header {','.join(cells)!r}: expected "
                           f"{','.join(CSV_COLUMNS)} or {','.join(CSV_COLUMNS)},flow")
        problems.raise_if_any()
    out: list[Offered] = []
    flows: dict[str, tuple[str, str]] = {}
    flow_line: dict[str, int] = {}
    last: tuple[float, int] | None = None
    for line, cells in rows:
        if len(cells) < len(CSV_COLUMNS):  # the flow column may be left out row by row
            problems.add(line, f"truncated row: {len(cells)} of {len(columns)} fields "
                               f"({','.join(columns)})")
            continue
        if len(cells) > len(columns):
            problems.add(line, f"{len(cells)} fields, expected {len(columns)} "
                               f"({','.join(columns)})")
            continue
        bad = len(problems.items)
        time_text, source, destination, size_text = cells[:4]
        try:
            t_s = float(time_text)
        except ValueError:
            t_s = math.nan
        if not math.isfinite(t_s):
            problems.add(line, f"time_s {time_text!r}: expected seconds as a number")
        elif t_s < 0:
            problems.add(line, f"time_s {t_s:g} is negative; times count from 0")
        elif last is not None and t_s < last[0]:
            problems.add(line, f"time_s {t_s:g} is before {last[0]:g} on line {last[1]}: "
                               "rows must be in time order (sort the file by time_s)")
        else:
            last = (t_s, line)
        try:
            size = int(size_text)
        except ValueError:
            size = 0
        if not 0 < size <= MAX_FRAME_B:
            problems.add(line, f"bytes {size_text!r}: expected a whole number of bytes "
                               f"from 1 to {MAX_FRAME_B}")
        for column, name in (("source", source), ("destination", destination)):
            why = nodes.problem(name)
            if why is not None:
                problems.add(line, f"{column}: {why}")
        if source == destination and source:
            problems.add(line, f"source and destination are the same node {source!r}")
        flow = cells[4] if len(cells) > 4 and cells[4] else _flow_name(source, destination,
                                                                       flows)
        if not NODE_ID_RE.match(flow):
            problems.add(line, f"flow {flow!r}: a flow name is 1-64 letters, digits, '_', "
                               "'.', '-', starting with a letter or digit")
        elif flows.setdefault(flow, (source, destination)) != (source, destination):
            a, b = flows[flow]
            problems.add(line, f"flow {flow!r} goes {source} -> {destination} here but "
                               f"{a} -> {b} on line {flow_line[flow]}: a flow has one source "
                               "and one destination")
        flow_line.setdefault(flow, line)
        if len(problems.items) == bad:
            out.append(Offered(t_s, flow, source, destination, size))
    problems.raise_if_any()
    if not out:
        raise ScenarioError(f"{path}: no traffic rows after the header")
    return out


# -- mapping file -------------------------------------------------------------------------------

Endpoint = tuple[IPAddress, int | None]


def _parse_endpoint(text: str) -> Endpoint:
    """``IP``, ``IPv4:port`` or ``[IPv6]:port``; ValueError when it is none of them."""
    port: int | None = None
    host = text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("expected [IPv6]:port")
        port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    return ipaddress.ip_address(host), port


def load_address_map(path: Path, node_ids: Collection[str]) -> dict[Endpoint, str]:
    """The ``address,node_id`` mapping file of a pcap import, checked against node ids."""
    path = Path(path)
    problems = _Problems(path)
    nodes = _Nodes(node_ids)
    rows = _rows(path)
    header = next(rows, None)
    if header is None or tuple(c.lower() for c in header[1]) != MAPPING_COLUMNS:
        got = "nothing" if header is None else repr(",".join(header[1]))
        problems.add(1 if header is None else header[0],
                     f"expected the header address,node_id, got {got} (one address or "
                     "address:port per line, e.g. 192.0.2.7,tokyo)")
        problems.raise_if_any()
    mapping: dict[Endpoint, str] = {}
    seen: dict[Endpoint, int] = {}
    for line, cells in rows:
        if len(cells) != 2:
            problems.add(line, f"{len(cells)} fields, expected 2 (address,node_id)")
            continue
        text, node = cells
        try:
            endpoint = _parse_endpoint(text)
        except ValueError as exc:
            problems.add(line, f"address {text!r}: expected IP, IPv4:port or [IPv6]:port ({exc})")
            continue
        why = nodes.problem(node)
        if why is not None:
            problems.add(line, f"node_id: {why}")
        elif endpoint in mapping and mapping[endpoint] != node:
            problems.add(line, f"{text} maps to {node!r} here and to {mapping[endpoint]!r} on "
                               f"line {seen[endpoint]}")
        else:
            mapping[endpoint] = node
            seen.setdefault(endpoint, line)
    if not mapping and not problems.items:
        problems.add(1, "no addresses mapped")
    problems.raise_if_any()
    return mapping


# -- captures -----------------------------------------------------------------------------------

class _Record(NamedTuple):
    number: int
    ts_ns: int
    linktype: int
    data: bytes


_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1000), b"\xa1\xb2\xc3\xd4": (">", 1000),
                b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1)}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


def _iter_capture(path: Path) -> Iterator[_Record]:
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


def _iter_pcap(path: Path, data: bytes, order: str, ns_per_tick: int) -> Iterator[_Record]:
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
        yield _Record(number, sec * 1_000_000_000 + frac * ns_per_tick, linktype, body)
        pos += 16 + caplen


def _iter_pcapng(path: Path, data: bytes) -> Iterator[_Record]:
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
            yield _Record(number, ts_ns, linktype, payload)
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


class _IP(NamedTuple):
    src: IPAddress
    dst: IPAddress
    sport: int | None
    dport: int | None
    payload_b: int


_ETHERTYPES = {0x0800: 4, 0x86DD: 6}
_BSD_AF = {2: 4, 10: 6, 24: 6, 28: 6, 30: 6}
_IPV6_EXT = {0, 43, 60, 51, 44}


def _network(path: Path, rec: _Record) -> bytes:
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


def _not_ip(path: Path, rec: _Record, what: str) -> ScenarioError:
    return ScenarioError(f"{path}: packet {rec.number} is not an IP packet ({what}); keep only "
                         f"IP traffic, e.g. tshark -r {path} -Y ip -w ip-only.pcap")


def _ip(path: Path, rec: _Record) -> _IP:
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
    return _IP(src, dst, sport, dport, max(1, payload_b))


def load_traffic_pcap(path: Path, mapping_path: Path, node_ids: Collection[str]
                      ) -> tuple[list[Offered], list[str]]:
    """Frames of a pcap/pcapng capture whose addresses the mapping file names, and warnings."""
    path = Path(path)
    mapping = load_address_map(mapping_path, node_ids)
    by_address = {a: n for (a, port), n in mapping.items() if port is None}

    def node_of(address: IPAddress, port: int | None) -> str | None:
        return mapping.get((address, port)) or by_address.get(address)

    kept: list[tuple[int, str, str, int]] = []
    unmapped: Counter[str] = Counter()
    skipped = same = total = 0
    for rec in _iter_capture(path):
        total += 1
        ip = _ip(path, rec)
        src, dst = node_of(ip.src, ip.sport), node_of(ip.dst, ip.dport)
        if src is None or dst is None:
            skipped += 1
            unmapped.update(str(a) for a, n in ((ip.src, src), (ip.dst, dst)) if n is None)
        elif src == dst:
            same += 1
        else:
            kept.append((rec.ts_ns, src, dst, ip.payload_b))
    if total == 0:
        raise ScenarioError(f"{path}: the capture holds no packets")
    top = ", ".join(f"{a} ({n} packets)" for a, n in unmapped.most_common(5))
    if not kept:
        raise ScenarioError(
            f"{path}: none of its {total} packets has both addresses mapped to two different "
            f"nodes in {mapping_path}" + (f"; most frequent unmapped addresses: {top}" if top
                                          else "") + "; add them to the mapping file")
    warnings = []
    if skipped:
        warnings.append(f"{path}: {skipped} of {total} packets skipped, their addresses are not "
                        f"in {mapping_path}; most frequent: {top}")
    if same:
        warnings.append(f"{path}: {same} packets skipped, both their addresses map to one node")
    origin = min(k[0] for k in kept)
    flows: dict[str, tuple[str, str]] = {}
    out = []
    for ts_ns, src, dst, size in sorted(kept, key=lambda k: k[0]):
        flow = _flow_name(src, dst, flows)
        flows.setdefault(flow, (src, dst))
        out.append(Offered((ts_ns - origin) / 1e9, flow, src, dst, size))
    return out, warnings
