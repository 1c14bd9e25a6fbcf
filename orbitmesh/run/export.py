"""A trace's frame events in time order, as rows for people and tools (``orbitmesh trace export``).

Frame events are merged from every worker stream into one scenario-time order. A stream is
almost, not exactly, in time order: a ``hop`` is stamped with its intended arrival, which is a
little earlier than the worker clock that stamps the events written around it. Each stream
therefore goes through a small reorder buffer (``REORDER_WINDOW_WALL_S`` of wall time) before
``heapq.merge`` joins the streams, so memory holds a few seconds of events, never the whole run.

Exports: one row per frame event (JSON Lines or CSV, columns ``EVENT_COLUMNS``) and the link
timeline as CSV. The pcap export is pcap_export.py, ``orbitmesh trace info`` is trace_info.py;
both read the trace through :class:`TraceView` and :func:`iter_sorted_events` from here.
"""

from __future__ import annotations

import csv
import heapq
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from orbitmesh.protocol.clock import RunClock
from orbitmesh.protocol.wire import ACK, DATA, KIND_NAMES, TELECOMMAND, TELEMETRY
from orbitmesh.run.records import Damage, TraceError
from orbitmesh.run.trace import EventStream, event_streams, read_manifest

REORDER_WINDOW_WALL_S = 5.0
"""How far (wall seconds) a record may trail a later-stamped one in its own stream."""
EVENT_TYPES = ("offer", "hop", "deliver", "drop", "packet")
EVENT_COLUMNS = ("t_s", "event", "frame", "flow", "kind", "source", "destination", "from", "to",
                 "node", "size", "hops", "latency_ms", "reason", "fault", "acknowledges")
_BUILTIN_KIND = {-1: TELEMETRY, -2: TELECOMMAND, -3: ACK}

EPOCH0 = datetime(1970, 1, 1, tzinfo=UTC)
"""Where the pcap and info timestamps count from."""


class TraceView:
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


def kind_of(flow: int) -> int:
    """The frame kind of a flow index (the built-in flows' negative indices, else data)."""
    return _BUILTIN_KIND.get(flow, DATA)


def is_event(record: list[Any]) -> bool:
    """A frame event (records are shape-checked when read; ``suppress`` names no frame)."""
    return record[0] in EVENT_TYPES


def _reordered(records: Iterable[Any], window_wall_s: float) -> Iterator[list[Any]]:
    """``records`` in wall-time order, given none trails a later one by more than the window."""
    heap: list[tuple[float, int, list[Any]]] = []
    for seq, record in enumerate(records):
        if not is_event(record):
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
    trace = TraceView(run_dir)
    streams = [EventStream(p, "salvage" if salvage else "raise") for p in trace.streams()]
    yield from heapq.merge(*(_reordered(s, REORDER_WINDOW_WALL_S) for s in streams),
                           key=lambda r: r[1])
    if damage is not None:
        damage.extend(d for s in streams for d in s.damage)


def _row(trace: TraceView, r: list[Any]) -> dict[str, Any]:
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
        row |= {"kind": KIND_NAMES[kind_of(flow)], "from": trace.node(r[4]),
                "to": trace.node(r[5]), "size": r[6]}
    elif event == "deliver":
        row |= {"kind": KIND_NAMES[kind_of(flow)], "node": trace.node(r[4]), "hops": r[5],
                "latency_ms": r[6]}
    else:
        row |= {"kind": KIND_NAMES[kind_of(flow)], "reason": r[5]}
        if r[4] is not None and r[4] >= 0:
            row["node"] = trace.node(r[4])
        if len(r) > 6 and r[6] is not None:
            row["fault"] = r[6]
    return row


def iter_event_rows(run_dir: Path, *, salvage: bool = False,
                    damage: list[Damage] | None = None) -> Iterator[dict[str, Any]]:
    """Every frame event as a row dict (keys from ``EVENT_COLUMNS``), sorted by ``t_s``."""
    trace = TraceView(run_dir)
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


def epoch_us_of(manifest: dict[str, Any]) -> int:
    """The manifest's scenario epoch in microseconds since 1970."""
    epoch = datetime.fromisoformat(str(manifest["epoch"]).replace("Z", "+00:00"))
    if epoch.tzinfo is None:
        epoch = epoch.replace(tzinfo=UTC)
    return (epoch - EPOCH0) // timedelta(microseconds=1)


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
