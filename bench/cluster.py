"""The demo on a 3-member NATS cluster beside mosquitto, and what a member's loss costs.

    .venv/bin/python bench/cluster.py [--duration 20] [--workers 2] [--members 3]
                                      [--kill-after 4] [--keep DIR]

Prints one JSON object per line:

* ``{"case": "mosquitto", ...}`` and ``{"case": "nats", ...}``: scenarios/demo.yaml for
  ``--duration`` scenario seconds on the embedded mosquitto (``--broker-insecure``, so both
  sides are open loopback brokers) and on the cluster (worker k on member k mod M).
  ``frame_hops_per_s`` is every frame-hop of the run per wall second of scenario time;
  ``hop_excess_ms`` the summary's fidelity figures (how late hops were handled, scenario ms);
  ``delivery_ratio`` delivered / offered over every flow.
* ``{"case": "member_loss:session-leader" | "member_loss:other", ...}``:
  tests/data/live/fibre.yaml (25 frames/s tokyo -> perth) on a fresh cluster, one worker per
  member (the controller on member 0); ``--kill-after`` wall seconds into the clock one member
  is killed with SIGKILL: the one leading the JetStream stream of MQTT sessions (a CONNECT
  needs it: the worst case), or another one (neither that leader nor member 0).
  ``delivery_stopped_s`` is the longest wall gap between two consecutive deliveries from the
  kill on, and ``normal_gap_s`` the longest before it; ``charged_to_event`` the frames the
  unplanned_broker_outage event was charged with (dropped + lost inside the member).
* ``{"case": "verdict", ...}``: the figures side by side and whether the ≤ 2 s target held.

Everything binds 127.0.0.1; the cluster's members are stopped by PID.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PROJECT_ROOT, emit, total_frame_hops
from broker.nats_cluster import NatsCluster
from orbitmesh.run.launch.local import RunOptions, run
from orbitmesh.run.report import load_worker_stats
from orbitmesh.run.trace import MANIFEST, iter_events

DEMO = PROJECT_ROOT / "scenarios" / "demo.yaml"
FIBRE = PROJECT_ROOT / "tests" / "data" / "live" / "fibre.yaml"
TARGET_STOP_S = 2.0


def _figures(case: str, summary: dict[str, Any], run_dir: Path, duration_s: float,
             speed: float) -> dict[str, Any]:
    hops = total_frame_hops(load_worker_stats(run_dir))
    flows = summary["flows"]
    offered = sum(f["offered"] for f in flows)
    delivered = sum(f["delivered"] for f in flows)
    return {"case": case, "broker": summary["run"]["broker"], "duration_s": duration_s,
            "frame_hops_total": hops, "frame_hops_per_s": round(hops * speed / duration_s),
            "hop_excess_ms": summary["fidelity"]["hop_excess_ms"],
            "delivery_ratio": round(delivered / offered, 4) if offered else None,
            "conservation_ok": summary["conservation_ok"],
            "unplanned": [e["id"] for e in summary.get("unplanned", [])]}


def demo_case(case: str, root: Path, duration_s: float, workers: int,
              members: list[str]) -> dict[str, Any]:
    """The demo on mosquitto (``members`` empty) or on the cluster."""
    opts = RunOptions(scenario=DEMO, duration_s=duration_s, workers=workers,
                      out=root / case, run_id=f"bench-cluster-{case}", progress=False,
                      broker=members[0] if members else "embedded",
                      broker_insecure=not members, broker_members=tuple(members))
    result = run(opts)
    return _figures(case, result.summary, result.run_dir, duration_s,
                    float(result.summary["run"]["speed"]))


def _killer(cluster: NatsCluster, run_dir: Path, after_s: float, victim: str,
            out: dict[str, Any]) -> None:
    """Kill a member ``after_s`` wall seconds after the run's clock started: the session
    stream's leader (``victim="session-leader"``), or a member other than it and member 0."""
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        path = run_dir / MANIFEST
        try:
            if path.is_file() and '"t0_wall": ' in path.read_text() and \
                    '"t0_wall": null' not in path.read_text():
                break
        except OSError:
            pass
        time.sleep(0.05)
    time.sleep(after_s)
    leader = cluster.stream_leader("$MQTT_sess")
    if victim == "session-leader" and leader is not None:
        index = leader
    else:
        index = next(i for i in range(1, cluster.size) if i != leader)
    out.update(victim=index, session_leader=leader, killed_wall=time.time())
    cluster.kill(index)


