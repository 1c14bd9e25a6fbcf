"""Endpoints on the demo: ping RTT against the model, and a UDP pipe's rate and added delay.

    .venv/bin/python bench/endpoints.py [--udp-rate 20000] [--udp-seconds 5] [--pings 20]

Starts ``orbitmesh run scenarios/demo.yaml`` as its own process with Tokyo and Brussels as IP
endpoints (when this process may make namespaces; else the ping part is skipped and says why)
and a UDP pipe Tokyo -> Brussels on loopback ports, then prints one JSON line per measurement:

* ``ping``: ``orbitmesh exec RUN tokyo -- ping -4`` RTTs (ping's own figures) against twice the
  one-way delay that ``orbitmesh path`` gives at the time of each echo, plus serialisation;
  ``excess_ms`` = RTT - model (p50, p99, max).
* ``udp_pipe``: datagrams of 200 B sent at ``--udp-rate`` per second to the pipe; received per
  second at the deliver address, datagrams missing without a reason (offered - delivered -
  dropped by reason, from the summary), and the delay each one met beyond the model's one-way
  delay at its sending time (``added_ms`` p50/p99/max, wall ms).

Every address is loopback or inside the run's own namespaces. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit

from orbitmesh.core.engine import TickEngine
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.run.launch import netns

DEMO = PROJECT_ROOT / "scenarios" / "demo.yaml"
DATAGRAM_BYTES = 200


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Model:
    """One-way delay tokyo -> brussels (and hop kinds) per scenario second, from the geometry."""

    def __init__(self, scenario_path: Path, until_s: float) -> None:
        topology = build_topology(load_scenario(scenario_path))
        self.src, self.dst = topology.node("tokyo"), topology.node("brussels")
        engine = TickEngine(topology, destinations=[self.dst])
        engine.warm_up(0.0)
        self.tick_s = topology.scenario.tick_s
        self.one_way_s: list[float] = []
        self.hops: list[int] = []
        for k in range(int(until_s / self.tick_s) + 2):
            tick = engine.step(k * self.tick_s)
            path = tick.routes[None].path(self.src, self.dst)
            pairs = list(itertools.pairwise(path))
            self.one_way_s.append(sum(tick.state.delay_of(a, b) or 0.0 for a, b in pairs))
            self.hops.append(len(pairs))

    def at(self, t_s: float) -> tuple[float, int]:
        """(one-way delay s, hops) of the tick in force at scenario time ``t_s``."""
        k = max(0, min(len(self.one_way_s) - 1, int(t_s / self.tick_s)))
        return self.one_way_s[k], self.hops[k]


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "max": round(float(a.max()), 3)}


def _wait_for_clock(run_dir: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """t0_wall of the run once its clock has started (trace.json's manifest gets it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the run exited early: {proc.stderr.read().decode()[-2000:]}"
                             if proc.stderr else "the run exited early")
        try:
            t0 = json.loads((run_dir / "trace.json").read_text()).get("t0_wall")
        except (OSError, ValueError):
            t0 = None
        if t0:
            return float(t0)
        time.sleep(0.05)
    raise SystemExit("the run's clock did not start")


