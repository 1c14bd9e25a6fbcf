"""Traces: every run directory is a trace, readable while the run is still going.

Files (docs/traces.md is the reference):

* ``trace.json`` — the manifest: format name and version, run id, scenario, epoch, speed, t0
  (wall time of scenario time 0), node ids, flows, and at the end the faults and ``complete``;
* ``events-w<k>[-g<n>].msgpack`` — one stream per worker process of msgpack arrays: ``offer``,
  ``hop``, ``deliver``, ``drop``, ``suppress`` records (see nodes/stats.py) stamped with wall time;
* ``links.msgpack`` — the link timeline written by the controller: one map per tick with the links
  that came up (``up``: ``[a, b, class, delay_s]`` with node ids), went down and changed delay;
* ``scenario.yaml`` — the scenario the run used.

Scenario time of a wall stamp is ``(wall - t0_wall) * speed``. Readers reject an unknown major
version with a clear message. Every record is checked as it is read (orbitmesh/run/records.py,
with the checks of orbitmesh/run/trace_records.py): damage raises :class:`TraceError` naming the
file and byte offset, unless the caller salvages.
A stream whose worker has not (or never) written its final stats may end in a partial record
(a run in progress, a killed worker): that tail is expected and is not damage. A stream whose
worker did finish must hold exactly the offers, deliveries, drops and suppressions its stats
counted, which also catches a cut at a record boundary.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orbitmesh.core.links import LinkState, make_state
from orbitmesh.core.topology import Topology
from orbitmesh.protocol.clock import RunClock
from orbitmesh.run.files import atomic_write
from orbitmesh.run.records import Damage, Mode, RecordReader, TraceError, salvage_hint
from orbitmesh.run.trace_records import (
    EVENT_SIGNATURES,
    check_event,
    check_link_record,
    check_replay_record,
)

__all__ = ["Damage", "TraceError"]

TRACE_FORMAT = "orbitmesh-trace"
TRACE_VERSION = "1.0"
MANIFEST = "trace.json"
LINKS_FILE = "links.msgpack"
REPLAY_FILE = "replay.msgpack"
"""In a replay run: the frames to offer, ``[t_s, flow, source, destination, size]`` records."""
BUILTIN_FLOWS = {-1: "telemetry", -2: "telecommands", -3: "acks"}

_NUM = (int, float)
COUNTED_EVENTS = ("offer", "deliver", "drop", "suppress")
"""Events a worker's stats also count (hops are not counted one by one)."""
FULL_DISK = "truncated by a full disk"
"""How the damage of an event log its worker stopped writing (stats: events_truncated_at)
begins: readers say so instead of calling the trace merely short."""


# -- manifest -----------------------------------------------------------------------------------

