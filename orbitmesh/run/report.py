"""Turn the workers' stats files into ``summary.json`` and a printed table.

summary.json is versioned (``version``); readers reject other major versions. The conservation
check holds when, for every flow, offered = delivered + dropped (with a reason) + in flight at the
end (on a link or in an on-board store). A frame lost without a reason breaks it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from orbitmesh.core.destinations import UNROUTED_DESTINATION
from orbitmesh.core.faults import PROCESS_KINDS
from orbitmesh.core.histogram import Histogram, merged
from orbitmesh.core.scenario import Scenario
from orbitmesh.errors import RunError
from orbitmesh.protocol.clock import RunClock
from orbitmesh.protocol.wire import FLOW_ACK, FLOW_ENDPOINT, FLOW_TELECOMMAND, FLOW_TELEMETRY
from orbitmesh.run.endpoint_report import container_records, endpoint_lines, endpoint_section
from orbitmesh.run.fidelity import verdict, verdict_line
from orbitmesh.run.files import atomic_write
from orbitmesh.run.trace import Damage, iter_events

SUMMARY_VERSION = "1.1"
EDGE_WALL_S = 1e-6


def percentiles(samples: list[float],
                qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": ..}`` rounded to µs; None when there are no samples."""
    if not samples:
        return {f"p{q}": None for q in qs}
    values = np.percentile(np.asarray(samples, dtype=np.float64), qs)
    return {f"p{q}": round(float(v), 3) for q, v in zip(qs, values, strict=True)}


def load_worker_stats(run_dir: Path) -> list[dict[str, Any]]:
    """Every ``stats-w*.json`` of a run."""
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("stats-w*.json"))]


def _histogram(w: dict[str, Any], key: str) -> Histogram:
    return Histogram.from_dict(w.get(key) or [])


def _merge_flow(stats: list[dict[str, Any]], flow: int) -> dict[str, Any]:
    key = str(flow)
    offered = delivered = hops = remote_out = remote_in = in_flight = 0
    dropped: Counter[str] = Counter()
    suppressed: Counter[str] = Counter()
    latency, late, geometric = Histogram(), Histogram(), Histogram()
    for w in stats:
        f = w["flows"].get(key)
        in_flight += int(w.get("in_flight", {}).get(key, 0))
        if f is None:
            continue
        offered += f["offered"]
        delivered += f["delivered"]
        hops += f["hops"]
        dropped.update(f["dropped"])
        suppressed.update(f.get("suppressed", {}))
        latency.merge(_histogram(f, "latency_ms"))
        late.merge(_histogram(f, "late_ms"))
        geometric.merge(_histogram(f, "geometric_ms"))
        remote_out += f["remote_out"]
        remote_in += f["remote_in"]
    lost = offered - delivered - sum(dropped.values()) - in_flight
    intended = offered + sum(suppressed.values())
    return {"offered": offered, "delivered": delivered, "dropped": dict(sorted(dropped.items())),
            "in_flight": in_flight, "unexplained": lost,
            "suppressed_by_fault": dict(sorted(suppressed.items())), "intended": intended,
            "delivery_ratio": round(delivered / offered, 6) if offered else None,
            "delivery_ratio_intended": round(delivered / intended, 6) if intended else None,
            "latency_ms": _pcts(latency, (50, 95, 99)),
            "excess_ms": _without_count(late.summary((50, 99))),
            "geometric_one_way_ms": _without_count(geometric.summary((50, 99))),
            "mean_hops": round(hops / delivered, 3) if delivered else None,
            "crossed_workers": remote_in}


def _pcts(h: Histogram, qs: tuple[int, ...]) -> dict[str, float | None]:
    return {f"p{q}": None if v is None else round(v, 3)
            for q, v in zip(qs, h.percentiles(qs), strict=True)}


def _without_count(summary: dict[str, Any]) -> dict[str, Any]:
    """A histogram summary without its sample count (kept for the fidelity block)."""
    return {k: v for k, v in summary.items() if k != "samples"}


