"""Read a trace for people and tools: ``orbitmesh trace info`` and ``orbitmesh trace export``.

Frame events are merged from every worker stream into one scenario-time order. A stream is
almost, not exactly, in time order: a ``hop`` is stamped with its intended arrival, which is a
little earlier than the worker clock that stamps the events written around it. Each stream
therefore goes through a small reorder buffer (``REORDER_WINDOW_WALL_S`` of wall time) before
``heapq.merge`` joins the streams, so memory holds a few seconds of events, never the whole run.

Exports: one row per frame event (JSON Lines or CSV, columns ``EVENT_COLUMNS``), and a classic
libpcap file with one IPv4/UDP packet per hop (see ``export_pcap``; docs/traces.md has the
layout). Node addresses in the pcap exist only inside the file: nothing is ever sent.
"""

from __future__ import annotations

import csv
import heapq
import json
import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from orbitmesh.protocol.clock import RunClock
from orbitmesh.protocol.wire import ACK, DATA, KIND_NAMES, TELECOMMAND, TELEMETRY
from orbitmesh.run.records import Damage, RecordReader, TraceError
from orbitmesh.run.trace import (
    FULL_DISK,
    LINKS_FILE,
    EventStream,
    check_link_record,
    event_streams,
    read_manifest,
)

REORDER_WINDOW_WALL_S = 5.0
"""How far (wall seconds) a record may trail a later-stamped one in its own stream."""
EVENT_TYPES = ("offer", "hop", "deliver", "drop", "packet")
EVENT_COLUMNS = ("t_s", "event", "frame", "flow", "kind", "source", "destination", "from", "to",
                 "node", "size", "hops", "latency_ms", "reason", "fault", "acknowledges")
_BUILTIN_KIND = {-1: TELEMETRY, -2: TELECOMMAND, -3: ACK}

# pcap export (docs/traces.md, "pcap")
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
_EPOCH0 = datetime(1970, 1, 1, tzinfo=UTC)


