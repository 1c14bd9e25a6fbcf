"""A stand-in mission control system beside a real run (tests/test_mcs_bridge.py, bench/mcs.py).

:func:`mcs_session` writes scenarios/demo.yaml with darmstadt's ``mcs`` set, starts the run
(``orbitmesh run``: embedded mosquitto, two worker processes) as a child process, and plays the
MCS here: it
listens for TM datagrams, reads the TM TCP stream, and once telemetry flows sends telecommands
over UDP and TCP to the satellites it has heard from. Every packet is stamped with the wall
time it was received or sent. All sockets are on 127.0.0.1.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from spacepackets.ccsds.spacepacket import PacketType, SequenceFlags, SpacePacketHeader

from broker.embedded import free_loopback_port
from nodes.mcs_packets import read_ack
from nodes.mcs_tm_stream import SO_TIMESTAMPNS, kernel_wall
from orbitmesh.core.histogram import Histogram
from orbitmesh.protocol.wire import FLOW_ACK, FLOW_TELEMETRY
from orbitmesh.run.export import iter_sorted_events
from orbitmesh.run.telecommands import telecommand_round_trips

PROJECT = Path(__file__).resolve().parent.parent
TC_APID_BASE = 1024
CONNECT_TIMEOUT_S = 60.0
"""How long the run may take to bring the bridge up (broker, workers, scenario load)."""
RUN_GRACE_S = 60.0
SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
TX_STAMP_FLAGS = (1 << 1) | (1 << 4) | (1 << 11)
"""SOF_TIMESTAMPING_TX_SOFTWARE | SOFTWARE | OPT_TSONLY: when a TC really left this process (a
stamp taken before ``send`` would count this thread's own preemption as the bridge's)."""
"""Wall seconds a run may take beyond its scenario duration (start-up, drain, summary)."""


@dataclass
class McsRecord:
    """What the stand-in MCS saw and did."""

    udp: list[tuple[float, bytes]] = field(default_factory=list)
    """TM datagrams as received: (wall when the kernel received it, packet)."""
    udp_read_wall: list[float] = field(default_factory=list)
    """Wall when this process's reader thread had each datagram (its own wake-up included)."""
    tcp: bytearray = field(default_factory=bytearray)
    """The TM TCP stream, as received."""
    sent: dict[tuple[int, int], tuple[float, str]] = field(default_factory=dict)
    """(TC APID, sequence count) -> (wall when the kernel sent it, "udp" or "tcp")."""
    summary: dict[str, Any] = field(default_factory=dict)
    """The run's summary.json."""
    returncode: int | None = None
    output: str = ""


def tc_packet(apid: int, seq: int) -> bytes:
    """A TC space packet as an MCS would send it (built by spacepackets)."""
    data = b"\x2a" * 8
    header = SpacePacketHeader(packet_type=PacketType.TC, apid=apid, seq_count=seq,
                               data_len=len(data) - 1, sec_header_flag=False,
                               seq_flags=SequenceFlags.UNSEGMENTED)
    return header.pack() + data


def centre_cuts(duration_s: float, count: int) -> list[dict[str, Any]]:
    """``count`` short cuts of darmstadt's terrestrial links, spread over the run: frames on
    them when a cut starts are dropped in flight (what the MCS must then never see)."""
    step = duration_s / (count + 1)
    return [{"kind": "link_down", "id": f"cut{k}", "a": "darmstadt",
             "link_class": "terrestrial", "at_s": round(step * (k + 1) + 0.37, 3), "for_s": 0.4}
            for k in range(count)]


def demo_with_mcs(out_dir: Path, tm_udp_port: int, ports: list[int],
                  faults: list[dict[str, Any]] | None = None) -> Path:
    """scenarios/demo.yaml with darmstadt's ``mcs`` set (and ``faults``), under ``out_dir``."""
    scenario: dict[str, Any] = yaml.safe_load((PROJECT / "scenarios" / "demo.yaml").read_text())
    centre = next(o for o in scenario["ops_centres"] if o["name"] == "darmstadt")
    centre["mcs"] = {"tm_udp": f"127.0.0.1:{tm_udp_port}", "tm_tcp": f"127.0.0.1:{ports[0]}",
                     "tc_udp": f"127.0.0.1:{ports[1]}", "tc_tcp": f"127.0.0.1:{ports[2]}",
                     "tc_apid_base": TC_APID_BASE}
    if faults:
        scenario["faults"] = [*scenario.get("faults", []), *faults]
    path = out_dir / "demo-mcs.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


def _connect(port: int, child: subprocess.Popen[str]) -> socket.socket:
    # The bridge lives in a worker process; its listening socket accepting is the readiness
    # signal (nothing else crosses the process boundary to this test).
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1.0)
        except OSError as exc:
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bridge never accepted on 127.0.0.1:{port} (run "
                                   f"exit: {child.poll()})") from exc
            time.sleep(0.05)


