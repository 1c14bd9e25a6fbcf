"""The MCS bridge: packet framing, TC routing, the TM ack, the sockets, and a live run.

Space packets are decoded with ``spacepackets`` (an independent CCSDS implementation), never
with orbitmesh's own encoder. The live test runs scenarios/demo.yaml with darmstadt's ``mcs``
set against a real mosquitto (tests/mcs_live.py plays the MCS).
"""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from spacepackets.ccsds.spacepacket import (
    PacketType,
    SequenceFlags,
    SpacePacket,
    SpacePacketHeader,
)

from broker.embedded import free_loopback_port
from nodes.mcs_bridge import McsBridges
from nodes.mcs_packets import StreamSplitter, TcRouter, ack_packet, datagram_packet, read_ack
from nodes.roles import Roles
from nodes.runtime import NodeRuntime
from nodes.stats import Stats
from orbitmesh.core.mcs_spec import ACK_APID, ACK_EXECUTED, ACK_NOT_A_PACKET
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import GSL, ISL, TERRESTRIAL, build_topology
from orbitmesh.errors import RunError, ScenarioError
from tests.conftest import require_mosquitto
from tests.mcs_live import analyse, mcs_session
from tests.test_runtime import ALPHA, N_NODES, OPS, SAT0, SAT1, SAT2, SAT3, TINY, apply, drain

TC_BASE = 1024


def tc(apid: int, seq: int, data: bytes = b"\x05\x06") -> bytes:
    """A TC space packet made by spacepackets (the MCS side)."""
    header = SpacePacketHeader(packet_type=PacketType.TC, apid=apid, seq_count=seq,
                               data_len=len(data) - 1, sec_header_flag=False,
                               seq_flags=SequenceFlags.UNSEGMENTED)
    return SpacePacket(header, None, data).pack()


def decode(packet: bytes) -> SpacePacketHeader:
    """spacepackets' reading of a packet, after checking its length field covers it exactly."""
    header = SpacePacketHeader.unpack(packet)
    assert header.packet_len == len(packet)
    assert header.seq_flags == SequenceFlags.UNSEGMENTED
    return header


def tiny_with_mcs(mcs: str) -> Any:
    """The tests' tiny topology (4 satellites, ops centre ``ops``) with an ``mcs`` setting."""
    text = TINY.format(gsl_loss=0.0, gsl_queue=100, tm_rate_hz=10.0, store=1000, traffic="")
    assert "stations: [alpha, bravo]}" in text
    text = text.replace("stations: [alpha, bravo]}", f"stations: [alpha, bravo], mcs: {mcs}}}")
    return build_topology(parse_scenario(text, Path("/nonexistent/tiny.yaml")))


# --- sans-I/O: framing, routing, the ack packet -----------------------------------------------

def test_stream_splitter_cuts_back_to_back_packets_at_their_length_fields() -> None:
    packets = [tc(TC_BASE + i, i, bytes(range(i + 1))) for i in range(20)]
    stream = b"".join(packets)
    splitter = StreamSplitter()
    got: list[bytes] = []
    for i in range(0, len(stream), 3):  # arbitrary TCP segmentation
        got += splitter.feed(stream[i:i + 3])
    assert got == packets
    assert splitter.pending_bytes == 0
    assert splitter.feed(packets[5][:7]) == [] and splitter.pending_bytes == 7


def test_a_datagram_must_hold_exactly_one_packet() -> None:
    packet = tc(TC_BASE, 1)
    assert datagram_packet(packet) == (packet, None)
    assert datagram_packet(packet + b"\x00") == (None, "length_mismatch")
    assert datagram_packet(packet[:-1]) == (None, "length_mismatch")
    assert datagram_packet(b"\x10\x00") == (None, "short")


