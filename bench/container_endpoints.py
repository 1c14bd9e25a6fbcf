"""Container endpoints on the demo: RTT between two containers against the model.

    .venv/bin/python bench/container_endpoints.py [--backend local|docker] [--pings 50]
        [--image orbitmesh:latest] [--nodes-per-container N]

Runs scenarios/demo.yaml with Tokyo and Brussels as IP endpoints that each run a ``sleep
infinity`` container of ``--image`` (the offline image has ping and python3): ``--backend
local`` is ``orbitmesh run`` (workers as processes on this host), ``--backend docker`` is
``orbitmesh up --backend docker`` (workers as containers too). Two probes go from Tokyo's
container to Brussels' through ``docker exec``, one after the other:

* ``ping -4`` (``--pings`` echoes at 0.2 s): ping prints whole ms above 100 ms, so its figures
  are good to 1 ms only;
* a UDP echo (as many probes at 0.2 s): a python3 server in Brussels' container sends each
  datagram back, a python3 client in Tokyo's times each round trip with
  ``time.perf_counter_ns`` (µs resolution and better).

Each round trip is compared with twice the one-way delay of the geometric path at its send time
plus both directions' serialisation of the packet; one JSON line: RTTs, ``excess_ms`` = RTT -
model (p50, p99, max) per probe, and the run's fidelity verdict. Needs root, /dev/net/tun and a
docker daemon; every container carries the run's label and goes with the run. Run it alone on
the machine.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit
from endpoints import DEMO, Model, _pcts, _wait_for_clock, ping_part

from orbitmesh.core.scenario import load_scenario
from orbitmesh.run.launch import netns

GAP_S = 0.2
PROBE_PAYLOAD_BYTES = 32
PROBE_IP_BYTES = 20 + 8 + PROBE_PAYLOAD_BYTES
"""A UDP probe as it crosses the links: IPv4 and UDP headers and its payload."""
PROBE_PORT = 7777
PROBE_TIMEOUT_S = 1.0
START_TIMEOUT_S = {"local": 60.0, "docker": 180.0}
"""Until the run's clock starts (nine worker containers take long to start on two cores)."""

ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
ECHO_CLIENT = """
import json, socket, sys, time
host, port, count, gap, size, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0][4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(wait)
start = time.perf_counter()
for seq in range(count):
    delay = start + seq * gap - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    msg = seq.to_bytes(4, "big") + bytes(size - 4)
    wall, sent = time.time(), time.perf_counter_ns()
    s.sendto(msg, addr)
    rtt = None
    try:
        while rtt is None:
            data, _ = s.recvfrom(2048)
            if data[:4] == msg[:4]:  # a late echo of an earlier probe is not this one's
                rtt = time.perf_counter_ns() - sent
    except TimeoutError:
        pass
    print(json.dumps({"seq": seq, "wall": wall, "rtt_ns": rtt}), flush=True)
"""


def serial_ms(scenario: Any, size_bytes: int, hops: int) -> float:
    """Both directions' serialisation of ``size_bytes`` over the demo's path (GSL at each end,
    ISLs between), ms."""
    gsl, isl = scenario.links.gsl.rate_bps, scenario.links.isl.rate_bps
    return 2 * size_bytes * 8 * 1000 * (2 / gsl + max(0, hops - 2) / isl)


def probe_part(tokyo: str, brussels: str, t0_wall: float, model: Model, scenario: Any,
               count: int) -> dict[str, Any]:
    """UDP echo RTTs timed with perf_counter_ns inside Tokyo's container, against the model."""
    subprocess.run(["docker", "exec", "-d", brussels, "python3", "-c", ECHO_SERVER,
                    str(PROBE_PORT)], check=True, capture_output=True, timeout=30)
    time.sleep(0.5)  # the server binds its port (a bench, not a test: no readiness to wait on)
    done = subprocess.run(
        ["docker", "exec", tokyo, "python3", "-c", ECHO_CLIENT, "brussels", str(PROBE_PORT),
         str(count), str(GAP_S), str(PROBE_PAYLOAD_BYTES), str(PROBE_TIMEOUT_S)],
        capture_output=True, text=True, timeout=count * (GAP_S + PROBE_TIMEOUT_S) + 30,
        check=False)
    rtts, excess = [], []
    for line in done.stdout.splitlines():
        probe = json.loads(line)
        if probe["rtt_ns"] is None:
            continue
        rtt_ms = probe["rtt_ns"] / 1e6
        one_way_s, hops = model.at(probe["wall"] - t0_wall)
        rtts.append(rtt_ms)
        excess.append(rtt_ms - (2 * one_way_s * 1000 + serial_ms(scenario, PROBE_IP_BYTES,
                                                                  hops)))
    return {"sent": count, "received": len(rtts), "packet_bytes": PROBE_IP_BYTES,
            "rtt_ms": _pcts(rtts), "excess_ms": _pcts(excess),
            "abs_excess_ms": _pcts([abs(x) for x in excess]),
            "timer": "time.perf_counter_ns in the container", "exit_code": done.returncode,
            "stderr": done.stderr[-500:]}


def launch(args: argparse.Namespace, scenario_path: Path, run_dir: Path
           ) -> subprocess.Popen[bytes]:
    """``orbitmesh run`` (local) or ``orbitmesh up --backend docker`` of the scenario."""
    run_id = f"bench-ct-{args.backend}-{os.getpid()}"
    if args.backend == "local":
        cmd = ["run", str(scenario_path)]
    else:
        cmd = ["up", str(scenario_path), "--backend", "docker", "--image", args.image]
        if args.nodes_per_container:
            cmd += ["--nodes-per-container", str(args.nodes_per_container)]
    return subprocess.Popen(
        [sys.executable, "-m", "orbitmesh", *cmd, "--out", str(run_dir), "--run-id", run_id,
         "--quiet"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)


def main() -> None:
    """Run the benchmark once and print its JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=("local", "docker"), default="local")
    p.add_argument("--pings", type=int, default=50, help="pings, and as many UDP probes")
    p.add_argument("--image", default="orbitmesh:latest")
    p.add_argument("--nodes-per-container", type=int,
                   help="docker: nodes per worker container (default: up's own)")
    args = p.parse_args()
    missing = netns.missing_privileges() if args.backend == "local" else []
    if missing:
        emit({"bench": "endpoints", "part": "container_ping", "backend": args.backend,
              "skipped": "; ".join(missing)})
        return
    duration = 15.0 + 2 * args.pings * GAP_S
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
        proc = launch(args, scenario_path, run_dir)
        try:
            t0 = _wait_for_clock(run_dir, proc, START_TIMEOUT_S[args.backend])
            time.sleep(max(0.0, t0 + 1.0 - time.time()))
            plan = netns.read_plan(run_dir)
            assert plan is not None
            names = {e["node"]: e["container"]["name"] for e in plan["ip"]}
            record = ping_part(run_dir, t0, model, scenario, args.pings,
                               via=["docker", "exec", names["tokyo"]], part="container_ping")
            record["udp_probe"] = probe_part(names["tokyo"], names["brussels"], t0, model,
                                             scenario, args.pings)
            proc.communicate(timeout=duration + 120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=90)
        summary = json.loads((run_dir / "summary.json").read_text())
        record["backend"] = args.backend
        record["run_exit_code"] = proc.returncode
        record["fidelity_ok"] = summary["fidelity"]["ok"]
        record["hop_excess_ms"] = summary["fidelity"]["hop_excess_ms"]
        record["containers"] = [(c["node"], c["state"]) for c in
                                summary["endpoints"].get("containers", [])]
        emit(record)


if __name__ == "__main__":
    main()
