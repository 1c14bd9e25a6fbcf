"""Traces: every run directory is a trace, readable while the run is still going.

Files (docs/traces.md is the reference):

* ``trace.json`` — the manifest: format name and version, run id, scenario, epoch, speed, t0
  (wall time of scenario time 0), node ids, flows, and at the end the faults and ``complete``;
* ``events-w<k>[-g<n>].msgpack`` — one stream per worker process of msgpack arrays: ``offer``,
  ``hop``, ``deliver``, ``drop`` records (see nodes/stats.py) stamped with wall time;
* ``links.msgpack`` — the link timeline written by the controller: one map per tick with the links
  that came up (``up``: ``[a, b, class, delay_s]`` with node ids), went down and changed delay;
* ``scenario.yaml`` — the scenario the run used.

Scenario time of a wall stamp is ``(wall - t0_wall) * speed``. Readers reject an unknown major
version with a clear message; a stream cut short (a killed worker, a run in progress) is read up
to its last whole record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from orbitmesh.core.links import LinkState, make_state
from orbitmesh.core.topology import Topology
from orbitmesh.errors import RunError

TRACE_FORMAT = "orbitmesh-trace"
TRACE_VERSION = "1.0"
MANIFEST = "trace.json"
REPLAY_FILE = "replay.msgpack"
"""In a replay run: the frames to offer, ``[t_s, flow, source, destination, size]`` records."""
BUILTIN_FLOWS = {-1: "telemetry", -2: "telecommands", -3: "acks"}


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write (or rewrite) the manifest atomically."""
    body = {"format": TRACE_FORMAT, "version": TRACE_VERSION, **manifest}
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(run_dir / MANIFEST)


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
    """Load ``trace.json`` of a run directory, checking format and version."""
    path = Path(run_dir) / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir}: not a trace (no {MANIFEST}); give a run directory written "
                       "by `orbitmesh run`") from None
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON: {exc}") from exc
    if manifest.get("format") != TRACE_FORMAT:
        raise RunError(f"{path}: format {manifest.get('format')!r}, expected {TRACE_FORMAT!r}")
    major = str(manifest.get("version", "0")).split(".")[0]
    if major != TRACE_VERSION.split(".", maxsplit=1)[0]:
        raise RunError(f"{path}: trace version {manifest.get('version')!r}; this orbitmesh reads "
                       f"{TRACE_VERSION.split('.', maxsplit=1)[0]}.x — upgrade orbitmesh")
    if manifest.get("t0_wall") is None:
        raise RunError(f"{path}: the run never started its clock; nothing to read")
    return manifest


def iter_records(path: Path) -> Iterator[Any]:
    """Records of one msgpack stream, up to the last whole one."""
    with path.open("rb") as fh:
        unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=False)
        try:
            yield from unpacker
        except (msgpack.UnpackException, ValueError):
            return


def iter_events(run_dir: Path) -> Iterator[Any]:
    """Frame events of every worker stream (each in time order, streams one after another)."""
    for path in sorted(Path(run_dir).glob("events-*.msgpack")):
        yield from iter_records(path)


@dataclass(frozen=True)
class Offered:
    """One frame of offered application traffic."""

    t_s: float
    flow: str
    source: str
    destination: str
    size: int
    kind: str = "data"


def offered_traffic(run_dir: Path) -> list[Offered]:
    """The user traffic a run offered, sorted by scenario time."""
    manifest = read_manifest(run_dir)
    t0, speed = float(manifest["t0_wall"]), float(manifest["speed"])
    ids = manifest["node_ids"]
    flows = {f["index"]: f["name"] for f in manifest["flows"]}
    out = [Offered((r[1] - t0) * speed, flows[r[3]], ids[r[5]], ids[r[6]], int(r[7]))
           for r in iter_events(run_dir) if r[0] == "offer" and r[3] in flows]
    out.sort(key=lambda o: o.t_s)
    return out


class LinkTimeline:
    """Replays a recorded link timeline as link states (instead of computing geometry)."""

    def __init__(self, run_dir: Path, topology: Topology) -> None:
        self.topology = topology
        index = topology.index
        records = list(iter_records(Path(run_dir) / "links.msgpack"))
        if not records:
            raise RunError(f"{run_dir}: links.msgpack holds no link timeline")
        missing = sorted({n for r in records for row in r["up"] for n in row[:2]
                          if n not in index})
        if missing:
            raise RunError(f"{run_dir}: the link timeline names nodes the scenario does not "
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
            self.last_handovers = int(r.get("handovers", 0))
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
    return [(float(t), str(f), str(s), str(d), int(n)) for t, f, s, d, n in iter_records(path)]