def test_router_sends_each_tc_to_the_satellite_its_apid_names_and_counts_the_rest() -> None:
    router = TcRouter({TC_BASE: 7, TC_BASE + 1: 9})
    routed = router.route(tc(TC_BASE + 1, 42))
    assert routed is not None and routed[0] == 9
    assert routed[1].apid == TC_BASE + 1 and routed[1].seq_count == 42
    tm = SpacePacket(SpacePacketHeader(packet_type=PacketType.TM, apid=TC_BASE, seq_count=0,
                                       data_len=0), None, b"\x00").pack()
    assert router.route(tm) is None
    assert router.route(tc(TC_BASE + 5, 0)) is None
    assert router.route(b"\x18") is None
    assert dict(router.refused) == {"not_tc": 1, "unknown_apid": 1, "short": 1}


def test_ack_packet_names_the_tc_apid_and_count_for_an_independent_decoder() -> None:
    packet = ack_packet(3, tc(1500, 16383), seq_count=11)
    header = decode(packet)
    assert header.packet_type == PacketType.TM and header.apid == ACK_APID
    assert header.seq_count == 11 and not header.sec_header_flag
    assert struct.unpack(">IHHB", packet[6:]) == (3, 1500, 16383, ACK_EXECUTED)
    assert read_ack(packet) == (3, 1500, 16383, ACK_EXECUTED)
    assert read_ack(ack_packet(2, b"", 0)) == (2, 0, 0, ACK_NOT_A_PACKET)
    assert read_ack(tc(ACK_APID - 1, 0, b"\x00" * 9)) is None


# --- the scenario setting -----------------------------------------------------------------------

@pytest.mark.parametrize(("mcs", "expected"), [
    ("{tm_udp: 10.0.0.1:10015}", "ops_centres[0].mcs.tm_udp: 10.0.0.1 is not a loopback"),
    ("{tc_udp: '127.0.0.1:99999'}", "ops_centres[0].mcs.tc_udp: port 99999 is not 1..65535"),
    ("{}", "ops_centres[0].mcs: names no address"),
    ("{tm_tcp: '127.0.0.1:5000', tc_tcp: '127.0.0.1:5000'}",
     "ops_centres[0].mcs.tc_tcp: 127.0.0.1:5000 is already tm_tcp"),
    ("{tc_udp: '127.0.0.1:5000', apid_map: {300: moon-0-0}}",
     "ops_centres[0].mcs.apid_map[300]: 'moon-0-0' is not a satellite of ['t']"),
    ("{tc_udp: '127.0.0.1:5000', apid_map: {2040: t-0-0}}", "APID 2040 is not 0..2046"),
    ("{tc_udp: '127.0.0.1:5000', tc_apid_base: 2044}", "take APIDs up to 2047"),
])
def test_bad_mcs_settings_name_the_line_field_and_what_was_expected(mcs: str,
                                                                    expected: str) -> None:
    with pytest.raises(ScenarioError) as err:
        tiny_with_mcs(mcs)
    text = "\n".join([str(err.value), *getattr(err.value, "problems", [])])
    assert expected in text
    centre_line = 1 + TINY.splitlines().index("      stations: [alpha, bravo]}}")  # mcs's line
    assert f"/nonexistent/tiny.yaml:{centre_line}: ops_centres[0].mcs" in text


# --- roles: the hook, the ack, the trace link ---------------------------------------------------

def roles_with_events(topology: Any) -> tuple[Roles, io.BytesIO]:
    events = io.BytesIO()
    rt = NodeRuntime(topology, 0, np.zeros(N_NODES, dtype=np.int64), send=lambda w, p: None,
                     speed=1.0, seed=0, stats=Stats(events))
    rt.t0_wall = 0.0
    return Roles(rt, duration_s=60.0), events


PASS = ([(ALPHA, SAT0, GSL, 0.004), (ALPHA, OPS, TERRESTRIAL, 0.002), (SAT1, SAT0, ISL, 0.01),
         (SAT2, SAT1, ISL, 0.01), (SAT3, SAT0, ISL, 0.01)],
        [(SAT0, ALPHA, OPS), (SAT1, SAT0, ALPHA, OPS), (SAT2, SAT1, SAT0, ALPHA, OPS),
         (SAT3, SAT0, ALPHA, OPS), (OPS, ALPHA, SAT0), (OPS, ALPHA, SAT0, SAT1)])


