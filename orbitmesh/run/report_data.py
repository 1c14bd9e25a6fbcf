"""What `orbitmesh report` plots, read from a run directory in one streaming pass.

The event streams are read once (:func:`orbitmesh.run.trace.iter_events`); only the few numbers
each figure needs are kept, in compact ``array`` buffers turned into numpy arrays at the end, so
a long run never holds per-frame Python objects. Times are scenario seconds after the epoch.

Arrays (all 1-D, one entry per event of that kind): ``deliver_*`` (t_s, flow, latency_ms,
late_ms, frame), ``offer_*`` (t_s, flow, frame), ``drop_*`` (t_s, flow, reason index into
``reasons``).
Link timeline arrays are one entry per recorded tick (``tick_t_s``, ``links_up`` per class,
``handovers``, ``route_changes``).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orbitmesh.core.topology import LINK_CLASSES
from orbitmesh.protocol.clock import RunClock
from orbitmesh.run.records import Damage
from orbitmesh.run.trace import BUILTIN_FLOWS, iter_events, read_link_timeline, read_manifest

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

TELEMETRY_FLOW, TELECOMMAND_FLOW, ACK_FLOW = -1, -2, -3


@dataclass
class RunData:
    """The per-event columns and per-tick link counts of one run (see the module docstring)."""

    run_dir: Path
    manifest: dict[str, Any]
    summary: dict[str, Any]
    flows: dict[int, str]
    reasons: list[str]
    deliver_t_s: FloatArray
    deliver_flow: IntArray
    deliver_latency_ms: FloatArray
    deliver_late_ms: FloatArray
    offer_t_s: FloatArray
    offer_flow: IntArray
    drop_t_s: FloatArray
    drop_flow: IntArray
    drop_reason: IntArray
    tick_t_s: FloatArray
    links_up: dict[str, IntArray]
    handovers: IntArray
    route_changes: IntArray
    faults: list[dict[str, Any]]
    tc_rtt_ms: FloatArray
    offer_frame: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    deliver_frame: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    """Frame ids (run-unique) of offers and deliveries, to tell which offers were delivered."""
    ack_frame: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    ack_of: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    """Acknowledgement frame ids and the telecommand frame each answers (when the trace says)."""
    warnings: list[str] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """The run's scenario duration (from the manifest)."""
        return float(self.manifest.get("duration_s") or 0.0)

    @property
    def user_flows(self) -> list[int]:
        """Indices of the scenario's traffic flows (not telemetry/telecommands/acks)."""
        return sorted(i for i in self.flows if i >= 0)


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _tc_rtts(run_dir: Path) -> FloatArray:
    """Telecommand round trips from the workers' final stats (the trace has no per-TC record)."""
    out: list[float] = []
    for path in sorted(run_dir.glob("stats-*.json")):
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        samples = (stats.get("telecommand_rtt_ms") or {}).get("samples") if isinstance(
            stats, dict) else None
        if isinstance(samples, list):
            out.extend(float(x) for x in samples if isinstance(x, int | float))
    return np.asarray(out, dtype=np.float64)