def build_summary(run_dir: Path, scenario: Scenario, run_meta: dict[str, Any],
                  links: dict[str, Any], workers_expected: int,
                  faults: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Merge the workers' stats of ``run_dir`` into the summary document."""
    stats = load_worker_stats(run_dir)
    faults = faults or []
    damage: list[Damage] = []
    final_workers = {w["worker"] for w in stats if w.get("final", True)}
    missing = workers_expected - len(final_workers)
    process_faults = [f for f in faults if (f["kind"] in PROCESS_KINDS or f.get("origin")
                                            == "unplanned") and "error" not in f]
    unplanned = [f for f in faults if f.get("origin") == "unplanned"]
    flows = []
    conservation = []
    for i, flow in enumerate(scenario.traffic):
        m = _merge_flow(stats, i)
        flows.append({"name": flow.name, "source": flow.source, "destination": flow.destination,
                      "policy": flow.policy, **m})
        conservation.append((flow.name, m))
    tm = _merge_flow(stats, FLOW_TELEMETRY)
    tc = _merge_flow(stats, FLOW_TELECOMMAND)
    ack = _merge_flow(stats, FLOW_ACK)
    conservation += [("telemetry", tm), ("telecommands", tc), ("acks", ack)]
    endpoints = endpoint_section(stats, ep := _merge_flow(stats, FLOW_ENDPOINT),
                                 container_records(run_dir))
    if endpoints is not None:
        conservation.append(("endpoints", ep))
    ages = merged(_histogram(w, "telemetry_age_ms") for w in stats)
    rtts = merged(_histogram(w, "telecommand_rtt_ms") for w in stats)
    hop_late = merged(_histogram(w, "hop_late_ms") for w in stats)
    apply_late = merged(_histogram(w, "link_apply_late_ms") for w in stats)
    speed = float(run_meta["speed"])
    fidelity = verdict(scenario.fidelity, hop_late, apply_late,
                       [float(w.get("start_late_ms", 0.0)) for w in stats], speed=speed)
    # A killed worker's counts are its last snapshot, and frames inside a killed worker or a
    # stopped broker vanish with it: with such faults the remainder is attributed to them.
    checks = []
    for name, m in conservation:
        lost = m["unexplained"] if process_faults else 0
        checks.append({"flow": name, "offered": m["offered"], "delivered": m["delivered"],
                       "dropped": sum(m["dropped"].values()), "in_flight": m["in_flight"],
                       "lost_to_process_faults": lost, "unexplained": m["unexplained"] - lost,
                       "ok": m["unexplained"] - lost == 0})
    # A worker lost to a process fault (planned or not) writes no final stats: its last snapshot
    # stands, and the frames it held are charged to that fault above.
    ok = all(c["ok"] for c in checks) and (missing == 0 or bool(process_faults))
    malformed_by_topic: Counter[str] = Counter()
    for w in stats:
        malformed_by_topic.update(w.get("malformed_by_topic", {}))
    return {
        "version": SUMMARY_VERSION,
        "run": {**run_meta, "workers_reported": len(stats)},
        "flows": flows,
        "telemetry": {"generated": tm["offered"], "delivered": tm["delivered"],
                      "dropped": tm["dropped"], "in_flight": tm["in_flight"],
                      "suppressed_by_fault": tm["suppressed_by_fault"],
                      "age_ms": _pcts(ages, (50, 99)),
                      "max_backlog": max((w["max_backlog"] for w in stats), default=0),
                      "held_on_board_at_end": sum(w.get("held_on_board", 0) for w in stats)},
        "telecommands": {"sent": sum(w["telecommands_sent"] for w in stats),
                         "acked": sum(w["telecommands_acked"] for w in stats),
                         "dropped": tc["dropped"], "ack_dropped": ack["dropped"],
                         "suppressed_by_fault": tc["suppressed_by_fault"],
                         "rtt_ms": _pcts(rtts, (50, 99))},
        "links": {**links, "apply_late_ms": _pcts(apply_late, (50, 99))},
        "fidelity": fidelity,
        "malformed": sum(w["malformed"] for w in stats),
        "malformed_by_topic": dict(sorted(malformed_by_topic.items())),
        "internal_errors": sum(w.get("internal_errors", 0) for w in stats),
        # Frames to a ground node the run routed no tree toward (core/destinations.py), any flow.
        UNROUTED_DESTINATION: sum(f["dropped"].get(UNROUTED_DESTINATION, 0)
                                  for w in stats for f in w["flows"].values()),
        # Workers whose shutdown drain gave up before every end marker came (nodes/drain.py).
        "drains_given_up": [{"worker": w.get("worker"), **w["drain"]} for w in stats
                            if w.get("drain", {}).get("timed_out")],
        "faults": fault_impact(run_dir, scenario, faults, stats, run_meta, checks, damage),
        # Filled by fault_impact above (dict items evaluate in order): where events were damaged.
        "trace_damage": [d.as_dict() for d in damage],
        "endpoints": endpoints,
        "conservation": checks,
        "conservation_ok": ok,
        "unplanned": unplanned,
    }


def _read_events(run_dir: Path, damage: list[Damage] | None = None
                 ) -> tuple[dict[int, tuple[float, int]], dict[int, tuple[float, float]]]:
    """Offer (wall time, flow) and delivery (wall time, latency ms) of every frame.

    Damaged events are skipped and listed in ``damage``: a report is still wanted.
    """
    offers: dict[int, tuple[float, int]] = {}
    delivered: dict[int, tuple[float, float]] = {}
    for record in iter_events(run_dir, salvage=True, damage=damage):
        if record[0] == "offer":
            offers[record[2]] = (record[1], record[3])
        elif record[0] == "deliver":
            delivered[record[2]] = (record[1], record[6])
    return offers, delivered


def fault_impact(run_dir: Path, scenario: Scenario, faults: list[dict[str, Any]],
                 stats: list[dict[str, Any]], run_meta: dict[str, Any],
                 checks: list[dict[str, Any]], damage: list[Damage] | None = None
                 ) -> list[dict[str, Any]]:
    """Every fault with its impact: drops it caused, flows hit, delivery during vs outside."""
    if not faults:
        return []
    names = {str(i): f.name for i, f in enumerate(scenario.traffic)}
    names |= {str(FLOW_TELEMETRY): "telemetry", str(FLOW_TELECOMMAND): "telecommands",
              str(FLOW_ACK): "acks"}
    offers, delivered = _read_events(run_dir, damage)
    clock = RunClock.of(run_meta)
    duration = float(run_meta["duration_s"])
    out = []
    for fault in faults:
        drops: Counter[str] = Counter()
        suppressed: Counter[str] = Counter()
        for w in stats:
            for flow, count in w.get("fault_drops", {}).get(fault["id"], {}).items():
                drops[names.get(flow, flow)] += count
            for flow, count in w.get("fault_suppressed", {}).get(fault["id"], {}).items():
                suppressed[names.get(flow, flow)] += count
        start = clock.wall_at(fault["start_s"])
        end_s = fault["end_s"] if fault["end_s"] is not None else duration
        end = clock.wall_at(min(duration, end_s))
        windows: dict[str, dict[str, list[Any]]] = {"during": {}, "outside": {}}
        held = 0
        for frame_id, (wall, flow) in offers.items():
            if flow < 0 and flow != FLOW_TELEMETRY:
                continue
            # Compared with a microsecond's slack: a frame offered at the very instant a fault
            # starts is offered during it, whatever the float rounding of wall times did.
            key = "during" if start - EDGE_WALL_S <= wall < end - EDGE_WALL_S else "outside"
            outcome = delivered.get(frame_id)
            windows[key].setdefault(names.get(str(flow), str(flow)), []).append(
                None if outcome is None else outcome[1])
            if flow == FLOW_TELEMETRY and key == "during" and outcome is not None \
                    and outcome[0] >= end:
                held += 1
        impact = {}
        for key, per_flow in windows.items():
            impact[key] = {
                flow: {"offered": len(v),
                       "delivery_ratio": round(sum(x is not None for x in v) / len(v), 4),
                       "latency_ms": percentiles([x for x in v if x is not None], (50, 99))}
                for flow, v in sorted(per_flow.items()) if v}
        entry = {**fault, "dropped": sum(drops.values()), "dropped_by_flow": dict(drops),
                 "suppressed": sum(suppressed.values()), "suppressed_by_flow": dict(suppressed),
                 "flows_affected": sorted(set(drops) | set(suppressed)),
                 "telemetry_held_on_board": held, **impact}
        if fault["kind"] in PROCESS_KINDS or fault.get("origin") == "unplanned":
            entry["lost_in_process"] = sum(c["lost_to_process_faults"] for c in checks)
        out.append(entry)
    return out


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """Write summary.json atomically."""
    return atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))


