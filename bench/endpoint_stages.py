"""Where an endpoint round trip's time goes, stage by stage (plain namespaces, no docker).

    .venv/bin/python bench/endpoint_stages.py [--probes 30]

Runs ``orbitmesh run scenarios/demo.yaml --endpoints tokyo,brussels`` with
``ORBITMESH_ENDPOINT_TRACE`` set, so each worker logs the wall time it read every TUN packet
(the frame's entry stamp), the due arrival of its last hop and the time it wrote it to the far
TUN. A UDP echo server in Brussels' namespace and a client in Tokyo's (python3, ``time.time``:
the same CLOCK_REALTIME as the workers, one host) log their own send and receive times. One
JSON line: per stage, p50/p99/max in µs:

* ``entry``: client's (or server's) sendto -> the worker's read of the TUN;
* ``emulated``: entry stamp -> due arrival at the far node (what the network emulates);
* ``model_gap``: emulated - the bench's model (geometry one-way + serialisation of the packet);
* ``late``: due arrival -> write to the far TUN (timer lateness);
* ``exit``: TUN write -> the far program's recvfrom returned;
* ``server``: echo server's recvfrom -> sendto; ``rtt_excess``: RTT - model.

Diagnosis only (``fwd`` = Tokyo -> Brussels, ``rev`` = back); run it alone on the machine.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit
from endpoints import DEMO, Model, _wait_for_clock

from orbitmesh.core.scenario import load_scenario
from orbitmesh.run.launch import netns

PORT = 7777
PAYLOAD_BYTES = 32
IP_BYTES = 20 + 8 + PAYLOAD_BYTES
GAP_S = 0.2
SERVER = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(2048)
    got = time.time()
    sent = time.time()
    s.sendto(data, peer)
    print(json.dumps([data[-8:].hex(), got, sent]), flush=True)
"""
CLIENT = """
import json, socket, sys, time
host, port, count, gap, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
start = time.time()
for seq in range(count):
    delay = start + seq * gap - time.time()
    if delay > 0:
        time.sleep(delay)
    msg = bytes(size - 8) + (seq + 1).to_bytes(8, "big")
    sent = time.time()
    s.sendto(msg, (host, port))
    try:
        data, _ = s.recvfrom(2048)
        got = time.time()
    except TimeoutError:
        got = None
    print(json.dumps([msg[-8:].hex(), sent, got]), flush=True)
"""


