"""Endpoints: real packets and datagrams across the emulated network.

Unit tests drive :class:`nodes.endpoints.EndpointHost` on a hand-made runtime, with pipes standing
in for TUN devices, and the CLI on a hand-written record. The live runs (real mosquitto, real
namespaces, ping and iperf3) are in tests/test_endpoints_live.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from nodes import icmp
from nodes.endpoints import EndpointHost
from nodes.roles import Roles
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import GSL, TERRESTRIAL, Topology, build_topology
from orbitmesh.errors import ScenarioError
from orbitmesh.protocol.wire import F_DST, FLOW_ENDPOINT, Topics, decode_batch
from orbitmesh.run.launch import netns
from tests.test_runtime import apply, drain, runtime

PROJECT = Path(__file__).resolve().parent.parent
DEMO = PROJECT / "scenarios" / "demo.yaml"

TINY = """
name: tiny
epoch: 2026-01-01T00:00:00Z
duration_s: 60
constellations:
  - name: t
    operator: op
    walker: {inclination_deg: 53.0, satellites: 4, planes: 1, phasing: 0, altitude_km: 550.0}
    telemetry: {rate_hz: 0}
stations:
  - {name: alpha, operator: op, lat_deg: 0.0, lon_deg: 0.0}
  - {name: bravo, operator: op, lat_deg: 10.0, lon_deg: 10.0}
ops_centres:
  - {name: ops, operator: op, lat_deg: 5.0, lon_deg: 5.0, stations: [alpha, bravo]}
links:
  gsl: {rate_bps: 1.0e6, mtu_bytes: 1000}
  terrestrial: {rate_bps: 4.0e6}
endpoints:
  ip: [{node: alpha}, {node: bravo}]