def member_loss_case(root: Path, cluster: NatsCluster, kill_after_s: float,
                     victim: str) -> dict[str, Any]:
    """fibre.yaml over the cluster (one worker per member), one member killed mid-run."""
    run_dir = root / f"member_loss-{victim}"
    killed: dict[str, Any] = {}
    thread = threading.Thread(target=_killer, args=(cluster, run_dir, kill_after_s, victim,
                                                    killed), name="killer", daemon=True)
    thread.start()
    opts = RunOptions(scenario=FIBRE, duration_s=kill_after_s + 10.0, workers=cluster.size,
                      out=run_dir, run_id=f"bench-cluster-loss-{victim}", progress=False,
                      broker=str(cluster.urls[0]),
                      broker_members=tuple(str(u) for u in cluster.urls))
    result = run(opts)
    thread.join(5.0)
    kill = killed["killed_wall"]
    walls = sorted(r[1] for r in iter_events(run_dir, salvage=True) if r[0] == "deliver")
    before = [b - a for a, b in pairwise(walls) if b < kill]
    after = [kill] + [w for w in walls if w >= kill]
    gaps_after = [b - a for a, b in pairwise(after)]
    summary = result.summary
    impact = [f for f in summary["faults"] if f.get("origin") == "unplanned"
              and f["kind"] == "broker_lost"]
    charged = sum(f["dropped"] + f.get("lost_in_process", 0) for f in impact)
    return {**_figures(f"member_loss:{victim}", summary, run_dir, opts.duration_s or 0.0,
                       float(summary["run"]["speed"])),
            "killed_after_s": kill_after_s, "victim_member": killed["victim"],
            "session_stream_leader": killed["session_leader"],
            "controller_member_killed": killed["victim"] == 0,
            "delivery_stopped_s": round(max(gaps_after, default=float("nan")), 3),
            "normal_gap_s": round(max(before, default=float("nan")), 3),
            "charged_to_event": charged,
            "event": [f.get("describe") for f in impact]}


def main(argv: list[str] | None = None) -> int:
    """Run the three cases and print their JSON lines."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0, help="demo scenario seconds")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--members", type=int, default=3, help="cluster members")
    p.add_argument("--kill-after", type=float, default=4.0, help="wall s into the clock")
    p.add_argument("--keep", help="keep the runs in this directory")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orbitmesh-bench-cluster-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        mosq = demo_case("mosquitto", root, args.duration, args.workers, [])
        emit(mosq)
        with NatsCluster(root / "nats", args.members) as cluster:
            nats = demo_case("nats", root, args.duration, args.workers,
                             [str(u) for u in cluster.urls])
            emit(nats)
        losses = {}
        for victim in ("session-leader", "other"):
            with NatsCluster(root / f"nats-loss-{victim}", args.members) as cluster:
                losses[victim] = member_loss_case(root, cluster, args.kill_after, victim)
                emit(losses[victim])
    emit({"case": "verdict",
          "frame_hops_per_s": {"mosquitto": mosq["frame_hops_per_s"],
                               "nats": nats["frame_hops_per_s"]},
          "hop_excess_p99_ms": {"mosquitto": mosq["hop_excess_ms"].get("p99"),
                                "nats": nats["hop_excess_ms"].get("p99")},
          "delivery_stopped_s": {k: v["delivery_stopped_s"] for k, v in losses.items()},
          "charged_to_event": {k: v["charged_to_event"] for k, v in losses.items()},
          "target_stop_s": TARGET_STOP_S,
          "stop_ok": all(v["delivery_stopped_s"] <= TARGET_STOP_S for v in losses.values()),
          "conservation_ok": all(v["conservation_ok"] for v in losses.values())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
