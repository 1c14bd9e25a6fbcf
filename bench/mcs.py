"""The MCS bridge's figures on the demo: delivery to a UDP listener, order, added delay, TC RTT.

    .venv/bin/python bench/mcs.py [--duration 30] [--speed 2] [--tcs 10] [--cuts 0]
                                  [--live-cuts 0]

Runs scenarios/demo.yaml with darmstadt's ``mcs`` set (embedded mosquitto, two worker
processes, ``--fidelity-budget 1000``) while this process plays the mission control system
(tests/mcs_live.py): a UDP listener and a TCP reader for TM, telecommands sent over UDP and TCP.
Prints one JSON line:

* ``udp_ratio`` — TM datagrams received / TM packets that reached darmstadt (the bridge's count,
  checked against the trace's deliveries there); target ≥ 0.999;
* ``out_of_order`` — packets whose per-(APID, satellite) sequence count did not go up; target 0;
* ``added_wall_ms`` — a housekeeping packet's receipt at the listener (the kernel's receive
  time on the listener's socket, ``SO_TIMESTAMPNS``) minus its (emulated) delivery at darmstadt
  in the trace, wall ms (``added_scenario_ms_p99``: times the speed); target p99 ≤ 1 ms. When
  this process's reader thread got each datagram is ``added_read_by_mcs_thread_wall_ms``: that
  adds the stand-in MCS's own wake-up (on a busy machine, ms), which no bridge can remove;
* ``tc_rtt_mcs_minus_trace_ms`` — per acknowledged telecommand, the round trip the MCS measured
  (the TC's kernel transmit time to the ack's kernel receipt, scenario ms) minus the trace's
  pairing of the same command (the summary's TC RTT sample); target p99 |diff| ≤ 1 ms;
* ``udp_not_delivered_in_trace`` — housekeeping packets the listener received whose frame the
  trace does not deliver at darmstadt (with ``pacer.sent_then_dropped``); target 0. ``--cuts N``
  cuts darmstadt's terrestrial links N times (0.4 s each) so that frames are dropped in flight
  (``tm_dropped_by_fault``); the pacer must hold and never send those. Scheduled cuts take
  effect at tick boundaries (their state is known a tick ahead); ``--live-cuts N`` injects them
  with ``orbitmesh fault`` instead, in force when the workers receive them (the gate's case);
* ``pacer`` — the pacer's own counters: committed at the due time vs held for the worker's
  verdict, its send lateness (``late_ms``), how long the worker's gate was closed (``gate_ms``),
  and ``sched_fifo`` / ``sched_normal`` (whether it got real-time scheduling).

Run it alone on the machine (it measures sub-millisecond delays).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit

sys.path.insert(0, str(PROJECT_ROOT))
from tests.mcs_live import analyse, centre_cuts, mcs_session


def main() -> int:
    """Run once and print the figures."""
    p = argparse.ArgumentParser(prog="bench/mcs.py")
    p.add_argument("--duration", type=float, default=30.0, help="scenario seconds")
    p.add_argument("--speed", type=float, default=2.0)
    p.add_argument("--tcs", type=int, default=10, help="telecommands per link (UDP and TCP)")
    p.add_argument("--cuts", type=int, default=0,
                   help="cuts of darmstadt's terrestrial links (frames dropped in flight)")
    p.add_argument("--live-cuts", type=int, default=0, help="the same, injected live")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="orbitmesh-bench-mcs-") as tmp:
        record = mcs_session(Path(tmp) / "run", duration_s=args.duration, speed=args.speed,
                             tcs_per_link=args.tcs,
                             faults=centre_cuts(args.duration, args.cuts) if args.cuts else None,
                             live_cuts=args.live_cuts)
        figures = analyse(record, Path(tmp) / "run")
        summary = record.summary
    added = figures["added_wall_ms"]
    rtt = figures["tc_rtt_mcs_minus_trace_ms"]
    figures |= {
        "bench": "mcs", "duration_s": args.duration, "run_exit": record.returncode,
        "summary_tc_rtt_ms": summary.get("telecommands", {}).get("rtt_ms"), "cuts": args.cuts,
        "live_cuts": args.live_cuts,
        "conservation_ok": summary.get("conservation_ok"),
        "fidelity": {k: summary.get("fidelity", {}).get(k) for k in ("ok", "problems")},
        "load_average_1min": os.getloadavg()[0],
        "added_scenario_ms_p99": None if added["p99"] is None else added["p99"] * args.speed,
        "targets": {
            "udp_ratio_ge_0.999": (figures["udp_ratio"] or 0.0) >= 0.999,
            "in_order": figures["out_of_order"] == 0,
            "added_wall_ms_p99_le_1": added["p99"] is not None and added["p99"] <= 1.0,
            "tc_rtt_p99_within_1ms": rtt["p99_abs"] is not None and rtt["p99_abs"] <= 1.0,
            "nothing_sent_the_trace_dropped": figures["udp_not_delivered_in_trace"] == 0
            and not figures["pacer"].get("sent_then_dropped"),
        },
    }
    emit(figures)
    return 0 if all(figures["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
