"""Traces out and back in: export (JSONL, CSV, pcap), info, compare and traffic import.

Round trips use a real recorded run; the pcap is read back by an independent reader (dpkt, and
tshark where it is installed). Compare runs on the hand-made summaries in tests/data/traces.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import struct
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dpkt
import msgpack
import pytest

from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.errors import ScenarioError
from orbitmesh.run.compare import check_thresholds, compare_runs, format_comparison, run_compare
from orbitmesh.run.export import EVENT_COLUMNS, export_csv, export_jsonl, iter_event_rows
from orbitmesh.run.launch.local import RunOptions, RunResult, run
from orbitmesh.run.pcap_export import export_node_map, export_pcap, flow_port, node_address
from orbitmesh.run.trace import Offered, offered_traffic, read_manifest
from orbitmesh.run.trace_info import format_info, trace_info
from orbitmesh.run.traffic_import import load_address_map, load_traffic_csv, load_traffic_pcap

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scenarios" / "demo.yaml"
DATA = ROOT / "tests" / "data" / "traces"
ONE_MICROSECOND = 1e-6
ONE_NANOSECOND = 1e-9
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo_ids() -> list[str]:
    return list(build_topology(load_scenario(DEMO)).node_ids)


# -- a real recorded run ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    out = tmp_path_factory.mktemp("trace") / "run"
    return run(RunOptions(scenario=DEMO, duration_s=10, speed=4, workers=2, out=out,
                          progress=False))


@pytest.fixture(scope="module")
def csv_rows(recorded: RunResult) -> list[dict[str, str]]:
    buf = io.StringIO()
    export_csv(recorded.run_dir, buf)
    buf.seek(0)
    return list(csv.DictReader(buf))


@pytest.mark.broker
def test_csv_export_reimports_as_the_recorded_offered_traffic(
        recorded: RunResult, csv_rows: list[dict[str, str]], tmp_path: Path) -> None:
    manifest = read_manifest(recorded.run_dir)
    users = {f["name"] for f in manifest["flows"]}
    offers = [r for r in csv_rows if r["event"] == "offer" and r["flow"] in users]
    path = tmp_path / "offers.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["time_s", "source", "destination", "bytes", "flow"])
        writer.writerows([r["t_s"], r["source"], r["destination"], r["size"], r["flow"]]
                         for r in offers)
    expected = offered_traffic(recorded.run_dir)
    assert expected, "the demo offers user traffic"
    assert load_traffic_csv(path, manifest["node_ids"]) == expected


@pytest.mark.broker
def test_exports_are_time_ordered_and_count_what_the_workers_counted(
        recorded: RunResult, csv_rows: list[dict[str, str]]) -> None:
    times = [float(r["t_s"]) for r in csv_rows]
    assert times == sorted(times)
    assert list(csv_rows[0]) == list(EVENT_COLUMNS)
    info = trace_info(recorded.run_dir)
    assert Counter(r["event"] for r in csv_rows) == Counter(
        {k: v for k, v in info["events"].items() if v})
    # Counts from the event streams against report.py's merge of the workers' stats files.
    by_name = {f["name"]: f for f in info["flows"]}
    for flow in recorded.summary["flows"]:
        mine = by_name[flow["name"]]
        assert (mine["offered"], mine["delivered"], mine["dropped"]) == (
            flow["offered"], flow["delivered"], sum(flow["dropped"].values()))
    assert by_name["telemetry"]["offered"] == recorded.summary["telemetry"]["generated"]
    assert info["complete"] and info["nodes"]["count"] == len(read_manifest(
        recorded.run_dir)["node_ids"])
    text = format_info(info)
    assert "status: complete" in text and "tokyo-brussels" in text


@pytest.mark.broker
def test_jsonl_export_holds_the_same_rows_as_csv(recorded: RunResult,
                                                 csv_rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    n = export_jsonl(recorded.run_dir, buf)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert n == len(lines) == len(csv_rows)
    for obj, row in zip(lines, csv_rows, strict=True):
        assert set(obj) <= set(EVENT_COLUMNS)
        assert {k: str(v) for k, v in obj.items()} == {k: v for k, v in row.items() if v}


def _hops(csv_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in csv_rows if r["event"] == "hop"]


def _pcap(recorded: RunResult, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    pcap, nodes = tmp_path / "run.pcap", tmp_path / "nodes.csv"
    with pcap.open("wb") as fh:
        export_pcap(recorded.run_dir, fh)
    with nodes.open("w") as fh:
        export_node_map(recorded.run_dir, fh)
    with nodes.open() as fh:
        return pcap, {r["address"]: r["node_id"] for r in csv.DictReader(fh)}


@pytest.mark.broker
def test_pcap_reads_back_with_dpkt(recorded: RunResult, csv_rows: list[dict[str, str]],
                                   tmp_path: Path) -> None:
    pcap, node_of = _pcap(recorded, tmp_path)
    hops = _hops(csv_rows)
    flows = {f["name"]: f["index"] for f in read_manifest(recorded.run_dir)["flows"]}
    flows |= {"telemetry": -1, "telecommands": -2, "acks": -3}
    with pcap.open("rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        assert reader.datalink() == 101, "LINKTYPE_RAW"
        packets = list(reader)
    assert len(packets) == len(hops) > 0
    last = 0.0
    for (ts, raw), hop in zip(packets, hops, strict=True):
        ip = dpkt.ip.IP(raw)
        header = raw[:20]
        assert sum(struct.unpack(">10H", header)) % 0xFFFF == 0, "IPv4 header checksum"
        assert node_of[socket.inet_ntoa(ip.src)] == hop["from"]
        assert node_of[socket.inet_ntoa(ip.dst)] == hop["to"]
        assert ip.len == 28 + int(hop["size"])
        assert struct.unpack(">H", raw[22:24])[0] == flow_port(flows[hop["flow"]])
        assert raw[28:30] == b"OM"
        assert ts >= last
        last = ts
        assert abs(ts - (EPOCH.timestamp() + float(hop["t_s"]))) <= ONE_MICROSECOND


@pytest.mark.broker
def test_pcap_reads_back_with_tshark(recorded: RunResult, csv_rows: list[dict[str, str]],
                                     tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (the dpkt check above still ran)")
    pcap, node_of = _pcap(recorded, tmp_path)
    hops = _hops(csv_rows)
    out = subprocess.run(
        [tshark, "-n", "-r", str(pcap), "-o", "ip.check_checksum:TRUE", "-T", "fields",
         "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.checksum.status"],
        capture_output=True, text=True, check=True, timeout=120).stdout.splitlines()
    assert len(out) == len(hops)
    for line, hop in zip(out, hops, strict=True):
        epoch_s, src, dst, status = line.split("\t")
        assert (node_of[src], node_of[dst]) == (hop["from"], hop["to"])
        assert status == "1", "tshark says the IPv4 checksum is good"
        assert abs(float(epoch_s) - (EPOCH.timestamp() + float(hop["t_s"]))) <= ONE_MICROSECOND
    tokyo = next(a for a, n in node_of.items() if n == "tokyo")
    only = subprocess.run([tshark, "-n", "-r", str(pcap), "-Y", f"ip.src=={tokyo}"],
                          capture_output=True, text=True, check=True, timeout=120)
    assert len(only.stdout.splitlines()) == sum(h["from"] == "tokyo" for h in hops) > 0


@pytest.mark.broker
def test_pcap_with_its_node_map_imports_one_frame_per_hop(
        recorded: RunResult, csv_rows: list[dict[str, str]], tmp_path: Path) -> None:
    pcap, _ = _pcap(recorded, tmp_path)
    ids = read_manifest(recorded.run_dir)["node_ids"]
    offered, warnings = load_traffic_pcap(pcap, tmp_path / "nodes.csv", ids)
    hops = _hops(csv_rows)
    assert warnings == []
    assert [(o.source, o.destination, o.size) for o in offered] == [
        (h["from"], h["to"], int(h["size"]) + 8) for h in hops]  # IP payload: UDP header + frame
    t0 = float(hops[0]["t_s"])
    assert max(abs(o.t_s - (float(h["t_s"]) - t0)) for o, h in zip(offered, hops, strict=True)
               ) <= 2 * ONE_MICROSECOND


# -- a hand-written trace (the documented format) -----------------------------------------------

def _write_trace(run_dir: Path, streams: list[list[list[Any]]], *, complete: bool = True,
                 cut_last_bytes: int = 0) -> Path:
    run_dir.mkdir(parents=True)
    manifest = {"format": "orbitmesh-trace", "version": "1.0", "run_id": "hand", "scenario": "x",
                "epoch": "2026-01-01T00:00:00Z", "speed": 2.0, "duration_s": 10.0,
                "tick_s": 1.0, "seed": 1, "t0_wall": 1000.0,
                "node_ids": ["tokyo", "sat-a", "brussels"],
                "flows": [{"index": 0, "name": "tokyo-brussels", "source": "tokyo",
                           "destination": "brussels", "policy": None}],
                "builtin_flows": {"-1": "telemetry", "-2": "telecommands", "-3": "acks"},
                "faults": [], "complete": complete}
    (run_dir / "trace.json").write_text(json.dumps(manifest))
    for k, records in enumerate(streams):
        body = b"".join(msgpack.packb(r) for r in records)
        if k == len(streams) - 1:  # the last stream ends mid-record, as a killed worker's does
            body = body[:len(body) - cut_last_bytes]
        (run_dir / f"events-w{k}.msgpack").write_bytes(body)
    return run_dir


# A hop is stamped with its intended arrival, a little before the clock that stamps the offer
# written just before it in the same stream: streams are nearly, not exactly, time-ordered.
HAND_STREAMS = [
    [["offer", 1000.50, 1, 0, 0, 0, 2, 500], ["offer", 1000.53, 2, 0, 0, 0, 2, 40],
     ["offer", 1000.535, 4, 0, 0, 0, 2, 40], ["hop", 1000.52, 1, 0, 0, 1, 500],
     ["drop", 1000.60, 2, 0, 0, "queue", None]],
    [["hop", 1000.55, 1, 0, 1, 2, 500], ["deliver", 1000.56, 1, 0, 2, 2, 120.0],
     ["offer", 1000.58, 3, -1, 1, 1, 0, 128]],
]


def test_export_merges_nearly_ordered_worker_streams(tmp_path: Path) -> None:
    trace = _write_trace(tmp_path / "run", HAND_STREAMS)
    rows = list(iter_event_rows(trace))
    assert [(r["event"], r["frame"]) for r in rows] == [
        ("offer", 1), ("hop", 1), ("offer", 2), ("offer", 4), ("hop", 1), ("deliver", 1),
        ("offer", 3), ("drop", 2)]
    assert rows[1] == {"t_s": pytest.approx(1.04), "event": "hop", "frame": 1,
                       "flow": "tokyo-brussels", "kind": "data", "from": "tokyo", "to": "sat-a",
                       "size": 500}
    assert rows[6]["flow"] == "telemetry" and rows[6]["kind"] == "telemetry"
    assert rows[7]["reason"] == "queue" and rows[7]["node"] == "tokyo"


def test_pcap_timestamps_are_epoch_plus_scenario_time(tmp_path: Path) -> None:
    trace = _write_trace(tmp_path / "run", HAND_STREAMS)
    buf = io.BytesIO()
    assert export_pcap(trace, buf) == 2
    buf.seek(0)
    packets = list(dpkt.pcap.Reader(buf))
    arrivals_s = [(1000.52 - 1000.0) * 2, (1000.55 - 1000.0) * 2]
    for (ts, raw), t_s, (src, dst), hop in zip(
            packets, arrivals_s, [("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.3")], (1, 2),
            strict=True):
        assert abs(ts - (EPOCH.timestamp() + t_s)) <= ONE_MICROSECOND
        ip = dpkt.ip.IP(raw)
        assert (socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)) == (src, dst)
        assert raw[31] == hop, "hop number in the payload header"
        assert len(raw) == 96 and ip.len == 528


def test_trace_in_progress_is_read_up_to_its_last_whole_record(tmp_path: Path) -> None:
    trace = _write_trace(tmp_path / "run", HAND_STREAMS, complete=False, cut_last_bytes=3)
    info = trace_info(trace)
    assert not info["complete"]
    assert info["events"] == {"offer": 3, "hop": 2, "deliver": 1, "drop": 1}
    assert info["flows"][0] == {
        "index": 0, "name": "tokyo-brussels", "source": "tokyo", "destination": "brussels",
        "offered": 3, "delivered": 1, "dropped": 1, "dropped_by_reason": {"queue": 1},
        "in_flight_or_lost": 1}
    assert info["span"]["first_s"] == pytest.approx(1.0)
    assert info["span"]["first_utc"] == "2026-01-01T00:00:01.000Z"
    assert "incomplete" in format_info(info)


def test_node_addresses_never_end_in_0_or_255_and_are_unique() -> None:
    assert [node_address(i) for i in (0, 4, 253, 254, 254 * 256)] == [
        "10.0.0.1", "10.0.0.5", "10.0.0.254", "10.0.1.1", "10.1.0.1"]
    addresses = [node_address(i) for i in range(0, 254 * 65536, 997)]
    assert len(set(addresses)) == len(addresses)
    assert all(a.rsplit(".", 1)[1] not in ("0", "255") for a in addresses)


# -- compare ------------------------------------------------------------------------------------

def test_compare_puts_flows_side_by_side() -> None:
    result = compare_runs(DATA / "run-a", DATA / "run-b")
    assert result["only_a"] == ["kourou-svalbard"] and result["only_b"] == ["svalbard-tokyo"]
    tb = {f["name"]: f for f in result["flows"]}["tokyo-brussels"]
    assert tb["delta"]["delivery_ratio_pp"] == pytest.approx(-4.0)
    assert tb["delta"]["p50_pct"] == pytest.approx(5.0)
    assert tb["delta"]["p95_ms"] == pytest.approx(14.0)
    assert tb["delta"]["p99_pct"] == pytest.approx(122.222, abs=1e-3)
    text = format_comparison(result)
    assert "tokyo-brussels" in text and "-4.00 pp" in text and "+20.0" in text
    assert "only in A: kourou-svalbard" in text


@pytest.mark.parametrize(("latency_pct", "delivery_pp", "expected"), [
    (None, None, []),
    (25.0, 5.0, ["kourou-svalbard: in run A but not in run B"]),
    (10.0, None, ["kourou-svalbard: in run A", "tokyo-brussels: latency p95 70.000 -> 84.000"]),
    (None, 3.0, ["kourou-svalbard: in run A", "tokyo-brussels: delivery ratio 0.9900 -> 0.9500"]),
    (4.0, 3.0, ["kourou-svalbard", "delivery ratio", "latency p50", "latency p95"]),
])
def test_thresholds(latency_pct: float | None, delivery_pp: float | None,
                    expected: list[str]) -> None:
    violations = check_thresholds(compare_runs(DATA / "run-a", DATA / "run-b"), latency_pct,
                                  delivery_pp)
    assert len(violations) == len(expected)
    for line, fragment in zip(violations, expected, strict=True):
        assert fragment in line


def test_compare_exit_codes(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    a, b = DATA / "run-a", DATA / "run-b"
    assert run_compare(a, a, max_latency_increase_pct=0, max_delivery_drop_pct=0,
                       out=out, err=err) == 0
    assert "thresholds: pass" in out.getvalue()
    assert run_compare(a, b, max_latency_increase_pct=10, out=out, err=err) == 1
    assert run_compare(a, b, out=out, err=err) == 0, "no threshold, nothing to fail"
    assert run_compare(a, tmp_path, out=out, err=err) == 2
    assert "no summary.json" in err.getvalue()
    future = tmp_path / "summary.json"
    future.write_text(json.dumps({"version": "2.0", "flows": []}))
    assert run_compare(a, future, out=out, err=err) == 2
    assert run_compare(a, b, max_delivery_drop_pct=-1, out=out, err=err) == 2
    as_json = io.StringIO()
    assert run_compare(a, b, max_latency_increase_pct=10, as_json=True, out=as_json) == 1
    assert len(json.loads(as_json.getvalue())["violations"]) == 2


# -- CSV import ---------------------------------------------------------------------------------

def _bad_csv(tmp_path: Path, body: str, demo_ids: list[str]) -> list[str]:
    path = tmp_path / "traffic.csv"
    path.write_text(body)
    with pytest.raises(ScenarioError) as err:
        load_traffic_csv(path, demo_ids)
    assert str(err.value).startswith(f"{path}: ")
    return [p.removeprefix(f"{path}:") for p in err.value.problems]


def test_csv_import_reads_rows_and_default_flow(tmp_path: Path, demo_ids: list[str]) -> None:
    path = tmp_path / "t.csv"
    path.write_text("# a comment\ntime_s,source,destination,bytes\n0,tokyo,brussels,1200\n"
                    "\n0.5, perth ,darmstadt,64\n0.5,tokyo,brussels,1\n")
    assert load_traffic_csv(path, demo_ids) == [
        Offered(0.0, "tokyo-brussels", "tokyo", "brussels", 1200),
        Offered(0.5, "perth-darmstadt", "perth", "darmstadt", 64),
        Offered(0.5, "tokyo-brussels", "tokyo", "brussels", 1)]


@pytest.mark.parametrize(("body", "expected"), [
    ("time_s,source,destination,bytes\n0,tokio,brussels,100\n",
     ["2: source: unknown node 'tokio' (did you mean 'tokyo'"]),
    ("time_s,source,destination,bytes\n5,tokyo,brussels,100\n1,tokyo,brussels,100\n",
     ["3: time_s 1 is before 5 on line 2"]),
    ("time_s,source,destination,bytes\n0,tokyo,brussels,100\n1,tokyo,bru",
     ["3: truncated row: 3 of 4 fields"]),
    ("time_s,source,destination,bytes\n-1,tokyo,brussels,100\n", ["2: time_s -1 is negative"]),
    ("time_s,source,destination,bytes\nsoon,tokyo,brussels,1.5\n",
     ["2: time_s 'soon'", "2: bytes '1.5'"]),
    ("time,from,to,size\n0,tokyo,brussels,100\n", ["1: header 'time,from,to,size'"]),
    ("time_s,source,destination,bytes,flow\n0,tokyo,brussels,10,f\n1,perth,brussels,10,f\n",
     ["3: flow 'f' goes perth -> brussels here but tokyo -> brussels on line 2"]),
    ("time_s,source,destination,bytes\n0,tokyo,tokyo,10\n1,tokyo,brussels,10,x\n",
     ["2: source and destination are the same node", "3: 5 fields, expected 4"]),
])
def test_csv_import_names_each_bad_line(tmp_path: Path, demo_ids: list[str], body: str,
                                        expected: list[str]) -> None:
    problems = _bad_csv(tmp_path, body, demo_ids)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert problem.startswith(fragment), problem


# -- pcap import --------------------------------------------------------------------------------

def _udp4(src: str, dst: str, sport: int, dport: int, payload_b: int) -> dpkt.ip.IP:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=b"x" * payload_b)
    udp.ulen = len(udp)
    return dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst),
                      p=dpkt.ip.IP_PROTO_UDP, data=udp)


def _tcp6(src: str, dst: str, sport: int, dport: int, payload_b: int) -> dpkt.ip6.IP6:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, data=b"y" * payload_b)
    return dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src),
                        dst=socket.inet_pton(socket.AF_INET6, dst), nxt=dpkt.ip.IP_PROTO_TCP,
                        hlim=64, plen=len(tcp), data=tcp)


def _ether(ip: dpkt.Packet) -> bytes:
    kind = dpkt.ethernet.ETH_TYPE_IP6 if isinstance(ip, dpkt.ip6.IP6) else \
        dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=kind, data=ip))


T0 = 1_767_225_600.0
PACKETS: list[tuple[float, Callable[[], bytes]]] = [
    (T0 + 0.25, lambda: _ether(_udp4("192.0.2.10", "192.0.2.20", 1000, 2000, 100))),
    (T0 + 1.50, lambda: _ether(_udp4("192.0.2.30", "192.0.2.10", 5000, 9, 10))),
    (T0 + 2.00, lambda: _ether(_tcp6("2001:db8::1", "2001:db8::2", 7, 443, 30))),
    (T0 + 2.25, lambda: _ether(_udp4("192.0.2.99", "192.0.2.10", 1, 2, 5))),
]


def _capture(path: Path, packets: list[tuple[float, Callable[[], bytes]]], fmt: str) -> Path:
    with path.open("wb") as fh:
        writer = (dpkt.pcapng.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB) if fmt == "pcapng"
                  else dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB, nano=fmt == "nano"))
        for ts, make in packets:
            writer.writepkt(make(), ts=ts)
    return path


@pytest.mark.parametrize("fmt", ["pcap", "nano", "pcapng"])
def test_pcap_import_maps_addresses_and_ports(tmp_path: Path, demo_ids: list[str],
                                              fmt: str) -> None:
    capture = _capture(tmp_path / f"in.{fmt}", PACKETS, fmt)
    offered, warnings = load_traffic_pcap(capture, DATA / "mapping.csv", demo_ids)
    assert [(o.flow, o.source, o.destination, o.size) for o in offered] == [
        ("tokyo-brussels", "tokyo", "brussels", 108),
        ("perth-tokyo", "perth", "tokyo", 18),
        ("kourou-svalbard", "kourou", "svalbard", 50)]
    for o, t_s in zip(offered, (0.0, 1.25, 1.75), strict=True):
        assert abs(o.t_s - t_s) <= ONE_MICROSECOND
    assert len(warnings) == 1 and "1 of 4 packets skipped" in warnings[0]
    assert "192.0.2.99 (1 packets)" in warnings[0]


def test_pcap_import_with_no_mapped_packet_is_refused(tmp_path: Path,
                                                      demo_ids: list[str]) -> None:
    capture = _capture(tmp_path / "in.pcap", PACKETS[3:], "pcap")
    with pytest.raises(ScenarioError, match=r"none of its 1 packets .* 192\.0\.2\.99"):
        load_traffic_pcap(capture, DATA / "mapping.csv", demo_ids)


@pytest.mark.parametrize(("fmt", "cut_b", "packet"), [
    ("pcap", 10, 4), ("pcap", len(_ether(_udp4("192.0.2.99", "192.0.2.10", 1, 2, 5))) + 10, 4),
    ("pcapng", 7, 4), ("pcapng", 60, 4)])
def test_truncated_capture_names_the_packet(tmp_path: Path, demo_ids: list[str], fmt: str,
                                            cut_b: int, packet: int) -> None:
    capture = _capture(tmp_path / f"in.{fmt}", PACKETS, fmt)
    capture.write_bytes(capture.read_bytes()[:-cut_b])
    with pytest.raises(ScenarioError, match=rf"in\.{fmt}: packet {packet}: .*truncated"):
        load_traffic_pcap(capture, DATA / "mapping.csv", demo_ids)


def test_non_ip_packet_is_named(tmp_path: Path, demo_ids: list[str]) -> None:
    arp = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\xff" * 6,
                                       type=dpkt.ethernet.ETH_TYPE_ARP, data=dpkt.arp.ARP()))
    capture = _capture(tmp_path / "in.pcap", [PACKETS[0], (T0 + 1, lambda: arp)], "pcap")
    with pytest.raises(ScenarioError, match=r"packet 2 is not an IP packet \(ethertype 0x0806"):
        load_traffic_pcap(capture, DATA / "mapping.csv", demo_ids)


def test_not_a_capture_is_refused(tmp_path: Path, demo_ids: list[str]) -> None:
    path = tmp_path / "in.pcap"
    path.write_text("time_s,source\n")
    with pytest.raises(ScenarioError, match="not a pcap or pcapng capture"):
        load_traffic_pcap(path, DATA / "mapping.csv", demo_ids)


def test_mapping_file_problems_are_listed_by_line(tmp_path: Path, demo_ids: list[str]) -> None:
    path = tmp_path / "map.csv"
    path.write_text("address,node_id\n192.0.2.1,tokio\n192.0.2.300,perth\n192.0.2.2,perth\n"
                    "192.0.2.2,kourou\n10.0.0.1:70000,perth\n")
    with pytest.raises(ScenarioError) as err:
        load_address_map(path, demo_ids)
    assert [p.removeprefix(f"{path}:").split(":")[0] for p in err.value.problems] == [
        "2", "3", "5", "6"]
    assert "did you mean 'tokyo'" in err.value.problems[0]


def test_csv_examples_in_the_docs_load(tmp_path: Path, demo_ids: list[str]) -> None:
    doc = (ROOT / "docs" / "traces.md").read_text(encoding="utf-8")
    traffic, mapping = [block.split("```", 1)[0] for block in doc.split("```csv\n")[1:]]
    (tmp_path / "traffic.csv").write_text(traffic)
    (tmp_path / "hosts.csv").write_text(mapping)
    assert [(o.flow, o.size) for o in load_traffic_csv(tmp_path / "traffic.csv", demo_ids)] == [
        ("bulk", 1200), ("bulk", 1200), ("perth-darmstadt", 64)]
    assert len(load_address_map(tmp_path / "hosts.csv", demo_ids)) == 5