def _pcts_us(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(values) * 1e6
    return {"p50": round(float(np.percentile(a, 50)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1),
            "n": len(values)}


Key = tuple[int, str]


def _trace(trace_dir: Path) -> tuple[dict[Key, float], dict[Key, list[Any]]]:
    ins: dict[tuple[int, str], float] = {}
    outs: dict[tuple[int, str], list[Any]] = {}
    for f in trace_dir.glob("ep-*.jsonl"):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if rec[0] == "in":
                ins[(rec[1], rec[2])] = rec[3]
            else:
                outs[(rec[1], rec[2])] = rec[3:]
    return ins, outs


def stages(client: list[list[Any]], server: dict[str, list[float]], ins: dict[Key, float],
           outs: dict[Key, list[Any]],
           model: Model, t0_wall: float, scenario: Any, tokyo: int, brussels: int
           ) -> dict[str, Any]:
    """Per-stage samples joined on each probe's sequence number."""
    gsl, isl = scenario.links.gsl.rate_bps, scenario.links.isl.rate_bps
    s: dict[str, list[float]] = {k: [] for k in (
        "fwd_entry", "fwd_emulated", "fwd_model_gap", "fwd_late", "fwd_exit", "server",
        "rev_entry", "rev_emulated", "rev_model_gap", "rev_late", "rev_exit", "rtt",
        "rtt_excess", "fwd_wake", "rev_wake", "fwd_handle", "rev_handle", "fwd_write", "rev_write")}
    for key, sent, got in client:
        srv = server.get(key)
        fin, rin = ins.get((tokyo, key)), ins.get((brussels, key))
        fout, rout = outs.get((brussels, key)), outs.get((tokyo, key))
        if (got is None or srv is None or fin is None or rin is None or fout is None
                or rout is None):
            continue
        one_way_s, hops = model.at(sent - t0_wall)
        serial_s = IP_BYTES * 8 * (2 / gsl + max(0, hops - 2) / isl)
        back_s, _ = model.at(srv[1] - t0_wall)
        s["fwd_entry"].append(fin - sent)
        s["fwd_emulated"].append(fout[1] - fout[0])
        s["fwd_model_gap"].append(fout[1] - fout[0] - one_way_s - serial_s)
        s["fwd_wake"].append(fout[5] - fout[1])
        s["fwd_handle"].append(fout[3] - fout[5])
        s["fwd_write"].append(fout[2] - fout[3])
        s["fwd_late"].append(fout[2] - fout[1])
        s["fwd_exit"].append(srv[0] - fout[2])
        s["server"].append(srv[1] - srv[0])
        s["rev_entry"].append(rin - srv[1])
        s["rev_emulated"].append(rout[1] - rout[0])
        s["rev_model_gap"].append(rout[1] - rout[0] - back_s - serial_s)
        s["rev_wake"].append(rout[5] - rout[1])
        s["rev_handle"].append(rout[3] - rout[5])
        s["rev_write"].append(rout[2] - rout[3])
        s["rev_late"].append(rout[2] - rout[1])
        s["rev_exit"].append(got - rout[2])
        s["rtt"].append(got - sent)
        s["rtt_excess"].append(got - sent - 2 * one_way_s - 2 * serial_s)
    return {k: _pcts_us(v) for k, v in s.items()}


def main() -> None:
    """Run once and print the stage breakdown as one JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("--probes", type=int, default=30)
    args = p.parse_args()
    missing = netns.missing_privileges()
    if missing:
        emit({"bench": "endpoint_stages", "skipped": "; ".join(missing)})
        return
    duration = 12.0 + args.probes * GAP_S
    with tempfile.TemporaryDirectory(prefix="om-bench-stages-") as tmp:
        scenario_path = Path(tmp) / "demo-stages.yaml"
        scenario_path.write_text(
            DEMO.read_text().replace("duration_s: 60", f"duration_s: {duration:g}"))
        scenario = load_scenario(scenario_path)
        model = Model(scenario_path, duration)
        run_dir, trace_dir = Path(tmp) / "run", Path(tmp) / "trace"
        trace_dir.mkdir()
        env = {**os.environ, "ORBITMESH_ENDPOINT_TRACE": str(trace_dir)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "orbitmesh", "run", str(scenario_path), "--out", str(run_dir),
             "--run-id", f"bench-st-{os.getpid()}", "--quiet", "--endpoints", "tokyo,brussels"],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            start_new_session=True)
        exec_ = [sys.executable, "-m", "orbitmesh", "exec", str(run_dir)]
        server = None
        try:
            t0 = _wait_for_clock(run_dir, proc, 60.0)
            time.sleep(max(0.0, t0 + 1.0 - time.time()))
            server = subprocess.Popen([*exec_, "brussels", "--", "python3", "-c", SERVER,
                                       str(PORT)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                      text=True, start_new_session=True)
            time.sleep(1.0)  # diagnosis script: the server binds meanwhile
            done = subprocess.run([*exec_, "tokyo", "--", "python3", "-c", CLIENT, "brussels",
                                   str(PORT), str(args.probes), str(GAP_S), str(PAYLOAD_BYTES)],
                                  cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  timeout=args.probes * 1.5 + 30, check=False)
            os.killpg(server.pid, signal.SIGTERM)
            srv_out = server.communicate(timeout=10)[0]
            proc.communicate(timeout=duration + 60)
        finally:
            if server is not None and server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=60)
        client = [json.loads(x) for x in done.stdout.splitlines()]
        srv = {r[0]: r[1:] for r in (json.loads(x) for x in srv_out.splitlines())}
        ins, outs = _trace(trace_dir)
        tokyo, brussels = model.src, model.dst
        record = {"bench": "endpoint_stages", "probes": args.probes,
                  "received": sum(1 for c in client if c[2] is not None),
                  "packet_bytes": IP_BYTES,
                  "stages_us": stages(client, srv, ins, outs, model, t0, scenario,
                                      tokyo, brussels)}
        emit(record)


if __name__ == "__main__":
    main()