def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write (or rewrite) the manifest atomically."""
    body = {"format": TRACE_FORMAT, "version": TRACE_VERSION, **manifest}
    atomic_write(Path(run_dir) / MANIFEST, json.dumps(body, indent=2))


def manifest_for(topology: Topology, run_id: str, speed: float, duration_s: float
                 ) -> dict[str, Any]:
    """The manifest of a run that is about to start."""
    scenario = topology.scenario
    return {
        "run_id": run_id, "scenario": scenario.name, "scenario_file": "scenario.yaml",
        "epoch": scenario.epoch.isoformat().replace("+00:00", "Z"), "speed": speed,
        "duration_s": duration_s, "tick_s": scenario.tick_s, "seed": scenario.seed,
        "t0_wall": None, "node_ids": list(topology.node_ids),
        "flows": [{"index": i, "name": f.name, "source": f.source,
                   "destination": f.destination, "policy": f.policy}
                  for i, f in enumerate(scenario.traffic)],
        "builtin_flows": {str(k): v for k, v in BUILTIN_FLOWS.items()},
        "faults": [], "complete": False,
    }


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """Load ``trace.json`` of a run directory, checking format, version and field types."""
    path = Path(run_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise TraceError(f"{run_dir}: not a trace (no {MANIFEST}); give a run directory written "
                         "by `orbitmesh run`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise TraceError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != TRACE_FORMAT:
        raise TraceError(f"{path}: format {manifest.get('format')!r}, expected {TRACE_FORMAT!r}")
    major = str(manifest.get("version", "0")).split(".")[0]
    if major != TRACE_VERSION.split(".", maxsplit=1)[0]:
        raise TraceError(f"{path}: trace version {manifest.get('version')!r}; this orbitmesh "
                         f"reads {TRACE_VERSION.split('.', maxsplit=1)[0]}.x — upgrade orbitmesh")
    if manifest.get("t0_wall") is None:
        raise TraceError(f"{path}: the run never started its clock; nothing to read")
    problems = [f"{key}: expected {what}" for key, ok, what in (
        ("t0_wall", isinstance(manifest["t0_wall"], _NUM), "a number (Unix seconds)"),
        ("speed", isinstance(manifest.get("speed"), _NUM) and manifest["speed"] > 0,
         "a number > 0"),
        ("node_ids", isinstance(manifest.get("node_ids"), list)
         and all(isinstance(n, str) for n in manifest["node_ids"]), "a list of node ids"),
        ("flows", isinstance(manifest.get("flows"), list)
         and all(isinstance(f, dict) and isinstance(f.get("index"), int)
                 and isinstance(f.get("name"), str) for f in manifest["flows"]),
         "a list of {index, name, ...} objects"),
        ("faults", isinstance(manifest.get("faults", []), list), "a list")) if not ok]
    if problems:
        raise TraceError(f"{path}: " + "; ".join(problems))
    return manifest


# -- event streams ------------------------------------------------------------------------------

def _final_stats(stream: Path) -> dict[str, Any] | None:
    """The final stats of the worker that wrote ``events-<tag>.msgpack``, or None."""
    tag = stream.name.removeprefix("events-").removesuffix(".msgpack")
    try:
        stats = json.loads((stream.parent / f"stats-{tag}.json").read_text())
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) and stats.get("final") is True else None


def _counted(stats: dict[str, Any]) -> int:
    total = 0
    for flow in stats.get("flows", {}).values():
        total += int(flow.get("offered", 0)) + int(flow.get("delivered", 0))
        total += sum(flow.get("dropped", {}).values()) + sum(flow.get("suppressed", {}).values())
    return total


class EventStream:
    """The checked records of one worker's event stream (see the module docstring)."""

    def __init__(self, path: Path, mode: Mode = "raise") -> None:
        self.path = Path(path)
        self.stats = _final_stats(self.path)
        self.reader = RecordReader(self.path, check_event, mode=mode,
                                   tail_ok=self.stats is None or _cut(self.stats) is not None,
                                   signatures=EVENT_SIGNATURES)
        self.missing_events: int | None = None
        """Counted by the worker but not found in the stream (None: no final stats)."""

    @property
    def damage(self) -> list[Damage]:
        """Every damage met so far."""
        return self.reader.damage

    def __iter__(self) -> Iterator[list[Any]]:
        seen: Counter[str] = Counter()
        for record in self.reader:
            seen[record[0]] += 1
            yield record
        if self.stats is None or (self.damage and self.damage[-1].skipped_b is None):
            return
        counted = _counted(self.stats)
        found = sum(seen[e] for e in COUNTED_EVENTS)
        self.missing_events = counted - found
        if counted != found and not self.damage:
            reader = self.reader
            cut = _cut(self.stats)
            problem = (f"the stream holds {found} offer/deliver/drop/suppress records but "
                       f"its worker counted {counted} (stats-*.json): the file was cut "
                       "short at a record boundary, or records were lost") if cut is None else (
                f"{FULL_DISK} ({cut.get('error')}): its worker stopped writing events at byte "
                f"{cut.get('bytes')} and counted {counted - found} more offer/deliver/drop/"
                "suppress events than the stream holds (stats-*.json has them all)")
            damage = Damage(str(self.path), reader.end_offset, reader.records, problem, None)
            reader.damage.append(damage)
            if reader.mode == "raise":
                raise TraceError(salvage_hint(damage))


def _cut(stats: dict[str, Any]) -> dict[str, Any] | None:
    """Where the worker stopped writing its event log (a full disk), or None."""
    cut = stats.get("events_truncated_at")
    return cut if isinstance(cut, dict) else None


def event_streams(run_dir: Path) -> list[Path]:
    """The event stream files of a run, in name order."""
    return sorted(Path(run_dir).glob("events-*.msgpack"))


def iter_events(run_dir: Path, *, salvage: bool = False,
                damage: list[Damage] | None = None) -> Iterator[list[Any]]:
    """Frame events of every worker stream (each in time order, streams one after another).

    Damage raises TraceError; with ``salvage`` it is skipped and appended to ``damage``.
    """
    for path in event_streams(run_dir):
        stream = EventStream(path, "salvage" if salvage else "raise")
        yield from stream
        if damage is not None:
            damage.extend(stream.damage)


def iter_records(path: Path, *, tail_ok: bool = False) -> Iterator[Any]:
    """Records of one msgpack stream, decoded but not shape-checked; TraceError on damage."""
    yield from RecordReader(Path(path), mode="raise", tail_ok=tail_ok)


@dataclass(frozen=True)
class Offered:
    """One frame of offered application traffic."""

    t_s: float
    flow: str
    source: str
    destination: str
    size: int
    kind: str = "data"


def offered_traffic(run_dir: Path, *, salvage: bool = False,
                    damage: list[Damage] | None = None) -> list[Offered]:
    """The user traffic a run offered, sorted by scenario time."""
    manifest = read_manifest(run_dir)
    clock = RunClock.of(manifest)
    ids = manifest["node_ids"]
    flows = {f["index"]: f["name"] for f in manifest["flows"]}
    out = []
    for r in iter_events(run_dir, salvage=salvage, damage=damage):
        if r[0] != "offer" or r[3] not in flows:
            continue
        if not (0 <= r[5] < len(ids) and 0 <= r[6] < len(ids)):
            raise TraceError(f"{run_dir}: offer of frame {r[2]} names node {r[5]} -> {r[6]}, "
                             f"but the manifest has {len(ids)} nodes: the trace is damaged")
        out.append(Offered(clock.scenario_s(r[1]), flows[r[3]], ids[r[5]], ids[r[6]],
                           int(r[7])))
    out.sort(key=lambda o: o.t_s)
    return out


