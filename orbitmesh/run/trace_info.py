"""``orbitmesh trace info``: what a trace holds (counts per event, flow and drop reason, span,
links, faults, damage), as a dict and as the printed text."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from orbitmesh.run.export import EPOCH0, EVENT_TYPES, TraceView, epoch_us_of, is_event
from orbitmesh.run.records import Damage, RecordReader
from orbitmesh.run.trace import FULL_DISK, LINKS_FILE, EventStream
from orbitmesh.run.trace_records import check_link_record


def trace_info(run_dir: Path, *, salvage: bool = False) -> dict[str, Any]:
    """What a trace holds, from its manifest and events (works while the run is in progress).

    Damage does not raise: it is listed under ``damage`` (reading stops at it, or with
    ``salvage`` skips past it) and the trace's status is "damaged".
    """
    trace = TraceView(run_dir)
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
            if not is_event(r):
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
    epoch_us = epoch_us_of(m)

    def utc(wall: float | None) -> str | None:
        if wall is None:
            return None
        ms = round(epoch_us / 1000 + trace.t_s(wall) * 1000)
        return (EPOCH0 + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

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