def mcs_session(out: Path, *, duration_s: float = 20.0, speed: float = 2.0,
                tcs_per_link: int = 8, faults: list[dict[str, Any]] | None = None,
                live_cuts: int = 0) -> McsRecord:
    """Run the demo with the bridge (``orbitmesh run``, a child process) and play the MCS;
    ``live_cuts``: cut darmstadt's terrestrial links that often during the run, live
    (``orbitmesh fault``: in force when the workers receive it, mid-tick)."""
    record = McsRecord()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    # Receipt is when the datagram reached this socket (the kernel's stamp), not when this
    # process's reader thread woke up to it: that is the MCS's scheduling, not the bridge's.
    listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    listener.settimeout(0.2)
    ports = [free_loopback_port() for _ in range(3)]
    scenario = demo_with_mcs(out.parent, listener.getsockname()[1], ports, faults)
    done = threading.Event()
    # The run is a child process, as a user starts it: nothing of the emulation competes with
    # this process's reader threads for the GIL, so receipt stamps are the sockets' own.
    command = [sys.executable, "-m", "orbitmesh", "run", str(scenario), "--duration",
               str(duration_s), "--speed", str(speed), "--workers", "2", "--out", str(out),
               "--fidelity-budget", "1000", "--quiet"]
    child = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    udp_reader = threading.Thread(target=_read_udp, args=(listener, record, done),
                                  name="mcs-tm-udp")
    udp_reader.start()
    cutter = threading.Thread(target=_cut_live, args=(out, child, live_cuts, duration_s / speed,
                                                      record), name="mcs-live-cuts")
    if live_cuts:
        cutter.start()
    sockets: list[socket.socket] = [listener]
    tcp_reader = None
    try:
        tm_tcp = _connect(ports[0], child)
        sockets.append(tm_tcp)
        tcp_reader = threading.Thread(target=_read_tcp, args=(tm_tcp, record), name="mcs-tm-tcp")
        tcp_reader.start()
        tc_tcp = _connect(ports[2], child)
        sockets.append(tc_tcp)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tc_udp:
            for sock in (tc_udp, tc_tcp):
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TX_STAMP_FLAGS)
            _command(record, tc_udp, ports[1], tc_tcp, child, tcs_per_link)
        record.output, _ = child.communicate(timeout=duration_s / speed + RUN_GRACE_S)
    finally:
        if child.poll() is None:
            child.terminate()  # our own child, by its PID
            child.wait(10)
        done.set()
        if cutter.is_alive():
            cutter.join(60)
        udp_reader.join()
        if tcp_reader is not None:
            tcp_reader.join(10)
        for sock in sockets:
            sock.close()
    record.returncode = child.returncode
    summary = out / "summary.json"
    if not summary.is_file():
        raise RuntimeError(f"the run wrote no summary (exit {child.returncode}):\n"
                           f"{record.output[-2000:]}")
    record.summary = json.loads(summary.read_text())
    return record


def _cut_live(out: Path, child: subprocess.Popen[str], count: int, wall_s: float,
              record: McsRecord) -> None:
    """Cut darmstadt's terrestrial links ``count`` times, 0.4 scenario s each, spread over the run
    (after the bridge is up: ``record.udp`` has telemetry)."""
    while not record.udp and child.poll() is None:
        time.sleep(0.1)
    start = time.monotonic()
    for k in range(count):
        time.sleep(max(0.0, start + wall_s * (k + 0.6) / (count + 1) - time.monotonic()))
        if child.poll() is not None:
            return
        subprocess.run([sys.executable, "-m", "orbitmesh", "fault", str(out), "link_down",
                        "darmstadt", "*", "terrestrial", "--for", "0.4", "--id", f"live{k}"],
                       cwd=PROJECT, capture_output=True, timeout=30, check=False)


def _read_udp(listener: socket.socket, record: McsRecord, done: threading.Event) -> None:
    """Stamp each TM datagram as it arrives, until the run is over and the queue is empty."""
    while True:
        try:
            packet, ancillary, _flags, _peer = listener.recvmsg(65_536, 64)
        except TimeoutError:
            if done.is_set():
                return
            continue
        read_wall = time.time()
        kernel = kernel_wall(ancillary)
        record.udp.append((read_wall if kernel is None else kernel, packet))
        record.udp_read_wall.append(read_wall)


def _read_tcp(sock: socket.socket, record: McsRecord) -> None:
    """Read the TM stream until the bridge closes it (the worker's exit)."""
    sock.settimeout(None)
    while data := sock.recv(65_536):
        record.tcp += data


