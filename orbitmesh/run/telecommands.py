"""Telecommands paired with their acknowledgements, from a run's frame events.

An acknowledgement's ``offer`` record ends with the id of the telecommand it answers
(nodes/stats.py, docs/traces.md), so a trace alone reproduces the summary's TC round trips:
each is (ack delivered at the ops centre - TC offered there) in scenario ms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orbitmesh.protocol.wire import ACK, TELECOMMAND
from orbitmesh.run.export import TraceView, iter_sorted_events
from orbitmesh.run.records import Damage


def telecommand_round_trips(run_dir: Path, *, salvage: bool = False,
                            damage: list[Damage] | None = None) -> list[dict[str, Any]]:
    """Every telecommand of a run paired with its acknowledgement, in order of sending.

    A row: ``telecommand`` (frame id), ``sent_t_s``, ``source``, ``satellite``, then
    ``delivered_t_s`` or ``dropped`` (reason), and ``ack`` (frame id), ``acked_t_s``,
    ``rtt_ms`` (scenario ms, sent to acknowledged: the summary's TC RTT samples) or
    ``ack_dropped``. Fields that do not apply are None.
    """
    trace = TraceView(run_dir)
    rows: dict[int, dict[str, Any]] = {}
    by_ack: dict[int, dict[str, Any]] = {}
    for r in iter_sorted_events(run_dir, salvage=salvage, damage=damage):
        event, frame = r[0], int(r[2])
        if event == "offer" and r[4] == TELECOMMAND:
            rows[frame] = {"telecommand": frame, "sent_t_s": trace.t_s(r[1]),
                           "source": trace.node(r[5]), "satellite": trace.node(r[6]),
                           "delivered_t_s": None, "dropped": None, "ack": None,
                           "acked_t_s": None, "rtt_ms": None, "ack_dropped": None, "_sent": r[1]}
        elif event == "offer" and r[4] == ACK and len(r) > 8 and r[8] in rows:
            row = rows[r[8]]
            row["ack"] = frame
            by_ack[frame] = row
        elif frame in rows and event in ("deliver", "drop"):
            if event == "deliver":
                rows[frame]["delivered_t_s"] = trace.t_s(r[1])
            else:
                rows[frame]["dropped"] = r[5]
        elif frame in by_ack and event in ("deliver", "drop"):
            row = by_ack.pop(frame)
            if event == "deliver":
                row["acked_t_s"] = trace.t_s(r[1])
                row["rtt_ms"] = (r[1] - row["_sent"]) * trace.speed * 1000.0
            else:
                row["ack_dropped"] = r[5]
    out = sorted(rows.values(), key=lambda row: row["sent_t_s"])
    for row in out:
        del row["_sent"]
    return out
