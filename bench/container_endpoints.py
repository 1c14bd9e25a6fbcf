"""Container endpoints on the demo: ping RTT between two containers against the model.

    .venv/bin/python bench/container_endpoints.py [--pings 50] [--image orbitmesh:latest]

Starts ``orbitmesh run scenarios/demo.yaml`` (local backend: workers as processes) with Tokyo and
Brussels as IP endpoints that each run a ``sleep infinity`` container of ``--image`` (the offline
image has ping), pings Brussels from Tokyo's container through ``docker exec`` and prints one
JSON line: RTTs (ping's own figures) against twice the one-way delay of the geometric path at
each echo's time plus serialisation, ``excess_ms`` = RTT - model (p50, p99, max), and the run's
fidelity verdict. Needs root, /dev/net/tun and a docker daemon; every container carries the
run's label and goes with the run. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit
from endpoints import DEMO, Model, _wait_for_clock, ping_part

from orbitmesh.core.scenario import load_scenario
from orbitmesh.run.launch import netns


def main() -> None:
    """Run the benchmark once and print its JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("--pings", type=int, default=50)
    p.add_argument("--image", default="orbitmesh:latest")
    args = p.parse_args()
    missing = netns.missing_privileges()
    if missing:
        emit({"bench": "endpoints", "part": "container_ping", "skipped": "; ".join(missing)})
        return
    duration = 10.0 + args.pings * 0.2
    spec = json.dumps({"image": args.image, "command": "sleep infinity"})
    with tempfile.TemporaryDirectory(prefix="om-bench-containers-") as tmp:
        scenario_path = Path(tmp) / "demo-containers.yaml"
        scenario_path.write_text(
            DEMO.read_text().replace("duration_s: 60", f"duration_s: {duration:g}")
            + f"\nendpoints:\n  ip:\n    - {{node: tokyo, container: {spec}}}\n"
            f"    - {{node: brussels, container: {spec}}}\n")
        scenario = load_scenario(scenario_path)
        model = Model(scenario_path, duration)
        run_dir = Path(tmp) / "run"
        proc = subprocess.Popen(
            [sys.executable, "-m", "orbitmesh", "run", str(scenario_path), "--out", str(run_dir),
             "--run-id", f"bench-ct-{os.getpid()}", "--quiet"],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        try:
            t0 = _wait_for_clock(run_dir, proc, 60.0)
            time.sleep(max(0.0, t0 + 1.0 - time.time()))
            plan = netns.read_plan(run_dir)
            assert plan is not None
            tokyo = next(e for e in plan["ip"] if e["node"] == "tokyo")["container"]["name"]
            record = ping_part(run_dir, t0, model, scenario, args.pings,
                               via=["docker", "exec", tokyo], part="container_ping")
            proc.communicate(timeout=duration + 60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=60)
        summary = json.loads((run_dir / "summary.json").read_text())
        record["backend"] = "local"
        record["fidelity_ok"] = summary["fidelity"]["ok"]
        record["hop_excess_ms"] = summary["fidelity"]["hop_excess_ms"]
        record["containers"] = [(c["node"], c["state"]) for c in
                                summary["endpoints"].get("containers", [])]
        emit(record)


if __name__ == "__main__":
    main()