def _command(record: McsRecord, tc_udp: socket.socket, udp_port: int, tc_tcp: socket.socket,
             child: subprocess.Popen[str], tcs_per_link: int) -> None:
    """Once telemetry flows, send TCs alternately over UDP and TCP to satellites heard from."""
    seq, seen = 0, 0
    heard: list[int] = []
    while seq < 2 * tcs_per_link and child.poll() is None:
        time.sleep(0.25)
        for _wall, packet in record.udp[seen:]:
            if (packet[0] << 8 | packet[1]) & 0x7FF == 100:
                sat = int.from_bytes(packet[6:10], "big")
                if sat not in heard:
                    heard.append(sat)
        seen = len(record.udp)
        if not heard:
            continue  # the worker refuses TCs before its start; telemetry says it started
        sat = heard[seq % len(heard)]
        packet = tc_packet(TC_APID_BASE + sat, seq)
        via = "udp" if seq % 2 == 0 else "tcp"
        before = time.time()
        if via == "udp":
            tc_udp.sendto(packet, ("127.0.0.1", udp_port))
        else:
            tc_tcp.sendall(packet)
        sent = _sent_wall(tc_udp if via == "udp" else tc_tcp)
        record.sent[TC_APID_BASE + sat, seq] = (before if sent is None else sent, via)
        seq += 1


def _sent_wall(sock: socket.socket) -> float | None:
    """The kernel's transmit time of what ``sock`` sent last (SO_TIMESTAMPING's error queue)."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            _data, ancillary, _flags, _peer = sock.recvmsg(
                1, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            select.select([sock], [], [], 0.01)
            continue
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                seconds, nanoseconds = struct.unpack_from("@qq", data)
                return seconds + nanoseconds * 1e-9
    return None


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _pacer_figures(pacer: dict[str, Any]) -> dict[str, Any]:
    """The pacer's counters, with its lateness histograms as percentiles."""
    out = {k: v for k, v in pacer.items() if not k.endswith("_ms")}
    for key in ("late_ms", "held_late_ms", "gate_ms"):
        if key in pacer and "p99" in pacer[key]:  # a periodic report's summary
            out[key] = pacer[key]
        elif key in pacer:
            hist = Histogram.from_dict(pacer[key])
            out[key] = {"n": hist.n, **dict(zip(("p50", "p99"), hist.percentiles((50, 99)),
                                                strict=True)), "max": hist.maximum}
    return out