"""
ALPHA, BRAVO, OPS = 4, 5, 6


# --- helpers ------------------------------------------------------------------------------------

class Published:
    """A fake transport: records ``publish`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        self.calls.append((topic, payload))


def tiny(extra: str = "") -> Topology:
    """The tiny scenario (alpha and bravo are IP endpoints) plus ``extra`` YAML."""
    return build_topology(parse_scenario(TINY + extra, Path("/nonexistent/tiny.yaml")))


def host_on_pipes(topology: Topology) -> tuple[EndpointHost, dict[int, int], Published]:
    """An EndpointHost whose TUNs are pipes (read ends returned per node), clock started."""
    rt = runtime(topology)
    roles = Roles(rt, duration_s=60.0)
    plan = netns.make_plan(topology, topology.scenario.endpoints, "unit", rt.owner)
    published = Published()
    host = EndpointHost(roles, plan, transport=published, topics=Topics("unit"),  # type: ignore[arg-type]
                        now=lambda: 0.0, started=lambda: True, after_input=lambda: None)
    roles.endpoint_deliver = host.deliver
    readers = {}
    for e in plan["ip"]:
        r, w = os.pipe()
        os.set_blocking(r, False)
        host.tun_fd[e["index"]] = w
        readers[e["index"]] = r
    return host, readers, published


def echo4(src: str, dst: str, size: int, *, df: bool = True) -> bytes:
    """An IPv4 ICMP echo request of ``size`` bytes in all."""
    body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"x" * (size - 28)
    body = body[:2] + struct.pack("!H", icmp.checksum(body)) + body[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 7, 0x4000 if df else 0, 64, 1, 0,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    header = header[:10] + struct.pack("!H", icmp.checksum(header)) + header[12:]
    return header + body


def echo6(src: str, dst: str, size: int) -> bytes:
    """An IPv6 ICMPv6 echo request of ``size`` bytes in all (checksum left 0: not checked)."""
    body = struct.pack("!BBHHH", 128, 0, 0, 0x1234, 1) + b"y" * (size - 48)
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), 58, 64,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + body


def read_all(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


# --- unit tests ---------------------------------------------------------------------------------

def test_packet_crosses_the_path_and_arrives_whole_at_its_due_time() -> None:
    topology = tiny()
    host, readers, _ = host_on_pipes(topology)
    rt = host.rt
    # alpha - ops - bravo over fibre, 5 ms and 7 ms.
    apply(rt, 0.0, [(ALPHA, OPS, TERRESTRIAL, 0.005), (OPS, BRAVO, TERRESTRIAL, 0.007)],
          [[ALPHA, OPS, BRAVO], [BRAVO, OPS, ALPHA]])
    a4, b4 = (e["ipv4"] for e in host.plan["ip"])
    packet = echo4(a4, b4, 500)
    host.packet_in(ALPHA, packet, 1.0)
    drain(rt, until=1.0 + 0.012)
    assert read_all(readers[BRAVO]) == b""  # serialisation still ahead
    drain(rt)
    assert read_all(readers[BRAVO]) == packet
    fs = rt.stats.flows[FLOW_ENDPOINT]
    assert (fs.offered, fs.delivered) == (1, 1)
    expected_s = 0.012 + 2 * 500 * 8 / 4.0e6
    assert fs.latency_ms.percentiles((50,))[0] == pytest.approx(expected_s * 1000, rel=0.02)
    assert host.as_dict()["bravo"]["delivered"] == 1


def test_unknown_address_is_dropped_and_answered_with_host_unreachable() -> None:
    host, readers, _ = host_on_pipes(tiny())
    a4, a6 = host.plan["ip"][0]["ipv4"], host.plan["ip"][0]["ipv6"]
    packet = echo4(a4, "10.77.200.9", 84)
    host.packet_in(ALPHA, packet, 1.0)
    assert dict(host.rt.stats.flows[FLOW_ENDPOINT].dropped) == {"no_endpoint": 1}
    reply = read_all(readers[ALPHA])
    assert icmp.checksum(reply[:20]) == 0 and icmp.checksum(reply[20:]) == 0
    assert reply[12:16] == ipaddress.ip_address("10.77.0.1").packed  # the network's address
    assert reply[16:20] == ipaddress.ip_address(a4).packed
    assert reply[20:22] == bytes([3, 1])
    assert reply[28:] == packet[:28]  # the original header and 8 octets
    host.packet_in(ALPHA, echo6(a6, "fd77::999", 104), 1.0)
    reply6 = read_all(readers[ALPHA])
    assert reply6[6] == 58 and reply6[40:42] == bytes([1, 3])
    pseudo = reply6[8:40] + struct.pack("!I3xB", len(reply6) - 40, 58)
    assert icmp.checksum(pseudo + reply6[40:]) == 0


def test_packet_over_the_path_mtu_gets_fragmentation_needed() -> None:
    host, readers, _ = host_on_pipes(tiny())
    rt = host.rt
    apply(rt, 0.0, [(ALPHA, 0, GSL, 0.003), (0, BRAVO, GSL, 0.004)],
          [[ALPHA, 0, BRAVO], [BRAVO, 0, ALPHA]])
    (a4, a6), (b4, b6) = ((e["ipv4"], e["ipv6"]) for e in host.plan["ip"])
    host.packet_in(ALPHA, echo4(a4, b4, 1000), 1.0)  # exactly the MTU: carried
    host.packet_in(ALPHA, echo4(a4, b4, 1001), 1.0)
    reply = read_all(readers[ALPHA])
    assert reply[20:22] == bytes([3, 4]) and struct.unpack("!H", reply[26:28])[0] == 1000
    host.packet_in(ALPHA, echo4(a4, b4, 1200, df=False), 1.0)  # no DF: dropped, no answer
    assert read_all(readers[ALPHA]) == b""
    host.packet_in(ALPHA, echo6(a6, b6, 1100), 1.0)
    reply6 = read_all(readers[ALPHA])
    assert reply6[40:42] == bytes([2, 0]) and struct.unpack("!I", reply6[44:48])[0] == 1000
    drain(rt)
    fs = rt.stats.flows[FLOW_ENDPOINT]
    assert (fs.offered, fs.delivered, dict(fs.dropped)) == (4, 1, {"mtu": 3})


def test_packets_before_the_clock_or_outside_the_prefix_are_refused_not_offered() -> None:
    host, _, _ = host_on_pipes(tiny())
    a4, b4 = (e["ipv4"] for e in host.plan["ip"])
    host.packet_in(ALPHA, echo4(a4, "224.0.0.251", 60), 1.0)  # mDNS: no router forwards it
    host.packet_in(ALPHA, b"\x00garbage", 1.0)
    host.started = lambda: False
    host.packet_in(ALPHA, echo4(a4, b4, 60), 1.0)
    assert host.as_dict()["alpha"]["refused"] == {"before_start": 1, "not_ip": 1,
                                                  "outside_prefix": 1}
    assert host.rt.stats.flows[FLOW_ENDPOINT].offered == 0


def test_mqtt_outbox_publishes_every_delivered_frame_as_a_batch() -> None:
    host, _, published = host_on_pipes(tiny("  mqtt: [bravo]\n"))
    rt = host.rt
    host.mqtt_nodes = {BRAVO}
    apply(rt, 0.0, [(ALPHA, OPS, TERRESTRIAL, 0.001), (OPS, BRAVO, TERRESTRIAL, 0.001)],
          [[ALPHA, OPS, BRAVO]])
    a4, b4 = (e["ipv4"] for e in host.plan["ip"])
    for _ in range(3):
        host.packet_in(ALPHA, echo4(a4, b4, 100), 1.0)
    drain(rt)
    assert [t for t, _ in published.calls] == ["orbitmesh/unit/node/bravo/out"] * 3
    items, refused = decode_batch(published.calls[0][1], topology_size := rt.n_nodes)
    assert refused == [] and topology_size == 7
    assert items[0][0] == BRAVO and items[0][1][F_DST] == BRAVO


@pytest.mark.parametrize(("extra", "says"), [
    ("  udp: [{node: alpha, listen: '10.0.0.1:9000', to: bravo, deliver: '127.0.0.1:9001'}]\n",
     "endpoints.udp[0].listen: 10.0.0.1 is not a loopback address"),
    ("  ipv4_prefix: 8.8.0.0/16\n", "expected a private IPv4 prefix"),
    ("  ipv6_prefix: 2001:db8::/48\n", "expected a unique-local IPv6 prefix"),
    ("  mqtt: [charlie]\n", "endpoints.mqtt[0]: unknown node 'charlie'"),
])
def test_bad_endpoint_sections_name_the_line_and_field(extra: str, says: str) -> None:
    with pytest.raises(ScenarioError) as err:
        tiny(extra)
    assert says in str(err.value)
    assert "/nonexistent/tiny.yaml:" in str(err.value)


def test_address_outside_the_prefix_is_refused() -> None:
    text = TINY.replace("ip: [{node: alpha}, {node: bravo}]",
                        "ip: [{node: alpha, ipv4: 10.78.0.5}, {node: bravo}]")
    with pytest.raises(ScenarioError, match=r"endpoints\.ip\[0\]\.ipv4: 10.78.0.5 is not a host"):
        parse_scenario(text, Path("/nonexistent/tiny.yaml"))


def test_address_plan_is_stable_unique_and_inside_the_prefixes() -> None:
    topology = tiny()
    plan = netns.make_plan(topology, topology.scenario.endpoints, "r1", [0] * 7)
    assert [(e["ipv4"], e["ipv6"]) for e in plan["ip"]] == [("10.77.0.6", "fd77::6"),
                                                             ("10.77.0.7", "fd77::7")]
    assert plan["gateway"] == ["10.77.0.1", "fd77::1"]
    assert {e["namespace"] for e in plan["ip"]} == {"om-r1-alpha", "om-r1-bravo"}
    assert all(len(e["tun"]) <= 15 for e in plan["ip"])


def test_run_without_privileges_says_what_is_missing_and_starts_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orbitmesh.run.cli import main

    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netns, "_has_cap_net_admin", lambda: False)
    out = tmp_path / "run"
    assert main(["run", str(DEMO), "--endpoints", "tokyo,brussels", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "IP endpoints (tokyo, brussels) need: root or CAP_NET_ADMIN" in err
    assert not out.exists()


def test_endpoints_lists_the_record_and_exec_refuses_what_it_cannot_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orbitmesh.run.cli import main

    topology = tiny("  udp: [{node: alpha, listen: '127.0.0.1:9000', to: bravo, "
                    "deliver: '127.0.0.1:9001'}]\n  mqtt: [bravo]\n")
    netns.write_plan(tmp_path, topology, "listing", [0] * 7)
    assert main(["endpoints", str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["node"], r["kind"]) for r in rows] == [("alpha", "ip"), ("bravo", "ip"),
                                                      ("alpha", "udp"), ("bravo", "mqtt")]
    assert rows[0]["namespace"] == "om-listing-alpha" and rows[0]["state"] == "absent"
    assert rows[3]["topic"] == "orbitmesh/listing/node/bravo/out"
    assert main(["endpoints", str(tmp_path)]) == 0
    assert "10.77.0.6 fd77::6" in capsys.readouterr().out
    assert main(["exec", str(tmp_path), "ops", "--", "true"]) == 2
    assert "ops is not an IP endpoint of this run (IP endpoints: alpha, bravo)" in \
        capsys.readouterr().err
    assert main(["exec", str(tmp_path), "alpha", "--", "true"]) == 1
    assert "namespace om-listing-alpha of alpha does not exist" in capsys.readouterr().err
    assert main(["exec", str(tmp_path), "alpha"]) == 2
    assert main(["endpoints", str(tmp_path / "nowhere")]) == 2