class _Trace:
    """What the readers need from a manifest: clock, node ids, flow names."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.manifest = read_manifest(self.run_dir)
        self.t0_wall = float(self.manifest["t0_wall"])
        self.speed = float(self.manifest["speed"])
        self.clock = RunClock.of(self.manifest)
        self.node_ids: list[str] = list(self.manifest["node_ids"])
        self.flows: dict[int, str] = {int(k): str(v) for k, v in
                                      self.manifest.get("builtin_flows", {}).items()}
        self.flows |= {int(f["index"]): str(f["name"]) for f in self.manifest["flows"]}

    def t_s(self, wall: float) -> float:
        return self.clock.scenario_s(wall)

    def node(self, index: int) -> str:
        return self.node_ids[index] if 0 <= index < len(self.node_ids) else str(index)

    def flow(self, index: int) -> str:
        return self.flows.get(index, str(index))

    def streams(self) -> list[Path]:
        return event_streams(self.run_dir)


def _kind_of(flow: int) -> int:
    return _BUILTIN_KIND.get(flow, DATA)


def _is_event(record: list[Any]) -> bool:
    """A frame event (records are shape-checked when read; ``suppress`` names no frame)."""
    return record[0] in EVENT_TYPES


def _reordered(records: Iterable[Any], window_wall_s: float) -> Iterator[list[Any]]:
    """``records`` in wall-time order, given none trails a later one by more than the window."""
    heap: list[tuple[float, int, list[Any]]] = []
    for seq, record in enumerate(records):
        if not _is_event(record):
            continue
        heapq.heappush(heap, (record[1], seq, record))
        while heap[0][0] < record[1] - window_wall_s:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


def iter_sorted_events(run_dir: Path, *, salvage: bool = False,
                       damage: list[Damage] | None = None) -> Iterator[list[Any]]:
    """Raw event records of every worker stream, merged into wall-time (= scenario-time) order.

    Damage raises TraceError; with ``salvage`` it is skipped and appended to ``damage``.
    """
    trace = _Trace(run_dir)
    streams = [EventStream(p, "salvage" if salvage else "raise") for p in trace.streams()]
    yield from heapq.merge(*(_reordered(s, REORDER_WINDOW_WALL_S) for s in streams),
                           key=lambda r: r[1])
    if damage is not None:
        damage.extend(d for s in streams for d in s.damage)


def _row(trace: _Trace, r: list[Any]) -> dict[str, Any]:
    """One event record as a row: the fields it carries, the others absent."""
    if r[0] == "suppress":  # ["suppress", wall, flow, source, fault]: no frame was made
        return {"t_s": trace.t_s(r[1]), "event": "suppress", "flow": trace.flow(int(r[2])),
                "source": trace.node(r[3]), "fault": r[4]}
    if r[0] == "packet":  # ["packet", wall, frame, bytes]: the pcap export carries the bytes
        return {"t_s": trace.t_s(r[1]), "event": "packet", "frame": r[2], "size": len(r[3])}
    event, flow = r[0], int(r[3])
    row: dict[str, Any] = {"t_s": trace.t_s(r[1]), "event": event, "frame": r[2],
                           "flow": trace.flow(flow)}
    if event == "offer":
        kind = int(r[4])
        row |= {"kind": KIND_NAMES[kind] if 0 <= kind < len(KIND_NAMES) else str(kind),
                "source": trace.node(r[5]), "destination": trace.node(r[6]), "size": r[7]}
        if len(r) > 8 and kind == ACK:  # the telecommand this acknowledgement answers
            row["acknowledges"] = r[8]
    elif event == "hop":
        row |= {"kind": KIND_NAMES[_kind_of(flow)], "from": trace.node(r[4]),
                "to": trace.node(r[5]), "size": r[6]}
    elif event == "deliver":
        row |= {"kind": KIND_NAMES[_kind_of(flow)], "node": trace.node(r[4]), "hops": r[5],
                "latency_ms": r[6]}
    else:
        row |= {"kind": KIND_NAMES[_kind_of(flow)], "reason": r[5]}
        if r[4] is not None and r[4] >= 0:
            row["node"] = trace.node(r[4])
        if len(r) > 6 and r[6] is not None:
            row["fault"] = r[6]
    return row


def iter_event_rows(run_dir: Path, *, salvage: bool = False,
                    damage: list[Damage] | None = None) -> Iterator[dict[str, Any]]:
    """Every frame event as a row dict (keys from ``EVENT_COLUMNS``), sorted by ``t_s``."""
    trace = _Trace(run_dir)
    for record in iter_sorted_events(run_dir, salvage=salvage, damage=damage):
        yield _row(trace, record)


def export_jsonl(run_dir: Path, out: IO[str], *, salvage: bool = False,
                 damage: list[Damage] | None = None) -> int:
    """Write one JSON object per frame event (fields that do not apply left out); rows written."""
    n = 0
    for row in iter_event_rows(run_dir, salvage=salvage, damage=damage):
        out.write(json.dumps(row, separators=(",", ":")) + "\n")
        n += 1
    return n


def export_csv(run_dir: Path, out: IO[str], *, salvage: bool = False,
               damage: list[Damage] | None = None) -> int:
    """Write one CSV row per frame event under an ``EVENT_COLUMNS`` header; rows written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EVENT_COLUMNS)
    n = 0
    for row in iter_event_rows(run_dir, salvage=salvage, damage=damage):
        writer.writerow(["" if row.get(c) is None else _cell(row[c]) for c in EVENT_COLUMNS])
        n += 1
    return n


def _cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


# -- pcap ---------------------------------------------------------------------------------------

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
    body = FRAME_HEADER.pack(FRAME_MAGIC, _kind_of(flow), min(hop, 255), frame, flow)[:size]
    captured = (ip + udp + body)[:PCAP_SNAPLEN]
    pad = min(PCAP_SNAPLEN, orig) - len(captured)
    return captured + b"\0" * pad, orig


def _epoch_us(manifest: dict[str, Any]) -> int:
    epoch = datetime.fromisoformat(str(manifest["epoch"]).replace("Z", "+00:00"))
    if epoch.tzinfo is None:
        epoch = epoch.replace(tzinfo=UTC)
    return (epoch - _EPOCH0) // timedelta(microseconds=1)


def export_pcap(run_dir: Path, out: IO[bytes], *, salvage: bool = False,
                damage: list[Damage] | None = None) -> int:
    """Write a libpcap file (raw IP, µs stamps = epoch + scenario time), a packet per hop: the
    real packet for frames from IP endpoints (as captured, see ``packet`` events), else a UDP
    packet standing for the frame."""
    trace = _Trace(run_dir)
    epoch_us = _epoch_us(trace.manifest)
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


# -- trace info ---------------------------------------------------------------------------------