def analyse(record: McsRecord, run_dir: Path) -> dict[str, Any]:
    """The bridge's figures from what the MCS received, the run's trace and its stats files."""
    speed = float(record.summary["run"]["speed"])
    centre = "darmstadt"
    ids = json.loads((run_dir / "trace.json").read_text())["node_ids"]
    hub = ids.index(centre)
    stats = [json.loads(p.read_text()) for p in sorted(run_dir.glob("stats-w*.json"))]
    bridge = next(s["mcs"][centre] for s in stats if "mcs" in s)
    # Independent decoding: every datagram through spacepackets, lengths checked.
    headers = []
    for _wall, packet in record.udp:
        header = SpacePacketHeader.unpack(packet)
        headers.append(header if header.packet_len == len(packet) else None)
    tcp_packets, rest = [], bytes(record.tcp)
    while len(rest) >= 6:
        total = SpacePacketHeader.unpack(rest[:6]).packet_len
        tcp_packets.append(rest[:total])
        rest = rest[total:]
    # Order per satellite: per (APID, satellite) the sequence counts only go up.
    last: dict[tuple[int, int], int] = {}
    out_of_order = 0
    for (_wall, packet), header in zip(record.udp, headers, strict=True):
        if header is None:
            continue
        key = (header.apid, int.from_bytes(packet[6:10], "big"))
        if header.seq_count <= last.get(key, -1):
            out_of_order += 1
        last[key] = header.seq_count
    # Added delay: k-th telemetry offer of a satellite <-> its packet of sequence count k.
    offers: dict[int, list[int]] = {}
    delivered_at: dict[int, float] = {}
    handled_late_s: dict[int, float] = {}
    reached = cut_in_flight = 0
    for r in iter_sorted_events(run_dir):
        if r[0] == "drop" and r[3] in (FLOW_TELEMETRY, FLOW_ACK) and r[5] == "fault":
            cut_in_flight += 1
        if r[0] == "offer" and r[3] == FLOW_TELEMETRY:
            offers.setdefault(r[5], []).append(r[2])
        elif r[0] == "deliver" and r[4] == hub and r[3] in (FLOW_TELEMETRY, FLOW_ACK):
            reached += 1
            delivered_at[r[2]] = r[1]
            handled_late_s[r[2]] = r[7] / (speed * 1000.0)  # the worker's own lateness
    added_ms, bridge_ms, read_ms = [], [], []
    not_delivered = 0  # housekeeping the MCS received whose frame the trace did not deliver
    for (wall, packet), header, read_wall in zip(record.udp, headers, record.udp_read_wall,
                                                 strict=True):
        if header is not None and header.apid == 100:
            frames = offers.get(int.from_bytes(packet[6:10], "big"), [])
            if header.seq_count < len(frames) and frames[header.seq_count] not in delivered_at:
                not_delivered += 1
            elif header.seq_count < len(frames):
                frame = frames[header.seq_count]
                added_ms.append((wall - delivered_at[frame]) * 1000.0)
                read_ms.append((read_wall - delivered_at[frame]) * 1000.0)
                bridge_ms.append((wall - delivered_at[frame] - handled_late_s[frame]) * 1000.0)
    # TC round trips: the MCS's own clock against the trace's pairing of the same commands.
    pairs = {row["telecommand"]: row for row in telecommand_round_trips(run_dir)}
    frame_of = {(apid, seq): frame for frame, apid, seq, _wall in bridge["telecommands"]}
    rtt_diffs, acks_by_link = [], {"udp": 0, "tcp": 0}
    diffs_by_link: dict[str, list[float]] = {"udp": [], "tcp": []}
    for wall, packet in record.udp:
        ack = read_ack(packet)
        if ack is None or (ack[1], ack[2]) not in record.sent:
            continue
        sent_wall, via = record.sent[ack[1], ack[2]]
        acks_by_link[via] += 1
        row = pairs.get(frame_of.get((ack[1], ack[2]), -1))
        if row is not None and row["rtt_ms"] is not None:
            rtt_diffs.append((wall - sent_wall) * speed * 1000.0 - row["rtt_ms"])
            diffs_by_link[via].append(rtt_diffs[-1])
    trace_rtts = sorted(r["rtt_ms"] for r in pairs.values() if r["rtt_ms"] is not None)
    stats_rtts = sorted(v for s in stats for v in s["telecommand_rtt_ms"].get("samples", []))
    return {
        "speed": speed, "tm_reached_centre_trace": reached, "bridge": {
            k: bridge[k] for k in ("tm_in", "tm_udp_sent", "tm_tcp_sent", "tm_failed", "tc_in",
                                   "tc_routed", "tc_refused", "tcp_clients_dropped")},
        "udp_received": len(record.udp), "udp_undecodable": headers.count(None),
        "udp_ratio": len(record.udp) / bridge["tm_in"] if bridge["tm_in"] else None,
        "tcp_received": len(tcp_packets), "tcp_equals_udp": tcp_packets == [p for _w, p in
                                                                            record.udp],
        "out_of_order": out_of_order, "satellites_heard": len({k[1] for k in last}),
        "udp_not_delivered_in_trace": not_delivered, "tm_dropped_by_fault": cut_in_flight,
        "added_wall_ms": {"n": len(added_ms), "p50": _percentile(added_ms, 50),
                          "p99": _percentile(added_ms, 99), "max": max(added_ms, default=None)},
        "added_read_by_mcs_thread_wall_ms": {
            "p50": _percentile(read_ms, 50), "p99": _percentile(read_ms, 99),
            "max": max(read_ms, default=None)},
        "added_after_handling_wall_ms": {
            "p50": _percentile(bridge_ms, 50), "p99": _percentile(bridge_ms, 99),
            "max": max(bridge_ms, default=None)},
        "worker_late_wall_ms_p99": _percentile(
            [v * 1000.0 for v in handled_late_s.values()], 99),
        "tc_sent": len(record.sent), "tc_acked_via": acks_by_link,
        "tc_rtt_mcs_minus_trace_ms": {
            "n": len(rtt_diffs), "p50": _percentile(rtt_diffs, 50),
            "p99_abs": _percentile([abs(d) for d in rtt_diffs], 99),
            "max_abs": max(map(abs, rtt_diffs), default=None),
            "wall_p50": float(np.percentile(rtt_diffs, 50)) / speed if rtt_diffs else None,
            **{f"{via}_p50": _percentile(d, 50) for via, d in diffs_by_link.items()},
            **{f"{via}_max_abs": max(map(abs, d), default=None)
               for via, d in diffs_by_link.items()}},
        "pacer": _pacer_figures(bridge.get("udp_pacer", {})),
        "tc_read_late_wall_ms": dict(zip(("p50", "p99"), Histogram.from_dict(
            bridge.get("tc_read_late_ms", [])).percentiles((50, 99)), strict=True)),
        "bridge_handover_wall_ms": dict(zip(("p50", "p99"), Histogram.from_dict(
            bridge["added_ms"]).percentiles((50, 99)), strict=True)),
        "trace_rtts_equal_stats": (len(trace_rtts) == len(stats_rtts) and all(
            abs(a - b) < 1e-6 for a, b in zip(trace_rtts, stats_rtts, strict=True))),
        "tc_rtts": len(trace_rtts),
    }