def test_an_ops_centre_hands_tm_and_tc_acks_to_the_bridge_in_arrival_order() -> None:
    topology = tiny_with_mcs("{tc_udp: '127.0.0.1:5000'}")
    roles, events = roles_with_events(topology)
    got: list[tuple[int, bytes, float]] = []
    roles.mcs_deliver = lambda node, packet, at: got.append((node, packet, at))
    apply(roles.rt, 0.0, *PASS)
    roles.start(0.0)
    drain(roles.rt, until=1.0)
    command = tc(TC_BASE + 1, 77)
    sent = roles.telecommand(OPS, SAT1, 0, 1.0, packet=command)
    drain(roles.rt, until=2.0)
    assert {node for node, _p, _a in got} == {OPS}
    assert [a for _n, _p, a in got] == sorted(a for _n, _p, a in got)
    headers = [decode(p) for _n, p, _a in got]
    housekeeping = [(int.from_bytes(p[6:10], "big"), h.seq_count)
                    for (_n, p, _a), h in zip(got, headers, strict=True) if h.apid == 100]
    assert len(housekeeping) == roles.rt.stats.flows[-1].delivered > 0
    for sat in (SAT0, SAT1, SAT2, SAT3):
        counts = [seq for s, seq in housekeeping if s == sat]
        assert counts and counts == sorted(counts) and len(set(counts)) == len(counts)
    acks = [read_ack(p) for (_n, p, _a), h in zip(got, headers, strict=True)
            if h.apid == ACK_APID]
    assert acks == [(SAT1, TC_BASE + 1, 77, ACK_EXECUTED)]
    # The trace pairs the command with its ack: the ack's offer names the TC's frame id.
    records = list(msgpack.Unpacker(io.BytesIO(events.getvalue()), raw=False))
    ack_offers = [r for r in records if r[0] == "offer" and r[4] == 3]
    assert [r[8] for r in ack_offers] == [sent[0]]
    assert roles.rt.stats.telecommands_acked == 1


# --- the sockets (loopback, no broker) -----------------------------------------------------------

async def test_bridge_sockets_carry_tm_out_and_tc_in_over_udp_and_tcp() -> None:
    ports = [free_loopback_port() for _ in range(3)]
    tm_listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tm_listener.bind(("127.0.0.1", 0))
    tm_listener.settimeout(2.0)
    mcs = (f"{{tm_udp: '127.0.0.1:{tm_listener.getsockname()[1]}', "
           f"tm_tcp: '127.0.0.1:{ports[0]}', tc_udp: '127.0.0.1:{ports[1]}', "
           f"tc_tcp: '127.0.0.1:{ports[2]}'}}")
    topology = tiny_with_mcs(mcs)
    roles, _events = roles_with_events(topology)
    apply(roles.rt, 0.0, *PASS)
    inputs: list[int] = []
    bridges = McsBridges.open(roles, now=lambda: 1.0, started=lambda: True,
                              after_input=lambda: inputs.append(1))
    assert bridges is not None
    loop = asyncio.get_running_loop()
    serving = asyncio.create_task(bridges.serve())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
        tm = [ack_packet(SAT0, tc(TC_BASE, i), i) for i in range(5)]
        bridge = bridges.bridges[OPS]
        await asyncio.wait_for(bridge.until(lambda: bridge.tm_clients == 1), 2.0)
        for packet in tm:
            roles.mcs_deliver(OPS, packet, 1.0)  # type: ignore[misc]
        assert [tm_listener.recv(4096) for _ in tm] == tm
        assert await asyncio.wait_for(reader.readexactly(sum(map(len, tm))), 2.0) == b"".join(tm)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tc_out:
            tc_out.sendto(tc(TC_BASE + 1, 5), ("127.0.0.1", ports[1]))
            tc_out.sendto(tc(TC_BASE + 1, 6) + b"x", ("127.0.0.1", ports[1]))
        _r, tc_writer = await asyncio.open_connection("127.0.0.1", ports[2])
        tc_writer.write(tc(TC_BASE + 2, 8) + tc(TC_BASE + 9, 9) + tc(TC_BASE + 3, 10)[:4])
        await tc_writer.drain()
        await asyncio.wait_for(bridge.until(lambda: sum(bridge.tc_in.values()) == 4), 2.0)
        tc_writer.close()
        writer.close()
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        bridges.close()
        tm_listener.close()
    stats = bridge.as_dict()
    assert stats["tm_in"] == stats["tm_udp_sent"] == stats["tm_tcp_sent"] == 5
    assert stats["tc_in"] == {"udp": 2, "tcp": 2} and stats["tc_routed"] == 2
    assert stats["tc_refused"] == {"length_mismatch": 1, "unknown_apid": 1, "truncated": 1}
    assert [t[1:3] for t in stats["telecommands"]] == [[TC_BASE + 1, 5], [TC_BASE + 2, 8]]
    assert len(inputs) == 2 and roles.rt.stats.telecommands_sent == 2
    assert loop.is_running()


