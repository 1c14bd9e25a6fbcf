"""The message plane, live: frame-hops per second through the real runtime, and the raw broker.

    .venv/bin/python bench/messaging.py [--load 50000] [--duration 20] [--chain 9] [--flows 8]
                                        [--workers 2] [--profile DIR] [--keep DIR]
                                        [--plane batched|python]

Prints one JSON object per line:

* ``{"case": "broker_raw", ...}``: the embedded mosquitto's own capacity. A raw-socket publisher
  process blasts pre-encoded QoS 0 PUBLISH packets (~200 B payload) and one raw-socket subscriber
  in this process counts them and checks every sequence number; ``broker_raw_msgs_per_s`` is
  messages delivered to the subscriber per second, publisher start to last message.
* ``{"case": "full", ...}`` and ``{"case": "half", ...}``: a synthetic scenario run with
  ``orbitmesh.run.launch.local.run`` (controller + ``--workers`` worker processes + embedded
  mosquitto): a chain of operations centres joined by ``peers`` fibre (static links, fixed
  ``delay_ms``, so geometry plays no part) with Poisson flows between the chain's ends. Ground
  nodes are dealt to workers round-robin, so every hop of the chain crosses between the two
  workers over MQTT. ``frame_hops_per_s`` is the hops of frames delivered in the middle 80 % of
  the run (from the workers' event logs) per wall second; ``unexplained_loss`` is offered -
  delivered - dropped-with-reason - in flight over all flows (must be 0); ``accuracy_p99_ms`` is
  the 99th percentile of (actual - intended) hop arrival time. The "half" case offers half the
  load; its accuracy is the figure to hold against the 2 ms target.
* ``{"case": "peak", ...}`` (only with ``--cases ...,peak``): twice the load, to probe headroom.
* ``{"case": "verdict", ...}``: the headline figures and whether the targets were met.

``--profile DIR`` runs the workers under cProfile (a sitecustomize.py written into a temp dir
that only this benchmark puts on PYTHONPATH) and writes ``worker-<pid>.prof`` plus the top
functions to DIR. Everything binds 127.0.0.1 and every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PROJECT_ROOT,
    MessageTap,
    ProcSampler,
    emit,
    load_worker_stats,
    machine,
    total_frame_hops,
    unexplained_loss,
    worker_pids,
)

from broker.embedded import EmbeddedBroker
from orbitmesh.protocol import mqtt
from orbitmesh.run.launch.local import RunOptions, run

TARGET_HOPS_PER_S = 50_000
TARGET_ACCURACY_P99_MS = 2.0
DEFAULT_LOAD = TARGET_HOPS_PER_S
"""Offered frame-hops/s of the "full" case; the offer achieved is reported as
``offered_frames_per_s`` (generators that fall behind would show there)."""
HOP_DELAY_MS = 1.0
"""Emulated one-way delay of every fibre hop (fixed, so each hop has a known intended arrival)."""
FRAME_BYTES = 200
STEADY_WINDOW = (0.1, 0.9)
"""Fraction of the run over which the sustained rate is measured (skips start-up and tail)."""
RAW_TOPIC = "bench/raw"
PEAK_FACTOR = 2.0
"""The optional "peak" case offers this multiple of --load, to probe the headroom."""


# --- the synthetic scenario -----------------------------------------------------------------


def scenario_yaml(*, chain: int, flows: int, load_hops_per_s: float, duration_s: float,
                  seed: int = 7) -> str:
    """A chain of ``chain`` ops centres (static fibre), ``flows`` Poisson flows end to end."""
    hops = chain - 1
    rate_pps = load_hops_per_s / hops / flows
    lines = [
        "name: bench-messaging",
        "description: synthetic message-plane load (bench/messaging.py)",
        "epoch: 2026-01-01T00:00:00Z",
        f"duration_s: {duration_s}",
        "tick_s: 1.0",
        "speed: 1.0",
        f"seed: {seed}",
        "constellations:",  # the schema needs one; a lone satellite with no links at all
        "  - name: idle",
        "    operator: bench",
        "    walker: {inclination_deg: 53.0, satellites: 1, planes: 1, phasing: 0,"
        " altitude_km: 550.0}",
        "    isl: false",
        "    max_gsl: 0",
        "    telemetry: {rate_hz: 0.0}",
        "stations: []",
        "ops_centres:",
    ]
    for i in range(chain):
        peers = f"[c{i + 1:02d}]" if i + 1 < chain else "[]"
        lines.append(f"  - {{name: c{i:02d}, operator: bench, lat_deg: {i * 0.5:.1f}, "
                     f"lon_deg: 0.0, stations: [], peers: {peers}}}")
    lines += [
        "links:",
        "  isl: {topology: none}",
        f"  terrestrial: {{delay_ms: {HOP_DELAY_MS}, rate_bps: 1.0e10, queue_frames: 100000}}",
        "traffic:",
    ]
    last = f"c{chain - 1:02d}"
    for f in range(flows):
        src, dst = ("c00", last) if f % 2 == 0 else (last, "c00")
        lines.append(f"  - {{name: f{f}, source: {src}, destination: {dst}, pattern: poisson, "
                     f"rate_pps: {rate_pps:.3f}, size: {{distribution: fixed, "
                     f"bytes: {FRAME_BYTES}}}}}")
    return "\n".join(lines) + "\n"


# --- profiling hook (bench only) --------------------------------------------------------------

_SITECUSTOMIZE = textwrap.dedent('''\
    # Written by bench/messaging.py --profile: profile orbitmesh worker processes only.
    import os as _os
    import sys as _sys

    _out = _os.environ.get("ORBITMESH_BENCH_PROFILE")
    if _out and "--worker" in _sys.argv:
        import atexit as _atexit
        import cProfile as _cProfile

        _prof = _cProfile.Profile()

        def _dump():
            _prof.disable()
            _prof.dump_stats(_os.path.join(_out, "worker-%d.prof" % _os.getpid()))

        _atexit.register(_dump)
        _prof.enable()
''')


def _profile_report(out: Path, top: int = 25) -> list[dict[str, Any]]:
    """Top functions by own time across every worker profile in ``out``."""
    import pstats

    files = sorted(out.glob("worker-*.prof"))
    if not files:
        return []
    stats = pstats.Stats(str(files[0]))
    for f in files[1:]:
        stats.add(str(f))
    with (out / "profile.txt").open("w") as fh:
        stats.stream = fh  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(60)
        stats.sort_stats("cumulative").print_stats(60)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    return [{"function": f"{Path(fn).name}:{line}:{name}", "calls": nc,
             "tottime_s": round(tt, 3), "share": round(tt / total, 3) if total else None}
            for (fn, line, name), (_cc, nc, tt, _ct, _callers) in rows]


# --- one live run ---------------------------------------------------------------------------


def _steady_rate(run_dir: Path, duration_s: float) -> dict[str, Any]:
    """Frame-hops per wall second over the middle of the run, from the workers' event logs.

    Counts ``hop`` events (one per link traversal, stamped with the arrival time) when the log
    has them, else the hops of frames delivered in the window.
    """
    offers: list[float] = []
    hop_times: list[float] = []
    delivers: list[tuple[float, int]] = []
    for path in sorted(run_dir.glob("events-w*.msgpack")):
        with path.open("rb") as fh:
            for record in msgpack.Unpacker(fh, raw=False):
                kind = record[0]
                if kind == "hop":
                    hop_times.append(record[1])
                elif kind == "offer":
                    offers.append(record[1])
                elif kind == "deliver":
                    delivers.append((record[1], record[5]))
    if not offers or not delivers:
        return {"frame_hops_per_s": 0.0, "window_s": 0.0}
    t0 = min(offers)  # first frame offered: within a few ms of scenario t=0
    lo, hi = (t0 + f * duration_s for f in STEADY_WINDOW)
    if hop_times:
        hops_t = np.asarray(hop_times)
        hops_inside = int(np.count_nonzero((hops_t >= lo) & (hops_t < hi)))
    else:
        wall = np.array([d[0] for d in delivers])
        hops = np.array([d[1] for d in delivers])
        hops_inside = int(hops[(wall >= lo) & (wall < hi)].sum())
    offer_t = np.asarray(offers)
    offered_inside = int(np.count_nonzero((offer_t >= lo) & (offer_t < hi)))
    last = max(d[0] for d in delivers)
    return {"frame_hops_per_s": round(hops_inside / (hi - lo)),
            "offered_frames_per_s": round(offered_inside / (hi - lo)),
            "window_s": round(hi - lo, 3), "counted_from": "hop" if hop_times else "deliver",
            "last_delivery_after_end_s": round(last - (t0 + duration_s), 3)}


def live_case(name: str, *, load: float, chain: int, flows: int, duration_s: float,
              workers: int, out_root: Path) -> dict[str, Any]:
    """Run the synthetic scenario once (own private mosquitto, so it can be tapped and sampled)."""
    case_dir = out_root / name
    case_dir.mkdir(parents=True, exist_ok=True)
    path = case_dir / "messaging.yaml"
    path.write_text(scenario_yaml(chain=chain, flows=flows, load_hops_per_s=load,
                                  duration_s=duration_s))
    run_id = f"bench-msg-{name}-{os.getpid()}"
    run_dir = case_dir / "run"
    with EmbeddedBroker(workdir=case_dir) as broker:
        broker_pid = broker.pid
        assert broker_pid is not None

        def pids() -> dict[str, int]:
            return {"controller": os.getpid(), "broker": broker_pid, **worker_pids(run_dir)}

        started = time.perf_counter()
        with ProcSampler(pids) as procs, MessageTap(
                broker.url.host, broker.url.port, f"orbitmesh/{run_id}/worker/+/frames") as tap:
            result = run(RunOptions(scenario=path, duration_s=duration_s, workers=workers,
                                    broker=broker.url.to_text(), out=run_dir, run_id=run_id,
                                    progress=False))
            wall_s = time.perf_counter() - started
    summary = result.summary
    stats = load_worker_stats(result.run_dir)
    hops = total_frame_hops(stats)
    crossed = sum(f["remote_in"] for w in stats for f in w["flows"].values())
    flows_s = summary["flows"]
    offered = sum(f["offered"] for f in flows_s)
    delivered = sum(f["delivered"] for f in flows_s)
    dropped = {k: v for f in flows_s for k, v in f["dropped"].items()}
    acc = summary["fidelity"]["hop_excess_ms"]  # how late hops were handled (scenario ms; x1)
    steady = _steady_rate(result.run_dir, duration_s)
    cpu = dict(procs.cpu_s)
    cpu["controller"] = cpu.get("controller", 0.0) - tap.cpu_s  # the tap thread is not ours
    return {
        "case": name, "plane": os.environ.get("ORBITMESH_PLANE", "python"),
        "offered_load_hops_per_s": load, "chain_nodes": chain,
        "hops_per_frame": chain - 1, "flows": flows, "workers": workers,
        "duration_s": duration_s, "frame_bytes": FRAME_BYTES, "hop_delay_ms": HOP_DELAY_MS,
        "frame_hops_per_s": steady["frame_hops_per_s"],
        "frame_hops_counted_from": steady.get("counted_from"),
        "frame_hops_per_s_whole_run": round(hops / duration_s),
        "offered_frames_per_s": steady.get("offered_frames_per_s"),
        "nominal_frames_per_s": round(load / (chain - 1)),
        "frame_hops_total": hops, "hops_crossing_workers": crossed,
        "mqtt_frame_messages": tap.messages,
        "frames_per_mqtt_message": round(crossed / tap.messages, 2) if tap.messages else None,
        "offered": offered, "delivered": delivered, "dropped": dropped,
        "in_flight_at_end": sum(f["in_flight"] for f in flows_s),
        "between_workers_at_end": sum(f["remote_out"] - f["remote_in"]
                                      for w in stats for f in w["flows"].values()),
        "unexplained_loss": unexplained_loss(summary),
        "malformed": summary["malformed"],
        "accuracy_p50_ms": acc["p50"], "accuracy_p99_ms": acc["p99"], "accuracy_max_ms": acc["max"],
        "latency_p99_ms": max((f["latency_ms"]["p99"] or 0.0) for f in flows_s),
        "last_delivery_after_end_s": steady.get("last_delivery_after_end_s"),
        "conservation_ok": summary["conservation_ok"],
        "cpu_s": {k: round(v, 2) for k, v in sorted(cpu.items())},
        "foreign_cpu_s": round(procs.foreign_cpu_s, 2),
        "peak_rss_mb": round(procs.peak_total_mb, 1),
        "wall_s": round(wall_s, 2), "run_dir": str(result.run_dir),
    }


# --- raw broker capacity --------------------------------------------------------------------

_PUBLISHER = textwrap.dedent('''\
    import socket, sys
    root, host, port, n, size, topic = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
        int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    sys.path.insert(0, root)
    from orbitmesh.protocol import mqtt
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(mqtt.encode_connect("bench-raw-pub", keepalive_s=60))
    reader, got = mqtt.PacketReader(), []
    while not got:
        got = reader.feed(s.recv(4))
    assert got[0] == mqtt.Connack(False, 0), got
    # Pre-encoded: the fixed header and topic of one packet, then sequence number + padding.
    whole = mqtt.encode_publish(topic, bytes(size))
    head = whole[: len(whole) - size]
    pad = b"x" * (size - 8)
    chunk = []
    for seq in range(n):
        chunk.append(head + seq.to_bytes(8, "big") + pad)
        if len(chunk) == 2000:
            s.sendall(b"".join(chunk))
            chunk = []
    if chunk:
        s.sendall(b"".join(chunk))
    s.sendall(mqtt.encode_disconnect())
    s.close()
''')


def _next_packet(sock: socket.socket, reader: mqtt.PacketReader) -> mqtt.Packet:
    """The next packet the broker sends (blocking); ConnectionError if it hangs up."""
    while True:
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        packets = reader.feed(chunk)
        if packets:
            return packets[0]


def broker_raw(messages: int, payload_bytes: int, timeout_s: float = 120.0) -> dict[str, Any]:
    """Raw publisher process -> private mosquitto -> raw subscriber here; QoS 0."""
    packet_bytes = len(mqtt.encode_publish(RAW_TOPIC, bytes(payload_bytes)))
    with EmbeddedBroker() as broker:
        url = broker.url
        sub = socket.create_connection((url.host, url.port), timeout=10)
        sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        handshake = mqtt.PacketReader()
        sub.sendall(mqtt.encode_connect("bench-raw-sub", keepalive_s=60))
        if _next_packet(sub, handshake) != mqtt.Connack(False, 0):
            raise RuntimeError("raw subscriber: no CONNACK")
        sub.sendall(mqtt.encode_subscribe(1, [(RAW_TOPIC, 0)]))
        if not isinstance(_next_packet(sub, handshake), mqtt.Suback):
            raise RuntimeError("raw subscriber: no SUBACK")
        chunks: list[bytes] = []
        received_bytes = 0
        expected = messages * packet_bytes
        started = time.perf_counter()
        publisher = subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(PROJECT_ROOT), url.host, str(url.port),
             str(messages), str(payload_bytes), RAW_TOPIC], stdin=subprocess.DEVNULL)
        try:
            sub.settimeout(5.0)
            deadline = started + timeout_s
            while received_bytes < expected and time.perf_counter() < deadline:
                try:
                    chunk = sub.recv(1 << 20)
                except TimeoutError:
                    if publisher.poll() is not None:
                        break  # publisher done and nothing more is coming
                    continue
                if not chunk:
                    break
                chunks.append(chunk)
                received_bytes += len(chunk)
            elapsed_s = time.perf_counter() - started
            publisher.wait(timeout=30)
        finally:
            if publisher.poll() is None:
                publisher.kill()
                publisher.wait()
            sub.close()
    # Decoded after the clock stopped: the figure is the broker's, not this parser's.
    reader = mqtt.PacketReader(message=lambda topic, payload, retain: (topic, payload))
    got: list[tuple[str, bytes]] = []
    others = reader.feed_split(b"".join(chunks), got)
    intact = not others and not reader.pending_bytes and all(
        topic == RAW_TOPIC and len(payload) == payload_bytes for topic, payload in got)
    seqs = np.array([int.from_bytes(payload[:8], "big") for _, payload in got], dtype=np.int64)
    whole = len(got)
    lost = messages - int(np.unique(seqs).size)
    return {"case": "broker_raw", "engine": "mosquitto", "messages": messages,
            "payload_bytes": payload_bytes, "qos": 0,
            "broker_raw_msgs_per_s": round(whole / elapsed_s),
            "elapsed_s": round(elapsed_s, 3), "lost": lost, "intact": intact,
            "in_order": bool(intact and np.all(np.diff(seqs) == 1))}


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the raw broker case and the two live cases; print JSON lines."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", type=float, default=DEFAULT_LOAD,
                   help="offered frame-hops per second of the full case")
    p.add_argument("--duration", type=float, default=20.0, help="scenario seconds per case")
    p.add_argument("--chain", type=int, default=9, help="ops centres in the chain (hops + 1)")
    p.add_argument("--flows", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--raw-messages", type=int, default=400_000)
    p.add_argument("--cases", default="raw,full,half",
                   help="comma-separated subset of raw,full,half,peak (peak: 2 x --load)")
    p.add_argument("--profile", type=Path, help="cProfile the workers, write results here")
    p.add_argument("--keep", type=Path, help="keep the run directories here (default: temp)")
    p.add_argument("--plane", choices=("batched", "python"), default="batched",
                   help="the workers' message plane (ORBITMESH_PLANE): batched (nodes/plane.py,"
                        " default) or python (NodeRuntime, the reference)")
    args = p.parse_args(argv)
    os.environ["ORBITMESH_PLANE"] = args.plane  # the workers inherit it
    if args.chain < 2:
        p.error("--chain needs at least 2 nodes")
    cases = set(args.cases.split(","))
    bench_started = time.perf_counter()
    emit({"case": "machine", "plane": args.plane, **machine()})
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="orbitmesh-bench-msg-") as tmp:
        out_root = args.keep.resolve() if args.keep else Path(tmp)
        if args.profile:
            hook = Path(tmp) / "hook"
            hook.mkdir()
            (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
            args.profile.mkdir(parents=True, exist_ok=True)
            os.environ["PYTHONPATH"] = os.pathsep.join(
                x for x in (str(hook), os.environ.get("PYTHONPATH")) if x)
            os.environ["ORBITMESH_BENCH_PROFILE"] = str(args.profile.resolve())
        if "raw" in cases:
            results["raw"] = broker_raw(args.raw_messages, FRAME_BYTES)
            emit(results["raw"])
        for name, load in (("full", args.load), ("half", args.load / 2),
                           ("peak", args.load * PEAK_FACTOR)):
            if name in cases:
                results[name] = live_case(name, load=load, chain=args.chain, flows=args.flows,
                                          duration_s=args.duration, workers=args.workers,
                                          out_root=out_root)
                emit(results[name])
    if args.profile:
        emit({"case": "profile", "dir": str(args.profile.resolve()),
              "top_tottime": _profile_report(args.profile)})
    full, half, raw = results.get("full"), results.get("half"), results.get("raw")
    verdict: dict[str, Any] = {
        "case": "verdict", "plane": args.plane,
        "frame_hops_per_s": full["frame_hops_per_s"] if full else None,
        "broker_raw_msgs_per_s": raw["broker_raw_msgs_per_s"] if raw else None,
        "unexplained_loss": sum(r["unexplained_loss"] for r in (full, half) if r),
        "accuracy_p99_ms": half["accuracy_p99_ms"] if half else None,
        "target_frame_hops_per_s": TARGET_HOPS_PER_S,
        "target_accuracy_p99_ms": TARGET_ACCURACY_P99_MS,
        "profiled": bool(args.profile),
        "bench_wall_s": round(time.perf_counter() - bench_started, 1),
    }
    if full:
        verdict["throughput_ok"] = full["frame_hops_per_s"] >= 0.98 * TARGET_HOPS_PER_S
    if half:
        verdict["accuracy_ok"] = (half["accuracy_p99_ms"] is not None
                                  and half["accuracy_p99_ms"] <= TARGET_ACCURACY_P99_MS)
    emit(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