def read_run(run_dir: Path, *, salvage: bool = False,
             on_progress: Callable[[int], None] | None = None) -> RunData:
    """Read a run directory into :class:`RunData` (events streamed once; TraceError on damage).

    ``on_progress`` is called with the number of event-stream bytes read so far, now and then.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    clock = RunClock.of(manifest)
    flows = {int(k): str(v) for k, v in manifest.get("builtin_flows", {}).items()} or dict(
        BUILTIN_FLOWS)
    flows |= {int(f["index"]): str(f["name"]) for f in manifest["flows"]}
    d_t, d_lat, d_late, o_t, x_t = (array("d") for _ in range(5))
    d_flow, o_flow, x_flow, x_reason, d_id, o_id, a_id, a_tc = (array("q") for _ in range(8))
    reasons: dict[str, int] = {}
    damage: list[Damage] = []
    for count, r in enumerate(iter_events(run_dir, salvage=salvage, damage=damage), 1):
        tag = r[0]
        if tag == "hop":  # most records; no figure needs them
            pass
        elif tag == "deliver":
            d_t.append(r[1])
            d_id.append(r[2])
            d_flow.append(r[3])
            d_lat.append(r[6])
            d_late.append(r[7] if len(r) > 7 and isinstance(r[7], int | float) else np.nan)
        elif tag == "offer":
            o_t.append(r[1])
            o_id.append(r[2])
            o_flow.append(r[3])
            # An acknowledgement may name the telecommand it answers (a later trace field).
            if r[3] == ACK_FLOW and len(r) > 8 and type(r[8]) is int:
                a_id.append(r[2])
                a_tc.append(r[8])
        elif tag == "drop":
            x_t.append(r[1])
            x_flow.append(r[3])
            x_reason.append(reasons.setdefault(r[5], len(reasons)))
        if on_progress is not None and count % 65536 == 0:
            on_progress(count)

    def times(buf: array[float]) -> FloatArray:
        return clock.scenario_s(np.frombuffer(buf, dtype=np.float64)) if len(buf) \
            else np.empty(0)

    def ints(buf: array[int]) -> IntArray:
        return np.frombuffer(buf, dtype=np.int64).copy() if len(buf) else np.empty(0, np.int64)

    warnings: list[str] = []
    tick_t, up, handovers, changes = _link_counts(run_dir, salvage, warnings)
    summary = _read_summary(run_dir)
    faults = summary.get("faults") or manifest.get("faults") or []
    return RunData(run_dir, manifest, summary, flows, list(reasons),
                   times(d_t), ints(d_flow), np.frombuffer(d_lat, dtype=np.float64).copy()
                   if len(d_lat) else np.empty(0),
                   np.frombuffer(d_late, dtype=np.float64).copy() if len(d_late) else np.empty(0),
                   times(o_t), ints(o_flow), times(x_t), ints(x_flow), ints(x_reason),
                   tick_t, up, handovers, changes,
                   [f for f in faults if isinstance(f, dict) and "start_s" in f],
                   _tc_rtts(run_dir), ints(o_id), ints(d_id), ints(a_id), ints(a_tc),
                   warnings, damage)


def _link_counts(run_dir: Path, salvage: bool, warnings: list[str]
                 ) -> tuple[FloatArray, dict[str, IntArray], IntArray, IntArray]:
    """Per recorded tick: time, links up per class, handovers, route changes."""
    try:
        records, link_warnings = read_link_timeline(run_dir, salvage=salvage)
    except Exception as exc:  # no or damaged timeline: the link figure says so, others stand
        from orbitmesh.errors import OrbitmeshError

        if not isinstance(exc, OrbitmeshError):
            raise
        warnings.append(f"link timeline: {exc}")
        empty = np.empty(0, np.int64)
        return np.empty(0), {c: empty for c in LINK_CLASSES}, empty, empty
    warnings.extend(f"link timeline: {w}" for w in link_warnings)
    live = [0] * len(LINK_CLASSES)
    n = len(records)
    t = np.empty(n)
    up = np.empty((len(LINK_CLASSES), n), dtype=np.int64)
    handovers = np.empty(n, dtype=np.int64)
    changes = np.empty(n, dtype=np.int64)
    for i, rec in enumerate(records):
        for row in rec["up"]:
            live[row[2]] += 1
        for row in rec["down"]:
            live[row[2]] -= 1
        t[i] = float(rec["t_s"])
        up[:, i] = live
        handovers[i] = int(rec.get("handovers") or 0)
        changes[i] = int(rec.get("route_changes") or 0)
    return t, {c: up[k] for k, c in enumerate(LINK_CLASSES)}, handovers, changes


def time_bins(data: RunData) -> FloatArray:
    """Bin edges for rates over time: about 120 bins, never finer than a tick."""
    span = max(data.duration_s, 1e-9)
    width = max(float(data.manifest.get("tick_s") or 1.0), span / 120.0)
    return np.arange(0.0, span + width, width)


def delivered_by_offer_time(data: RunData, flow: int, edges: FloatArray
                            ) -> tuple[FloatArray, FloatArray]:
    """Per bin of offer time: frames of ``flow`` offered, and how many of those were delivered.

    Offers and deliveries are matched on the run-unique frame id, so a bin never delivers more
    than it offered (a frame still in flight at the end counts as not delivered).
    """
    mine = data.offer_flow == flow
    delivered = mine & np.isin(data.offer_frame, data.deliver_frame)
    return (np.histogram(data.offer_t_s[mine], edges)[0].astype(np.float64),
            np.histogram(data.offer_t_s[delivered], edges)[0].astype(np.float64))


def tc_round_trips(data: RunData) -> tuple[FloatArray, FloatArray]:
    """Per telecommand whose acknowledgement came back: (sent t_s, round trip in scenario ms).

    Needs acknowledgements that name their telecommand in the trace; empty otherwise.
    """
    empty = (np.empty(0), np.empty(0))
    if not len(data.ack_frame):
        return empty
    acks = data.deliver_flow == ACK_FLOW
    ack_ids, ack_back_s = data.deliver_frame[acks], data.deliver_t_s[acks]
    tcs = data.offer_flow == TELECOMMAND_FLOW
    tc_ids, tc_sent_s = data.offer_frame[tcs], data.offer_t_s[tcs]
    sent_s, back_s = _lookup(data.ack_of, tc_ids, tc_sent_s), _lookup(data.ack_frame, ack_ids,
                                                                       ack_back_s)
    ok = ~(np.isnan(sent_s) | np.isnan(back_s))
    order = np.argsort(sent_s[ok])
    return sent_s[ok][order], (back_s[ok] - sent_s[ok])[order] * 1000.0


def _lookup(keys: IntArray, ids: IntArray, values: FloatArray) -> FloatArray:
    """``values`` at ``ids == key`` for each key (NaN where absent), by sorted search."""
    if not len(ids):
        return np.full(len(keys), np.nan)
    order = np.argsort(ids)
    at = np.clip(np.searchsorted(ids[order], keys), 0, len(ids) - 1)
    found = ids[order][at] == keys
    return np.where(found, values[order][at], np.nan)