def trace_info(run_dir: Path, *, salvage: bool = False) -> dict[str, Any]:
    """What a trace holds, from its manifest and events (works while the run is in progress).

    Damage does not raise: it is listed under ``damage`` (reading stops at it, or with
    ``salvage`` skips past it) and the trace's status is "damaged".
    """
    trace = _Trace(run_dir)
    m = trace.manifest
    events: Counter[str] = Counter()
    offered: Counter[int] = Counter()
    delivered: Counter[int] = Counter()
    dropped: dict[int, Counter[str]] = {}
    first = last = None
    streams = []
    damage: list[Damage] = []
    for path in trace.streams():
        count = 0
        stream = EventStream(path, "salvage" if salvage else "stop")
        for r in stream:
            if not _is_event(r):
                continue
            count += 1
            events[r[0]] += 1
            flow = int(r[3])
            if r[0] == "offer":
                offered[flow] += 1
            elif r[0] == "deliver":
                delivered[flow] += 1
            elif r[0] == "drop":
                dropped.setdefault(flow, Counter())[str(r[5])] += 1
            first = r[1] if first is None or r[1] < first else first
            last = r[1] if last is None or r[1] > last else last
        damage += stream.damage
        streams.append({"file": path.name, "events": count,
                        "partial_tail_at": stream.reader.partial_tail,
                        "missing_events": stream.missing_events})
    user = [int(f["index"]) for f in m["flows"]]
    seen = set(offered) | set(delivered) | set(dropped)
    order = user + sorted((f for f in seen if f not in user), reverse=True)
    ends = {int(f["index"]): (f["source"], f["destination"]) for f in m["flows"]}
    flows = []
    for f in order:
        drops = dropped.get(f, Counter())
        n_drop = sum(drops.values())
        flows.append({"index": f, "name": trace.flow(f), "source": ends.get(f, (None,))[0],
                      "destination": ends.get(f, (None, None))[1], "offered": offered[f],
                      "delivered": delivered[f], "dropped": n_drop,
                      "dropped_by_reason": dict(sorted(drops.items())),
                      "in_flight_or_lost": offered[f] - delivered[f] - n_drop})
    link_records, link_last_s = 0, None
    if (trace.run_dir / LINKS_FILE).is_file():
        # A diff stream cannot be resynchronised: reading stops at damage, salvage or not.
        links = RecordReader(trace.run_dir / LINKS_FILE, check_link_record, mode="stop",
                             tail_ok=not m.get("complete"))
        for r in links:
            link_records += 1
            link_last_s = float(r["t_s"]) if link_last_s is None else max(link_last_s,
                                                                            float(r["t_s"]))
        damage += links.damage
    epoch_us = _epoch_us(m)

    def utc(wall: float | None) -> str | None:
        if wall is None:
            return None
        ms = round(epoch_us / 1000 + trace.t_s(wall) * 1000)
        return (_EPOCH0 + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    return {
        "run_dir": str(trace.run_dir), "format": m.get("format"), "version": m.get("version"),
        "run_id": m.get("run_id"), "scenario": m.get("scenario"), "epoch": m.get("epoch"),
        "speed": trace.speed, "duration_s": m.get("duration_s"), "tick_s": m.get("tick_s"),
        "seed": m.get("seed"), "complete": bool(m.get("complete")),
        "interrupted": m.get("interrupted"),
        "span": {"first_s": None if first is None else trace.t_s(first),
                 "last_s": None if last is None else trace.t_s(last),
                 "first_utc": utc(first), "last_utc": utc(last)},
        "nodes": {"count": len(trace.node_ids), "ids": trace.node_ids},
        "events": {e: events[e] for e in EVENT_TYPES if e != "packet" or events[e]},
        "streams": streams,
        "flows": flows,
        "links": {"records": link_records, "last_s": link_last_s},
        "faults": list(m.get("faults", [])),
        "replay": (trace.run_dir / "replay.msgpack").is_file(),
        "damage": [d.as_dict() for d in damage],
        "salvaged": salvage,
    }


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def format_info(info: dict[str, Any]) -> str:
    """``trace_info`` as the text ``orbitmesh trace info`` prints."""
    status = ("complete" + (" (interrupted)" if info["interrupted"] else "")
              if info["complete"] else "incomplete: in progress, or stopped before the end")
    if info["damage"]:
        status = damage_status(info)
    span, nodes, ev = info["span"], info["nodes"], info["events"]
    ids = nodes["ids"]
    shown = ", ".join(ids[:6]) + (f", ... {ids[-1]}" if len(ids) > 6 else "")
    out = [f"trace {info['run_dir']}: run {info['run_id']}, scenario {info['scenario']}, "
           f"{info['format']} {info['version']}" + (" (a replay)" if info["replay"] else ""),
           f"status: {status}",
           f"epoch {info['epoch']}, speed x{info['speed']:g}, duration {info['duration_s']:g} s, "
           f"tick {info['tick_s']:g} s, seed {info['seed']}",
           f"span: {_num(span['first_s'])} .. {_num(span['last_s'])} s scenario time "
           f"({span['first_utc'] or '-'} .. {span['last_utc'] or '-'})",
           f"nodes: {nodes['count']} ({shown})",
           "events: " + ", ".join(f"{ev[e]} {e}" for e in EVENT_TYPES if e in ev)
           + f" in {len(info['streams'])} stream(s)",
           f"links: {info['links']['records']} timeline record(s), last at "
           f"{_num(info['links']['last_s'], 'g')} s",
           f"{'flow':<22}{'offered':>9}{'deliv':>9}{'dropped':>9}{'other':>9}  drops"]
    for f in info["flows"]:
        drops = ", ".join(f"{k} {v}" for k, v in f["dropped_by_reason"].items()) or "-"
        out.append(f"{f['name']:<22}{f['offered']:>9}{f['delivered']:>9}{f['dropped']:>9}"
                   f"{f['in_flight_or_lost']:>9}  {drops}")
    out.append("(other = offered - delivered - dropped: in flight or held on board at the end, "
               "or lost with a killed process)")
    if not info["faults"]:
        out.append("faults: none" + ("" if info["complete"] else " recorded yet (the manifest "
                                     "lists faults when the run ends)"))
    for fault in info["faults"]:
        target = ", ".join(f"{k}={v}" for k, v in fault.get("target", {}).items())
        end = fault.get("end_s")
        out.append(f"fault {fault['id']} {fault['kind']} ({target}) {fault['start_s']:g}-"
                   f"{'end' if end is None else format(end, 'g')} s"
                   + (f" [{fault['origin']}]" if fault.get("origin") else ""))
    out += [f"damage: {Damage(**d).describe()}" for d in info["damage"]]
    return "\n".join(out)


def damage_status(info: dict[str, Any]) -> str:
    """The status line of a damaged trace: where, how much was read, what was skipped."""
    damage = info["damage"]
    first = damage[0]
    where = (f"{Path(first['file']).name} at byte {first['offset']} after "
             f"{first['records_before']} good record(s)")
    skipped = sum(d["skipped_b"] or 0 for d in damage)
    stopped = sum(d["skipped_b"] is None for d in damage)
    missing = sum(s["missing_events"] or 0 for s in info["streams"])
    tail = (f"salvaged: skipped {skipped} byte(s) in {len(damage) - stopped} place(s)"
            + (f", stopped at {stopped}" if stopped else "")
            + (f"; {missing} counted event(s) not recovered" if missing else "")
            if info["salvaged"] else "the counts below stop at the damage; --salvage reads past it")
    what = FULL_DISK if any(d["problem"].startswith(FULL_DISK) for d in damage) else "damaged"
    return f"{what} ({len(damage)} place(s); first: {where}); {tail}"


LINK_COLUMNS = ("t_s", "time", "event", "a", "b", "class", "delay_ms")
_LINK_CLASS_NAMES = ("isl", "gsl", "terrestrial")


def link_rows(run_dir: Path, *, salvage: bool = False,
              warnings: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The link timeline, one row per change (keys ``LINK_COLUMNS``), in file order.

    Read through :func:`read_link_timeline`, so damage raises TraceError (exit 2) and
    ``salvage`` stops at it; its warnings are appended to ``warnings``.
    """
    from orbitmesh.run.trace import read_link_timeline

    records, found = read_link_timeline(Path(run_dir), salvage=salvage)
    if warnings is not None:
        warnings.extend(found)
    try:
        epoch: datetime | None = datetime.fromisoformat(
            str(read_manifest(Path(run_dir))["epoch"]).replace("Z", "+00:00"))
    except (TraceError, KeyError, ValueError):
        epoch = None  # a bare timeline: scenario seconds only
    for rec in records:
        t_s = float(rec["t_s"])
        when = "" if epoch is None else (epoch + timedelta(seconds=t_s)).astimezone(
            UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        for event in ("up", "changed", "down"):
            for row in rec[event]:
                kind = int(row[2])
                yield {"t_s": t_s, "time": when, "event": event, "a": row[0], "b": row[1],
                       "class": _LINK_CLASS_NAMES[kind] if 0 <= kind < 3 else str(kind),
                       "delay_ms": round(float(row[3]) * 1000.0, 6) if event != "down" else None}


def export_links_csv(run_dir: Path, out: IO[str], *, salvage: bool = False,
                     warnings: list[str] | None = None) -> int:
    """Write the link timeline as CSV under a ``LINK_COLUMNS`` header; rows written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LINK_COLUMNS)
    n = 0
    for row in link_rows(run_dir, salvage=salvage, warnings=warnings):
        writer.writerow(["" if row[c] is None else _cell(row[c]) for c in LINK_COLUMNS])
        n += 1
    return n