def ping_part(run_dir: Path, t0_wall: float, model: Model, scenario: Any,
              count: int, via: list[str] | None = None, part: str = "ping") -> dict[str, Any]:
    """ping RTTs against the model; ``via``: how to run a command at Tokyo (orbitmesh exec)."""
    started_s = time.time() - t0_wall
    via = via or [sys.executable, "-m", "orbitmesh", "exec", str(run_dir), "tokyo", "--"]
    done = subprocess.run([*via, "ping", "-4", "-c", str(count), "-i", "0.2", "brussels"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    excess, rtts = [], []
    gsl, isl = scenario.links.gsl.rate_bps, scenario.links.isl.rate_bps
    for line in done.stdout.splitlines():
        if "time=" not in line:
            continue
        seq = int(line.split("icmp_seq=")[1].split()[0])
        rtt = float(line.split("time=")[1].split()[0])
        one_way_s, hops = model.at(started_s + (seq - 1) * 0.2)
        serial_ms = 2 * 84 * 8 * 1000 * (2 / gsl + max(0, hops - 2) / isl)
        rtts.append(rtt)
        excess.append(rtt - (2 * one_way_s * 1000 + serial_ms))
    return {"bench": "endpoints", "part": part, "sent": count, "received": len(rtts),
            "rtt_ms": _pcts(rtts), "excess_ms": _pcts(excess),
            "abs_excess_ms": _pcts([abs(x) for x in excess]),
            "note": "ping prints whole ms above 100 ms", "exit_code": done.returncode}


def udp_part(listen: int, deliver: int, t0_wall: float, model: Model, rate: float,
             seconds: float) -> dict[str, Any]:
    """Send paced 200 B datagrams into the pipe; measure what arrives and its added delay."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", deliver))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    total = int(rate * seconds)
    sent_at: dict[int, float] = {}
    added: list[float] = []
    received = 0
    start = time.time()
    deadline = start + seconds + 2.0
    i = 0
    while time.time() < deadline:
        now = time.time()
        while i < total and start + i / rate <= now:
            sent_at[i] = time.time()
            tx.sendto(i.to_bytes(8, "big") + bytes(DATAGRAM_BYTES - 8), ("127.0.0.1", listen))
            i += 1
        try:
            while True:
                data = rx.recv(65535)
                got = time.time()
                seq = int.from_bytes(data[:8], "big")
                one_way_s, _ = model.at(sent_at[seq] - t0_wall)
                added.append((got - sent_at[seq] - one_way_s) * 1000.0)
                received += 1
        except BlockingIOError:
            pass
        time.sleep(0.0002)
    rx.close()
    tx.close()
    return {"bench": "endpoints", "part": "udp_pipe", "datagram_bytes": DATAGRAM_BYTES,
            "offered_rate_per_s": rate, "sent": i,
            "received": received, "received_per_s": round(received / seconds, 1),
            "added_ms": _pcts(added)}


def main() -> None:
    """Run the benchmark once and print its JSON lines."""
    p = argparse.ArgumentParser()
    p.add_argument("--udp-rate", type=float, default=20_000.0)
    p.add_argument("--udp-seconds", type=float, default=5.0)
    p.add_argument("--pings", type=int, default=20)
    args = p.parse_args()
    listen, deliver = _free_port(), _free_port()
    ip_ok = not netns.missing_privileges()
    duration = 12.0 + args.udp_seconds + args.pings * 0.2
    with tempfile.TemporaryDirectory(prefix="om-bench-endpoints-") as tmp:
        scenario_path = Path(tmp) / "demo-endpoints.yaml"
        scenario_path.write_text(
            DEMO.read_text().replace("duration_s: 60", f"duration_s: {duration:g}")
            + f"\nendpoints:\n  udp: [{{node: tokyo, listen: '127.0.0.1:{listen}', to: brussels, "
            f"deliver: '127.0.0.1:{deliver}'}}]\n")
        scenario = load_scenario(scenario_path)
        model = Model(scenario_path, duration)
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "orbitmesh", "run", str(scenario_path), "--out", str(run_dir),
               "--run-id", f"bench-ep-{os.getpid()}", "--quiet"]
        if ip_ok:
            cmd += ["--endpoints", "tokyo,brussels"]
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            t0 = _wait_for_clock(run_dir, proc, 60.0)
            time.sleep(max(0.0, t0 + 1.0 - time.time()))
            if ip_ok:
                emit(ping_part(run_dir, t0, model, scenario, args.pings))
            else:
                emit({"bench": "endpoints", "part": "ping", "skipped": "; ".join(
                    netns.missing_privileges())})
            record = udp_part(listen, deliver, t0, model, args.udp_rate, args.udp_seconds)
            proc.communicate(timeout=duration + 60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=60)
        summary = json.loads((run_dir / "summary.json").read_text())
        ep = summary.get("endpoints") or {"frames": {}, "nodes": {}}
        frames = ep["frames"]
        record["summary_endpoint_frames"] = {k: frames.get(k) for k in
                                             ("offered", "delivered", "dropped", "in_flight")}
        record["lost_without_reason"] = [c["unexplained"] for c in summary["conservation"]
                                         if c["flow"] == "endpoints"]
        record["fidelity_ok"] = summary["fidelity"]["ok"]
        record["hop_excess_ms"] = summary["fidelity"]["hop_excess_ms"]
        emit(record)


if __name__ == "__main__":
    main()
