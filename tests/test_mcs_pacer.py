"""The MCS bridge's TM pacer: what it sends when, and that it never sends what the trace drops.

The decisions (nodes/mcs_pacer.py's Schedule) are driven with made-up wall times; the runtime
hooks with the tests' tiny topology and a fake clock; the process itself over loopback UDP.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from nodes.mcs_bridge import McsBridges
from nodes.mcs_pacer import Schedule
from nodes.mcs_pacer_handle import Pacer
from nodes.runtime import NodeRuntime
from nodes.stats import Stats
from orbitmesh.protocol.transport import Message
from orbitmesh.protocol.wire import F_DUE, TELEMETRY, new_frame
from tests.test_mcs_bridge import PASS, roles_with_events, tiny_with_mcs
from tests.test_runtime import ALPHA, OPS, SAT0, apply, drain, links, routes

ONE_MS = 0.001


def sent(plan: Schedule, now: float) -> list[bytes]:
    """Packets the schedule lets go at ``now``, recorded as sent then."""
    out = plan.take(now)
    for _packet, due, committed in out:
        plan.sent(due, now, committed)
    return [packet for packet, _due, _committed in out]


def test_a_packet_goes_at_its_due_time_once_the_next_state_is_known() -> None:
    plan = Schedule()
    plan.barrier(10.0)
    plan.applied(10.0)
    plan.barrier(11.0)  # the next tick, published ahead: in force from 11.0
    plan.schedule(1, 10.5, b"a")
    assert plan.next_due() == 10.5
    assert sent(plan, 10.5 - ONE_MS) == []
    assert sent(plan, 10.5) == [b"a"]
    plan.verdict(1, True)
    assert plan.report()["confirmed"] == 1 and plan.report()["unconfirmed"] == 0


def test_a_packet_due_after_a_pending_state_waits_for_the_workers_verdict() -> None:
    plan = Schedule()
    plan.barrier(11.0)
    plan.barrier(12.0)  # and the one after it: the horizon is not what holds the packet
    plan.schedule(1, 10.9, b"before")  # arrives while the current state holds: committed
    plan.schedule(2, 11.2, b"after")  # the state at 11.0 may cut its link: held
    assert sent(plan, 11.5) == [b"before"]
    assert plan.next_due() is None  # held: nothing goes until the worker says
    plan.verdict(2, False)  # the trace dropped it (link cut in flight)
    assert sent(plan, 12.0) == []
    report = plan.report()
    assert report["held_dropped"] == 1 and report.get("sent_then_dropped", 0) == 0


def test_a_state_announced_after_a_packet_still_holds_it_and_order_is_kept() -> None:
    plan = Schedule()
    plan.barrier(20.0)
    plan.schedule(1, 10.2, b"first")
    plan.schedule(2, 10.3, b"second")
    plan.barrier(10.25)  # a live fault: the tick in force again, from 10.25
    plan.schedule(3, 10.4, b"third")  # scheduled before the runtime applied it: held too
    assert sent(plan, 10.3) == [b"first"]
    plan.verdict(3, True)  # the loop got to the third first: it still waits its turn
    assert sent(plan, 10.5) == []
    plan.verdict(2, True)
    assert sent(plan, 10.6) == [b"second", b"third"]


def test_without_a_later_state_known_a_packet_is_held() -> None:
    plan = Schedule()
    plan.barrier(10.0)
    plan.applied(10.0)
    plan.schedule(1, 10.5, b"late tick")  # the state from 11.0 has not come: 10.5 may be in it
    assert sent(plan, 10.6) == []
    plan.verdict(1, True)
    assert sent(plan, 10.7) == [b"late tick"]
    assert plan.report()["held_sent"] == 1


def test_while_the_gate_is_closed_nothing_goes() -> None:
    plan = Schedule()
    plan.barrier(20.0)
    plan.schedule(1, 10.0, b"a")
    plan.gate(True, 9.99)
    assert sent(plan, 10.01) == [] and plan.next_due() is None
    plan.barrier(10.005)  # the batch held a live fault from 10.005: 10.0 is before it
    plan.gate(False, 10.02)
    assert sent(plan, 10.02) == [b"a"]
    assert plan.report()["gate_ms"]


def test_a_drop_after_a_send_is_counted_never_hidden() -> None:
    plan = Schedule()
    plan.barrier(20.0)
    plan.schedule(1, 10.0, b"a")
    assert sent(plan, 10.0) == [b"a"]
    plan.verdict(1, False)
    assert plan.report()["sent_then_dropped"] == 1


def test_freeze_sends_nothing_more_and_counts_what_it_cancelled() -> None:
    plan = Schedule()
    plan.barrier(20.0)
    plan.schedule(1, 10.0, b"a")
    plan.schedule(2, 10.1, b"b")
    assert sent(plan, 10.0) == [b"a"]
    plan.freeze()
    assert sent(plan, 11.0) == []
    assert plan.report()["cancelled_at_end"] == 1 and plan.report()["unconfirmed"] == 1


# --- the runtime's hooks --------------------------------------------------------------------------

class FakePacer:
    """Records what the bridge tells its pacer."""

    def __init__(self) -> None:
        self.plan = Schedule()
        self.log: list[tuple[str, float]] = []

    def schedule(self, ident: int, due: float, packet: bytes) -> bool:
        self.log.append(("schedule", due))
        self.plan.schedule(ident, due, packet)
        return True

    def now(self, at_wall: float, packet: bytes) -> bool:
        self.plan.now(at_wall, packet)
        return True

    def verdict(self, ident: int, delivered: bool) -> None:
        self.log.append(("delivered" if delivered else "dropped", 0.0))
        self.plan.verdict(ident, delivered)

    def barrier(self, at_wall: float) -> None:
        self.plan.barrier(at_wall)

    def applied(self, at_wall: float) -> None:
        self.plan.applied(at_wall)

    def gate(self, closed: bool) -> None:
        self.plan.gate(closed, 0.0)

    def freeze(self) -> None:
        self.plan.freeze()

    def close(self) -> None:
        pass


def bridged(tm_udp_port: int) -> tuple[McsBridges, FakePacer, Stats]:
    topology = tiny_with_mcs(f"{{tm_udp: '127.0.0.1:{tm_udp_port}'}}")
    roles, _events = roles_with_events(topology)
    bridges = McsBridges.open(roles, now=lambda: 0.0, started=lambda: True,
                              after_input=lambda: None)
    assert bridges is not None
    real = bridges.bridges[OPS].pacer
    assert real is not None
    real.close()
    fake = FakePacer()
    bridges.bridges[OPS].pacer = fake  # type: ignore[assignment]
    bridges.pacers[0] = fake  # type: ignore[call-overload]
    return bridges, fake, roles.rt.stats


def telemetry_at_alpha(rt: NodeRuntime, frame_id: int, at_wall: float) -> list[Any]:
    """A TM frame at station alpha, one terrestrial hop from the ops centre."""
    frame = new_frame(frame_id, TELEMETRY, -1, SAT0, OPS, 100, at_wall, payload=b"tm%d" % frame_id)
    rt.forward(ALPHA, frame, at_wall)
    return frame


def test_every_announced_packet_gets_the_loops_verdict_and_a_cut_link_holds_it() -> None:
    bridges, pacer, stats = bridged(9)
    rt = bridges.bridges[OPS].rt
    edges, paths = PASS
    apply(rt, 0.0, edges, paths)
    rt.call_at(1.0, lambda at: apply(rt, 1.0, edges, paths), first=True)  # the next tick, ahead
    delivered = telemetry_at_alpha(rt, 1, 0.1)
    assert pacer.log[-1] == ("schedule", delivered[F_DUE])
    assert sent(pacer.plan, 0.5) == [b"tm1"]  # committed at its due time, before the loop
    drain(rt, until=0.5)
    assert pacer.log[-1] == ("delivered", 0.0)
    assert pacer.plan.report()["confirmed"] == pacer.plan.report()["committed"] == 1
    # A live fault cuts alpha-ops while the next packet is on that link: the state comes first.
    cut_frame = telemetry_at_alpha(rt, 2, 0.6)
    kept = [e for e in edges if OPS not in e[:2]]
    cut = {(min(ALPHA, OPS), max(ALPHA, OPS)): "f1"}
    a, b, kind, delay_s = links(kept)
    destinations, next_hop = routes(paths)
    rt.call_at(0.6005, lambda at: rt.apply_state(0.6005, a, b, kind, delay_s, destinations,
                                                 next_hop, now=at, cut=cut), first=True)
    assert cut_frame[F_DUE] > 0.6005
    assert sent(pacer.plan, cut_frame[F_DUE]) == []  # held at its due time: the loop decides
    drain(rt, until=0.9)
    assert pacer.log[-1] == ("dropped", 0.0)
    assert sent(pacer.plan, 0.9) == []  # the trace says dropped: the MCS never sees it
    assert dict(stats.flows[-1].dropped) == {"fault": 1}
    report = pacer.plan.report()
    assert report["held_dropped"] == 1 and report.get("sent_then_dropped", 0) == 0


# --- the process ------------------------------------------------------------------------------

def test_the_pacer_process_sends_each_datagram_at_its_due_wall_time() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5.0)
    pacer = Pacer(f"127.0.0.1:{listener.getsockname()[1]}")
    try:
        start = time.time()
        pacer.barrier(start + 60.0)
        dues = [start + 0.3 + 0.01 * i for i in range(5)]
        for i, due in enumerate(dues):
            pacer.schedule(i + 1, due, b"p%d" % i)
        pacer.schedule(9, start + 61.0, b"after the state")  # held: never confirmed
        got = [(listener.recv(100), time.time()) for _ in dues]
        for i in range(5):
            pacer.verdict(i + 1, True)
    finally:
        pacer.close()
        listener.close()
    assert [packet for packet, _at in got] == [b"p%d" % i for i in range(5)]
    assert all(at >= due for (_p, at), due in zip(got, dues, strict=True))  # never early
    report = pacer.counts
    assert report["committed"] == report["confirmed"] == 5
    assert report["cancelled_at_end"] == 1 and report["unconfirmed"] == 0


def test_the_gate_closes_only_for_batches_that_may_change_link_states_or_end_the_run() -> None:
    bridges, pacer, _stats = bridged(9)
    bridges.gated_topics = frozenset({"run/state", "run/launcher"})
    finished = False
    bridges.finished = lambda: finished
    assert not bridges.close_gate([Message("run/frames/w0", b""), Message("run/clock", b"")])
    assert not pacer.plan.gate_closed
    assert bridges.close_gate([Message("run/frames/w0", b""), Message("run/state", b"")])
    assert pacer.plan.gate_closed and pacer.plan.next_due() is None
    bridges.open_gate()
    assert not pacer.plan.gate_closed and not pacer.plan.frozen
    assert bridges.close_gate([Message("run/launcher", b"")])
    finished = True  # the batch held "finish": the worker handles no more arrivals
    bridges.open_gate()
    assert pacer.plan.frozen


def test_a_frame_handed_over_after_its_due_time_is_left_to_the_loop() -> None:
    bridges, pacer, stats = bridged(9)
    rt = bridges.bridges[OPS].rt
    apply(rt, 0.0, *PASS)
    stats.clock(0.5)  # the worker reads a batch at 0.5 ...
    late = new_frame(7, TELEMETRY, -1, SAT0, OPS, 100, 0.1, payload=b"late")
    bridges.announce(ALPHA, OPS, late, 0.3)  # ... holding a frame due at 0.3: not announced
    assert pacer.log == []
    bridges.deliver(OPS, b"late", 0.3)  # the loop delivers it: sent in its turn, as delivered
    assert sent(pacer.plan, 0.5) == [b"late"]
    assert pacer.plan.report()["unannounced"] == 1
