"""The ``endpoints`` section of summary.json: what real software sent and got, per node.

Frames of ``FLOW_ENDPOINT`` are counted like any flow (offered = delivered + dropped by reason +
in flight, in the conservation checks); per node, the workers' endpoint counters add how many
packets or datagrams each endpoint offered and was handed, and those refused before they became
frames (not IP, outside the prefix, before the clock started ...) with their reasons.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


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


def endpoint_section(stats: list[dict[str, Any]], frames: dict[str, Any]) -> dict[str, Any] | None:
    """The summary's ``endpoints`` block (None for a run without endpoints)."""
    nodes = endpoint_nodes(stats)
    if not nodes and not frames["offered"]:
        return None
    return {"frames": {k: frames[k] for k in ("offered", "delivered", "dropped", "in_flight",
                                               "suppressed_by_fault", "latency_ms")},
            "nodes": nodes}


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
    return lines