# --- live: the demo with darmstadt's bridge, a real mosquitto, two worker processes -------------

@pytest.mark.broker
def test_live_bridge_streams_decodable_tm_in_order_and_acks_tcs_over_udp_and_tcp(
        tmp_path: Path) -> None:
    require_mosquitto()
    record = mcs_session(tmp_path / "run", duration_s=16.0, speed=2.0, tcs_per_link=6)
    assert record.returncode == 0, record.output[-2000:]
    figures = analyse(record, tmp_path / "run")
    bridge = figures["bridge"]
    # Everything that reached darmstadt went to the MCS, decodable by spacepackets, in order.
    assert bridge["tm_in"] == figures["tm_reached_centre_trace"] > 100
    assert bridge["tm_udp_sent"] == bridge["tm_in"] and not bridge["tm_failed"]
    assert figures["udp_received"] == bridge["tm_in"]
    assert figures["udp_undecodable"] == 0 and figures["out_of_order"] == 0
    assert figures["tcp_equals_udp"]
    assert figures["satellites_heard"] >= 2
    # The pacer sent every datagram, none of them one the trace says was dropped.
    pacer = figures["pacer"]
    assert pacer["committed"] + pacer.get("held_sent", 0) == bridge["tm_udp_sent"]
    assert pacer.get("sent_then_dropped", 0) == 0 and pacer["late_ms"]["n"] > 0
    # Telecommands over both links were routed, executed, and their acks came back as TM.
    assert bridge["tc_in"] == {"udp": 6, "tcp": 6} and bridge["tc_routed"] == 12
    assert figures["tc_acked_via"]["udp"] >= 1 and figures["tc_acked_via"]["tcp"] >= 1
    # The trace pairs every acknowledged command: its RTTs are the stats' samples.
    assert figures["trace_rtts_equal_stats"] and figures["tc_rtts"] >= 2
    assert figures["tc_rtt_mcs_minus_trace_ms"]["n"] == sum(figures["tc_acked_via"].values())