# -- link timeline ------------------------------------------------------------------------------

def read_link_timeline(run_dir: Path, *, salvage: bool = False
                       ) -> tuple[list[dict[str, Any]], list[str]]:
    """The checked records of ``links.msgpack`` and, with ``salvage``, warnings about damage.

    Each record is a diff against the one before, so salvage cannot skip over damage: it stops
    there, and the links in force at the last good record stay in force (said in a warning).
    A finished, uninterrupted run's timeline must reach its duration; a shorter one is damage.
    """
    run_dir = Path(run_dir)
    path = run_dir / LINKS_FILE
    if not path.is_file():
        raise TraceError(f"{run_dir}: no {LINKS_FILE}: this trace has no link timeline")
    reader = RecordReader(path, check_link_record, mode="stop" if salvage else "raise")
    records = list(reader)
    warnings = [f"{d.describe()}; the link timeline stops at t={_last_s(records)} s and the "
                "links in force then are kept to the end" for d in reader.damage]
    try:
        manifest: dict[str, Any] | None = read_manifest(run_dir)
    except TraceError:
        manifest = None  # a bare timeline (no manifest) cannot be checked for length
    if (not reader.damage and records and manifest is not None and manifest.get("complete")
            and not manifest.get("interrupted")):
        duration_s, tick_s = float(manifest["duration_s"]), float(manifest["tick_s"])
        last = max(float(r["t_s"]) for r in records)
        if last < duration_s - tick_s - 1e-9:
            damage = Damage(str(path), reader.end_offset, len(records),
                            f"the link timeline ends at t={last:g} s but the run lasted "
                            f"{duration_s:g} s (tick {tick_s:g} s): its last records are lost")
            if not salvage:
                raise TraceError(salvage_hint(damage))
            warnings.append(f"{damage.describe()}; the links in force at t={last:g} s are kept "
                            "to the end")
    if not records:
        raise TraceError(f"{path}: holds no whole link-timeline record"
                         + (f" ({reader.damage[0].describe()})" if reader.damage else ""))
    return records, warnings


def _last_s(records: list[dict[str, Any]]) -> str:
    return "-" if not records else format(float(records[-1]["t_s"]), "g")


class LinkTimeline:
    """Replays a recorded link timeline as link states (instead of computing geometry)."""

    def __init__(self, run_dir: Path, topology: Topology, *, salvage: bool = False) -> None:
        self.topology = topology
        index = topology.index
        records, self.warnings = read_link_timeline(Path(run_dir), salvage=salvage)
        missing = sorted({n for r in records for key in ("up", "changed", "down")
                          for row in r[key] for n in row[:2] if n not in index})
        if missing:
            raise TraceError(f"{run_dir}: the link timeline names nodes the scenario does not "
                             f"have: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        # File order, not time order: each record is a diff against the one written before it
        # (a live fault re-applies the tick in force, so a time can repeat out of order).
        self._records = records
        self.last_handovers = 0
        self._live: dict[tuple[int, int], tuple[int, float]] = {}
        self._next = 0

    def state_at(self, t_s: float) -> LinkState:
        """The recorded state in force at ``t_s`` (call with increasing times)."""
        index = self.topology.index
        while self._next < len(self._records) and self._records[self._next]["t_s"] <= t_s + 1e-9:
            r = self._records[self._next]
            for a, b, *_ in r["down"]:
                self._live.pop(_key(index[a], index[b]), None)
            for a, b, kind, delay in (*r["up"], *r["changed"]):
                self._live[_key(index[a], index[b])] = (int(kind), float(delay))
            handovers = r.get("handovers", 0)
            self.last_handovers = int(handovers) if isinstance(handovers, int) else 0
            self._next += 1
        keys = list(self._live)
        a = np.array([k[0] for k in keys], dtype=np.int64)
        b = np.array([k[1] for k in keys], dtype=np.int64)
        kind = np.array([self._live[k][0] for k in keys], dtype=np.int8)
        delay = np.array([self._live[k][1] for k in keys], dtype=np.float64)
        return make_state(t_s, self.topology.n_nodes, a, b, kind, delay)


def _key(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def read_replay(run_dir: Path) -> list[tuple[float, str, str, str, int]]:
    """The frames a replay run offers, in time order (empty for an ordinary run)."""
    path = Path(run_dir) / REPLAY_FILE
    if not path.is_file():
        return []
    # Written whole by the launcher before the workers start: any damage is fatal.
    return [(float(t), str(f), str(s), str(d), int(n)) for t, f, s, d, n in
            RecordReader(path, check_replay_record, mode="raise")]
