"""The ``endpoints`` section of summary.json: what real software sent and got, per node.

Frames of ``FLOW_ENDPOINT`` are counted like any flow (offered = delivered + dropped by reason +
in flight, in the conservation checks); per node, the workers' endpoint counters add how many
packets or datagrams each endpoint offered and was handed, and those refused before they became
frames (not IP, outside the prefix, before the clock started ...) with their reasons. Endpoint
containers (``endpoint-containers.json``, written by the launcher) add each one's state, and for
one that exited or failed to start, its exit code, time and logs' last lines.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

CONTAINERS_FILE = "endpoint-containers.json"


def endpoint_nodes(stats: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per endpoint node, summed over workers: offered, delivered, refused by reason."""
    nodes: dict[str, dict[str, Any]] = {}
    for w in stats:
        for node, c in (w.get("endpoints") or {}).items():
            entry = nodes.setdefault(node, {"offered": 0, "delivered": 0, "refused": Counter()})
            entry["offered"] += int(c.get("offered", 0))
            entry["delivered"] += int(c.get("delivered", 0))
            entry["refused"].update(c.get("refused", {}))
    return {n: {**e, "refused": dict(sorted(e["refused"].items()))}
            for n, e in sorted(nodes.items())}


def container_records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's endpoint containers as the launcher last recorded them (empty: none)."""
    path = run_dir / CONTAINERS_FILE
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # said in the summary rather than dropped
        return [{"node": "?", "container": "?", "state": "unreadable", "error": str(exc)}]
    return list(records) if isinstance(records, list) else []


def endpoint_section(stats: list[dict[str, Any]], frames: dict[str, Any],
                     containers: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The summary's ``endpoints`` block (None for a run without endpoints)."""
    nodes = endpoint_nodes(stats)
    if not nodes and not frames["offered"] and not containers:
        return None
    section: dict[str, Any] = {
        "frames": {k: frames[k] for k in ("offered", "delivered", "dropped", "in_flight",
                                          "suppressed_by_fault", "latency_ms")},
        "nodes": nodes}
    if containers:
        section["containers"] = containers
    return section


def endpoint_lines(section: dict[str, Any] | None) -> list[str]:
    """Lines of the printed summary for the endpoints block."""
    if not section:
        return []
    f = section["frames"]
    drops = ", ".join(f"{k} {v}" for k, v in f["dropped"].items()) or "-"
    lines = [f"endpoints: {f['offered']} packets offered, {f['delivered']} delivered, "
             f"p50 {f['latency_ms']['p50']} ms one-way; dropped {drops}"]
    for node, n in section["nodes"].items():
        refused = ", ".join(f"{k} {v}" for k, v in n["refused"].items())
        lines.append(f"  {node}: offered {n['offered']}, handed to the program "
                     f"{n['delivered']}" + (f"; refused {refused}" if refused else ""))
    for c in section.get("containers", []):
        if c["state"] == "running":
            lines.append(f"  container {c['container']} at {c['node']}: ran to the end")
            continue
        how = (f"failed to start: {c.get('error')}" if c["state"] == "failed"
               else f"{c['state']}, exit code {c.get('exit_code')}"
               + (f" at t={c['at_s']:g} s" if c.get("at_s") is not None
                  else " before the clock started"))
        lines.append(f"  CONTAINER {c['container']} at {c['node']} {how} "
                     f"(on_exit: {c.get('on_exit')})")
        lines += [f"    | {line}" for line in c.get("logs_tail", [])]
    return lines