async def test_a_tm_client_that_stops_reading_is_disconnected_and_counted() -> None:
    port = free_loopback_port()
    topology = tiny_with_mcs(f"{{tm_tcp: '127.0.0.1:{port}', tcp_buffer_bytes: 4096}}")
    roles, _events = roles_with_events(topology)
    bridges = McsBridges.open(roles, now=lambda: 1.0, started=lambda: True,
                              after_input=lambda: None)
    assert bridges is not None
    bridge = bridges.bridges[OPS]
    serving = asyncio.create_task(bridges.serve())
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stuck.connect(("127.0.0.1", port))  # and never reads
        await asyncio.wait_for(bridge.until(lambda: bridge.tm_clients == 1), 2.0)
        packet = tc(TC_BASE, 0, b"\x00" * 60_000)
        for _ in range(2000):  # the kernel's buffers fill first, then the bridge's 4 KiB
            bridge.deliver(packet, 1.0)
            await asyncio.sleep(0)
            if bridge.clients_dropped:
                break
        await asyncio.wait_for(bridge.until(lambda: bridge.tm_clients == 0), 2.0)
        stuck.setblocking(False)  # the bridge ended the connection: what was sent, then EOF
        async with asyncio.timeout(5.0):
            while await asyncio.get_running_loop().sock_recv(stuck, 1 << 20):
                pass
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        bridges.close()
        stuck.close()
    assert bridge.clients_dropped == 1
    assert bridge.tm_in > bridge.tm_tcp_sent > 0  # counted up to the cut, nothing after it


def test_a_port_in_use_stops_the_bridge_with_the_setting_to_change() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        topology = tiny_with_mcs(f"{{tm_udp: '127.0.0.1:9', tc_tcp: '127.0.0.1:{port}'}}")
        roles, _events = roles_with_events(topology)
        with pytest.raises(RunError, match=rf"mcs.tc_tcp: cannot use 127.0.0.1:{port}: .*"
                                           r"choose a free port"):
            McsBridges.open(roles, now=lambda: 1.0, started=lambda: True,
                            after_input=lambda: None)
    assert roles.mcs_deliver is None


def test_refused_telecommands_are_logged_once_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    topology = tiny_with_mcs(f"{{tc_udp: '127.0.0.1:{free_loopback_port()}'}}")
    roles, _events = roles_with_events(topology)
    started = False
    bridges = McsBridges.open(roles, now=lambda: 1.0, started=lambda: started,
                              after_input=lambda: None)
    assert bridges is not None
    bridge = bridges.bridges[OPS]
    try:
        with caplog.at_level("WARNING", logger="orbitmesh.mcs"):
            bridge.telecommand_in(tc(TC_BASE, 0), "udp")
            started = True
            for seq in range(3):
                bridge.telecommand_in(tc(TC_BASE + 99, seq), "udp")
    finally:
        bridges.close()
    assert dict(bridge.router.refused) == {"before_start": 1, "unknown_apid": 3}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "ops" in said[0] and "(before_start)" in said[0]
    assert "(unknown_apid)" in said[1]


@pytest.mark.parametrize("via", ["udp", "tcp"])
async def test_a_telecommand_enters_when_the_kernel_received_it_not_when_the_loop_read_it(
        via: str) -> None:
    port = free_loopback_port()
    topology = tiny_with_mcs(f"{{tc_{via}: '127.0.0.1:{port}'}}")
    roles, _events = roles_with_events(topology)
    apply(roles.rt, 0.0, *PASS)
    bridges = McsBridges.open(roles, now=time.time, started=lambda: True,
                              after_input=lambda: None)
    assert bridges is not None
    bridge = bridges.bridges[OPS]
    serving = asyncio.create_task(bridges.serve())
    kind = socket.SOCK_DGRAM if via == "udp" else socket.SOCK_STREAM
    mcs = socket.socket(socket.AF_INET, kind)
    try:
        mcs.connect(("127.0.0.1", port))  # (tcp: the kernel accepts; the bridge, later)
        mcs.send(tc(TC_BASE + 1, 3))
        time.sleep(0.05)  # noqa: ASYNC251 -- the loop is busy: it reads the command after this
        loop_free = time.time()
        await asyncio.wait_for(bridge.until(lambda: bridge.tc_routed == 1), 5.0)
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        bridges.close()
        mcs.close()
    entered_wall = bridge.telecommands[0][3]
    assert entered_wall < loop_free  # the kernel's stamp, taken before the loop was free
    assert bridge.tc_read_late_ms.n == 1