def read_summary(path: Path) -> dict[str, Any]:
    """Load a summary.json, rejecting unknown major versions."""
    summary: dict[str, Any] = json.loads(path.read_text())
    major = str(summary.get("version", "0")).split(".")[0]
    if major != SUMMARY_VERSION.split(".", maxsplit=1)[0]:
        raise RunError(f"{path}: summary version {summary.get('version')!r}; this orbitmesh reads "
                       f"{SUMMARY_VERSION.split('.', maxsplit=1)[0]}.x — upgrade orbitmesh")
    return summary


def _fmt(value: Any) -> str:
    """A table cell: never scientific notation (``11760``, not ``1.176e+04``)."""
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    # .4g keeps 4 significant digits and stays positional from 0.001 up to 9999.5
    return f"{value:.4g}" if abs(value) >= 0.001 else f"{value:.6f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The table printed at the end of a run."""
    out = []
    run = summary["run"]
    out.append(f"run {run['id']}: scenario {run['scenario']}, {run['duration_s']:g} s at "
               f"x{run['speed']:g}, {run['workers']} workers, broker {run['broker']}")
    out.append(f"{'flow':<22}{'offered':>9}{'deliv':>9}{'ratio':>8}{'p50 ms':>9}{'p95 ms':>9}"
               f"{'p99 ms':>9}{'hops':>6}  dropped")
    rows = [(f["name"], f) for f in summary["flows"]]
    tm = summary["telemetry"]
    for name, f in rows:
        lat = f["latency_ms"]
        drops = ", ".join(f"{k} {v}" for k, v in f["dropped"].items()) or "-"
        out.append(f"{name:<22}{f['offered']:>9}{f['delivered']:>9}{_fmt(f['delivery_ratio']):>8}"
                   f"{_fmt(lat['p50']):>9}{_fmt(lat['p95']):>9}{_fmt(lat['p99']):>9}"
                   f"{_fmt(f['mean_hops']):>6}  {drops}")
    tm_drops = ", ".join(f"{k} {v}" for k, v in tm["dropped"].items()) or "-"
    out.append(f"{'telemetry':<22}{tm['generated']:>9}{tm['delivered']:>9}{'':>8}"
               f"{_fmt(tm['age_ms']['p50']):>9}{'':>9}{_fmt(tm['age_ms']['p99']):>9}{'':>6}  "
               f"{tm_drops}; max on-board backlog {tm['max_backlog']}")
    tc = summary["telecommands"]
    out.append(f"{'telecommands':<22}{tc['sent']:>9}{tc['acked']:>9}{'':>8}"
               f"{_fmt(tc['rtt_ms']['p50']):>9}{'':>9}{_fmt(tc['rtt_ms']['p99']):>9}  (RTT)")
    links = summary["links"]
    out.append(f"links: {links['handovers']} handovers, {links['route_changes']} route changes, "
               f"{links['ticks']} ticks (compute p50 {_fmt(links['tick_compute_ms']['p50'])} ms); "
               f"applied late p99 {_fmt(links['apply_late_ms']['p99'])} ms")
    for f in summary["flows"]:
        if f["suppressed_by_fault"]:
            by_fault = ", ".join(f"{k} {v}" for k, v in f["suppressed_by_fault"].items())
            out.append(f"{f['name']}: {sum(f['suppressed_by_fault'].values())} frames not offered "
                       f"(source down: {by_fault}); delivered "
                       f"{_fmt(f['delivery_ratio_intended'])} of intended")
    for f in summary.get("faults", []):
        during = ", ".join(f"{k} {v['delivery_ratio']:.0%}" for k, v in f.get("during", {}).items())
        out.append(f"fault {f['id']} {f['kind']} ({f['origin']}) {f['start_s']:g}-"
                   f"{_fmt(f['end_s'])} s: dropped {f['dropped']}"
                   + (f"; delivery during: {during}" if during else "")
                   + (f"; suppressed {f['suppressed']}" if f.get("suppressed") else "")
                   + (f"; error: {f['error']}" if "error" in f else ""))
    out += endpoint_lines(summary.get("endpoints"))
    if summary["malformed"]:
        out.append(f"malformed payloads ignored: {summary['malformed']}")
    for d in summary.get("trace_damage", []):
        out.append(f"TRACE DAMAGED (fault impact counts skip it): {Damage(**d).describe()}")
    for e in summary["run"].get("write_errors", []):
        out.append(f"WRITE FAILED: {e}")
    if summary["conservation_ok"]:
        out.append("conservation: ok (offered = delivered + dropped + in flight, every flow)")
    else:
        bad = [c for c in summary["conservation"] if not c["ok"]]
        out.append("CONSERVATION BROKEN: frames vanished without a reason: " + ", ".join(
            f"{c['flow']} ({c['unexplained']} unexplained)" for c in bad)
            + ("" if run["workers_reported"] == run["workers"] else
               f"; only {run['workers_reported']} of {run['workers']} workers reported"))
    for d in summary.get("drains_given_up", []):
        out.append(f"DRAIN GAVE UP: worker {d['worker']} ({d['gave_up']}) after {d['waited_s']} s "
                   f"with no end marker from worker(s) {d['missing_end_markers']}: frames sent "
                   "to it after that are uncounted")
    if summary.get(UNROUTED_DESTINATION):
        out.append(f"UNROUTED DESTINATIONS: {summary[UNROUTED_DESTINATION]} frames went to ground "
                   "nodes the run routed no tree toward (dropped as unrouted_destination; see "
                   "orbitmesh/core/destinations.py)")
    if summary.get("internal_errors"):
        out.append(f"INTERNAL ERRORS: {summary['internal_errors']} (survived; tracebacks in the "
                   "worker logs) — please report them")
    for event in summary.get("unplanned", []):
        out.append(f"UNPLANNED: {event.get('describe') or event['id']} — its nodes were routed "
                   "around; what it held is counted as lost to it")
    out.append(verdict_line(summary["fidelity"]))
    return "\n".join(out)
