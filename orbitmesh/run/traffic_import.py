"""Import external traffic as offered frames to replay (``orbitmesh replay FILE --scenario S``).

Two sources (docs/traces.md, "External traffic", is the reference):

* CSV with the header ``time_s,source,destination,bytes[,flow]``: one frame per row, rows in
  time order, node ids of the target scenario; ``flow`` defaults to ``<source>-<destination>``.
* A pcap or pcapng capture plus a mapping file (CSV, header ``address,node_id``; an address is
  ``IP``, ``IPv4:port`` or ``[IPv6]:port``). Each IPv4/IPv6 packet whose source and destination
  both map becomes one frame at (packet time - earliest packet time) seconds, its size the IP
  payload length from the IP header (transport header included, link and IP headers not), in the
  flow ``<source node>-<destination node>``. capture_read.py parses the capture containers and
  the IP headers (stdlib only) so that a cut-short file is reported at the packet where it ends.

Every problem of a file is collected and raised at once as a ScenarioError naming the file and
line, or the packet number (1-based, as Wireshark counts).
"""

from __future__ import annotations

import csv
import difflib
import ipaddress
import math
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path

from orbitmesh.core.scenario_fields import NODE_ID_RE
from orbitmesh.errors import ScenarioError
from orbitmesh.run.capture_read import IPAddress, ip_header, iter_capture
from orbitmesh.run.trace import Offered

CSV_COLUMNS = ("time_s", "source", "destination", "bytes")
MAPPING_COLUMNS = ("address", "node_id")
MAX_FRAME_B = 2**31 - 1
_MAX_LISTED = 50


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
    for rec in iter_capture(path):
        total += 1
        ip = ip_header(path, rec)
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
