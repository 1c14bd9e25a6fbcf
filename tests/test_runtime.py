"""NodeRuntime and Roles driven by hand: a tiny topology, hand-made links and routes, a fake
clock (explicit ``now`` values) and a fake ``send`` that records payloads. No sockets.

Node indices of the tiny topology (see ``TINY``): satellites 0..3, stations 4 (``alpha``) and
5 (``bravo``), operations centre 6 (``ops``).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from nodes.roles import Roles
from nodes.runtime import NodeRuntime
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import (
    GSL,
    ISL,
    OPS_CENTRE,
    SATELLITE,
    STATION,
    TERRESTRIAL,
    Topology,
    build_topology,
)
from orbitmesh.protocol.wire import (
    DATA,
    DEFAULT_TTL,
    F_CREATED,
    F_DST,
    F_DUE,
    F_FROM,
    F_HOPS,
    F_ID,
    F_KIND,
    F_SIZE,
    F_SRC,
    F_TTL,
    FLOW_TELEMETRY,
    TELEMETRY,
    WIRE_VERSION,
    decode_batch,
    encode_batch,
    new_frame,
)

ONE_MICROSECOND_S = 1e-6
ONE_MICROSECOND_MS = 1e-3

SAT0, SAT1, SAT2, SAT3, ALPHA, BRAVO, OPS = range(7)
N_NODES = 7

TINY = """
name: tiny
epoch: 2026-01-01T00:00:00Z
duration_s: 60
seed: 3
constellations:
  - name: t
    operator: op
    walker: {{inclination_deg: 53.0, satellites: 4, planes: 1, phasing: 0, altitude_km: 550.0}}
    telemetry: {{rate_hz: {tm_rate_hz}, size_bytes: 100, store_frames: {store}}}
stations:
  - {{name: alpha, operator: op, lat_deg: 0.0, lon_deg: 0.0}}
  - {{name: bravo, operator: op, lat_deg: 10.0, lon_deg: 10.0}}
ops_centres:
  - {{name: ops, operator: op, lat_deg: 5.0, lon_deg: 5.0, constellations: [t],
      stations: [alpha, bravo]}}
links:
  isl: {{rate_bps: 2.0e6, loss: 0.0, queue_frames: 100}}
  gsl: {{rate_bps: 1.0e6, loss: {gsl_loss}, queue_frames: {gsl_queue}}}
  terrestrial: {{rate_bps: 4.0e6, queue_frames: 100}}
{traffic}
"""


def tiny_topology(*, gsl_loss: float = 0.0, gsl_queue: int = 100, tm_rate_hz: float = 0.0,
                  store: int = 1000, traffic: str = "") -> Topology:
    """The tiny topology with the given link, telemetry and traffic settings."""
    text = TINY.format(gsl_loss=gsl_loss, gsl_queue=gsl_queue, tm_rate_hz=tm_rate_hz,
                       store=store, traffic=traffic)
    topology = build_topology(parse_scenario(text, Path("/nonexistent/tiny.yaml")))
    assert topology.node_ids[4:] == ("alpha", "bravo", "ops")
    assert topology.kind.tolist() == [SATELLITE] * 4 + [STATION] * 2 + [OPS_CENTRE]
    return topology


class Sent:
    """A fake ``send``: records ``(worker, payload)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes]] = []

    def __call__(self, worker: int, payload: bytes) -> None:
        self.calls.append((worker, payload))


def links(edges: Iterable[tuple[int, int, int, float]]) -> tuple[np.ndarray, ...]:
    """``(a, b, kind, delay_s)`` arrays from ``(u, v, kind, delay_s)`` rows (a < b)."""
    rows = [(min(u, v), max(u, v), k, d) for u, v, k, d in edges]
    a = np.array([r[0] for r in rows], dtype=np.int64)
    b = np.array([r[1] for r in rows], dtype=np.int64)
    kind = np.array([r[2] for r in rows], dtype=np.int8)
    delay_s = np.array([r[3] for r in rows], dtype=np.float64)
    return a, b, kind, delay_s


def routes(paths: Iterable[Sequence[int]]) -> tuple[np.ndarray, dict[str | None, np.ndarray]]:
    """Destinations (every node) and a next-hop table that follows ``paths`` to their ends."""
    destinations = np.arange(N_NODES, dtype=np.int64)
    table = np.full((N_NODES, N_NODES), -1, dtype=np.int64)
    for path in paths:
        for u, v in itertools.pairwise(path):
            table[path[-1], u] = v
    return destinations, {None: table}


def apply(rt: NodeRuntime, t_s: float, edges: Iterable[tuple[int, int, int, float]],
          paths: Iterable[Sequence[int]]) -> None:
    """Apply hand-made links and routes to ``rt``."""
    a, b, kind, delay_s = links(edges)
    destinations, next_hop = routes(paths)
    rt.apply_state(t_s, a, b, kind, delay_s, destinations, next_hop)


def runtime(topology: Topology, *, worker: int = 0, owner: np.ndarray | None = None,
            speed: float = 1.0, seed: int = 0,
            send: Callable[[int, bytes], None] | None = None) -> NodeRuntime:
    """A runtime hosting every node (unless ``owner`` says otherwise) with t0 at wall 0."""
    rt = NodeRuntime(topology, worker, np.zeros(N_NODES, dtype=np.int64) if owner is None
                     else owner, send=send or Sent(), speed=speed, seed=seed)
    rt.t0_wall = 0.0
    return rt


def drain(rt: NodeRuntime, until: float = float("inf")) -> None:
    """Run every pending item up to wall time ``until``, each exactly when it is due."""
    while rt.next_due is not None and rt.next_due <= until:
        rt.run_due(rt.next_due)


def frame(frame_id: int, src: int, dst: int, size: int, now: float) -> list[Any]:
    """A user data frame of flow 0."""
    return new_frame(frame_id, DATA, 0, src, dst, size, now)


def totals(*rts: NodeRuntime, flow: int = 0) -> tuple[int, int, Counter[str]]:
    """(offered, delivered, dropped by reason) of ``flow`` over runtimes."""
    dropped: Counter[str] = Counter()
    offered = delivered = 0
    for rt in rts:
        fs = rt.stats.flows[flow]
        offered += fs.offered
        delivered += fs.delivered
        dropped.update(fs.dropped)
    return offered, delivered, dropped


# Path alpha -> sat0 -> sat1 -> bravo with three link classes' worth of delays.
PATH = (ALPHA, SAT0, SAT1, BRAVO)
PATH_EDGES = ((ALPHA, SAT0, GSL, 0.004), (SAT0, SAT1, ISL, 0.013), (SAT1, BRAVO, GSL, 0.006))


# --- latency ------------------------------------------------------------------------------------

@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_latency_is_the_sum_of_serialisation_and_propagation(speed: float) -> None:
    rt = runtime(tiny_topology(), speed=speed)
    apply(rt, 0.0, PATH_EDGES, [PATH])
    delivered: list[float] = []
    rt.on_deliver = lambda node, f, now: delivered.append(now)
    size = 1250  # 10 ms at 1 Mb/s (GSL), 5 ms at 2 Mb/s (ISL)
    created = 100.0
    rt.originate(ALPHA, frame(1, ALPHA, BRAVO, size, created), created)
    drain(rt)
    bits = size * 8.0
    expected_s = (bits / 1e6 + 0.004) + (bits / 2e6 + 0.013) + (bits / 1e6 + 0.006)
    assert delivered == [pytest.approx(created + expected_s / speed, abs=ONE_MICROSECOND_S)]
    fs = rt.stats.flows[0]
    assert fs.latency_ms.samples() == [pytest.approx(expected_s * 1000.0,
                                                     abs=ONE_MICROSECOND_MS)]
    assert fs.geometric_ms.samples() == [pytest.approx((0.004 + 0.013 + 0.006) * 1000.0,
                                                       abs=ONE_MICROSECOND_MS)]
    assert fs.hops == 3


def test_back_to_back_frames_wait_for_the_transmitter() -> None:
    rt = runtime(tiny_topology())
    apply(rt, 0.0, [(ALPHA, BRAVO, TERRESTRIAL, 0.002)], [(ALPHA, BRAVO)])
    arrivals: list[float] = []
    rt.on_deliver = lambda node, f, now: arrivals.append(now)
    for i in range(3):
        rt.originate(ALPHA, frame(i, ALPHA, BRAVO, 500, 10.0), 10.0)
    drain(rt)
    serialise_s = 500 * 8.0 / 4e6  # 1 ms on terrestrial fibre at 4 Mb/s
    assert arrivals == pytest.approx([10.0 + (k + 1) * serialise_s + 0.002 for k in range(3)],
                                     abs=ONE_MICROSECOND_S)


# --- drops --------------------------------------------------------------------------------------

def test_queue_tail_drop_at_the_limit() -> None:
    limit = 4
    rt = runtime(tiny_topology(gsl_queue=limit))
    apply(rt, 0.0, [(ALPHA, SAT0, GSL, 0.003)], [(ALPHA, SAT0)])
    for i in range(limit + 3):
        rt.originate(ALPHA, frame(i, ALPHA, SAT0, 1000, 0.0), 0.0)
    assert totals(rt) == (limit + 3, 0, Counter(queue=3))
    assert rt.stats.in_flight == limit
    # Once the queue has drained, the link takes frames again.
    later = 1.0
    rt.originate(ALPHA, frame(99, ALPHA, SAT0, 1000, later), later)
    drain(rt)
    assert totals(rt) == (limit + 4, limit + 1, Counter(queue=3))


def _lost_ids(seed: int, count: int, loss: float) -> list[int]:
    rt = runtime(tiny_topology(gsl_loss=loss), seed=seed)
    apply(rt, 0.0, [(ALPHA, SAT0, GSL, 0.003)], [(ALPHA, SAT0)])
    delivered: set[int] = set()
    rt.on_deliver = lambda node, f, now: delivered.add(f[F_ID])
    for i in range(count):
        now = i * 0.1  # far apart: the queue never fills
        rt.originate(ALPHA, frame(i, ALPHA, SAT0, 100, now), now)
        drain(rt, now + 0.05)
    drain(rt)
    lost = sorted(set(range(count)) - delivered)
    assert totals(rt) == (count, count - len(lost), Counter(loss=len(lost)) if lost else Counter())
    return lost


def test_seeded_loss_is_reproducible_and_has_the_configured_rate() -> None:
    count, loss = 2000, 0.25
    first = _lost_ids(seed=7, count=count, loss=loss)
    again = _lost_ids(seed=7, count=count, loss=loss)
    other = _lost_ids(seed=8, count=count, loss=loss)
    assert first == again
    assert first != other
    # Binomial(2000, 0.25): mean 500, sigma 19.4; allow five sigma.
    assert abs(len(first) - count * loss) < 5 * (count * loss * (1 - loss)) ** 0.5


def test_link_going_down_in_flight_drops_with_link_lost() -> None:
    rt = runtime(tiny_topology())
    apply(rt, 0.0, PATH_EDGES, [PATH])
    rt.originate(ALPHA, frame(1, ALPHA, BRAVO, 125, 0.0), 0.0)
    assert rt.stats.in_flight == 1
    # The alpha-sat0 link disappears before the frame reaches sat0.
    apply(rt, 0.001, PATH_EDGES[1:], [PATH])
    drain(rt)
    assert totals(rt) == (1, 0, Counter(link_lost=1))
    assert rt.stats.in_flight == 0
    assert rt.held_frames() == []


def test_route_over_a_missing_link_drops_with_link_down() -> None:
    rt = runtime(tiny_topology())
    apply(rt, 0.0, PATH_EDGES[:2], [PATH])  # route says sat1 -> bravo, but no such link
    rt.originate(ALPHA, frame(1, ALPHA, BRAVO, 125, 0.0), 0.0)
    drain(rt)
    assert totals(rt) == (1, 0, Counter(link_down=1))


def test_no_route_drops_with_no_route() -> None:
    rt = runtime(tiny_topology())
    apply(rt, 0.0, PATH_EDGES, [PATH[:3]])  # routes reach sat1 only
    rt.originate(ALPHA, frame(1, ALPHA, BRAVO, 125, 0.0), 0.0)
    # No routing state at all: also no route.
    empty = runtime(tiny_topology())
    empty.originate(ALPHA, frame(2, ALPHA, BRAVO, 125, 0.0), 0.0)
    drain(rt)
    drain(empty)
    assert totals(rt) == (1, 0, Counter(no_route=1))
    assert totals(empty) == (1, 0, Counter(no_route=1))


def test_routing_loop_ends_with_ttl_after_ttl_hops() -> None:
    rt = runtime(tiny_topology())
    a, b, kind, delay_s = links([(SAT0, SAT1, ISL, 0.001)])
    destinations, next_hop = routes([])
    next_hop[None][BRAVO, SAT0] = SAT1
    next_hop[None][BRAVO, SAT1] = SAT0  # a loop
    rt.apply_state(0.0, a, b, kind, delay_s, destinations, next_hop)
    dropped: list[list[Any]] = []
    real_drop = rt.stats.drop

    def spy(f: list[Any], reason: str, node: int = -1) -> None:
        dropped.append(f)
        real_drop(f, reason, node)

    rt.stats.drop = spy  # type: ignore[method-assign,assignment]
    rt.originate(SAT0, frame(1, SAT0, BRAVO, 100, 0.0), 0.0)
    drain(rt)
    assert totals(rt) == (1, 0, Counter(ttl=1))
    assert dropped[0][F_HOPS] == DEFAULT_TTL  # it crossed exactly TTL links


# --- workers ------------------------------------------------------------------------------------

def test_frames_for_another_worker_are_batched_and_decode() -> None:
    topology = tiny_topology()
    owner = np.array([0, 1, 0, 0, 0, 1, 0], dtype=np.int64)  # sat1 and bravo on worker 1
    sent0, sent1 = Sent(), Sent()
    w0 = runtime(topology, worker=0, owner=owner, send=sent0)
    w1 = runtime(topology, worker=1, owner=owner, send=sent1)
    for rt in (w0, w1):
        apply(rt, 0.0, PATH_EDGES, [PATH])
    for i in range(3):
        w0.originate(ALPHA, frame(i, ALPHA, BRAVO, 125, 0.0), 0.0)
    w0.run_due(0.015)  # the frames cross alpha-sat0 and start on sat0-sat1
    # All three leave sat0 for sat1 (worker 1) in this call: handed over at once, in one batch.
    assert [w for w, _ in sent0.calls] == [1]
    items, refused = decode_batch(sent0.calls[0][1])
    assert refused == []
    assert [(v, f[F_ID], f[F_HOPS], f[F_FROM]) for v, f in items] == [
        (SAT1, i, 1, SAT0) for i in range(3)]
    assert all(f[F_DUE] > 0.015 for _v, f in items)  # they are due at sat1 later than now
    assert w0.stats.flows[0].remote_out == 3
    w1.receive_batch(sent0.calls[0][1], 0.015)
    assert w1.stats.in_flight == 3  # in flight on sat0-sat1 until due
    drain(w1)
    assert sent1.calls == []
    assert totals(w0, w1) == (3, 3, Counter())
    assert w1.stats.flows[0].remote_in == 3


@pytest.mark.parametrize("payload", [
    b"not msgpack at all \xc1",
    encode_batch([(BRAVO, frame(1, ALPHA, BRAVO, 10, 0.0))])[:-3],  # truncated
    msgpack.packb([WIRE_VERSION + 1, []]),  # a wire version this runtime does not read
    msgpack.packb([WIRE_VERSION, {"not": "a list"}]),
    encode_batch([(BRAVO, [1, 2, 3])]),  # frame with too few fields
    encode_batch([(SAT1, frame(1, ALPHA, SAT1, 10, 0.0))]),  # node not hosted here
], ids=["garbage", "truncated", "version", "not-a-list", "short-frame", "not-hosted"])
def test_malformed_batch_is_counted_not_raised(payload: bytes) -> None:
    owner = np.array([0, 1, 0, 0, 0, 0, 0], dtype=np.int64)  # sat1 lives elsewhere
    rt = runtime(tiny_topology(), owner=owner)
    rt.receive_batch(payload, 0.0)
    assert rt.stats.malformed_count == 1
    # And the runtime still works afterwards.
    apply(rt, 0.0, [(ALPHA, BRAVO, TERRESTRIAL, 0.001)], [(ALPHA, BRAVO)])
    rt.receive_batch(encode_batch([(ALPHA, frame(5, ALPHA, BRAVO, 10, 0.0))]), 0.0,
                     injected=True)
    drain(rt)
    assert rt.stats.flows[0].delivered == 1


# --- conservation -------------------------------------------------------------------------------

EVERY_EDGE = (
    (ALPHA, SAT0, GSL, 0.004), (ALPHA, SAT1, GSL, 0.005), (SAT0, SAT1, ISL, 0.012),
    (SAT1, SAT2, ISL, 0.012), (SAT2, SAT3, ISL, 0.011), (SAT3, SAT0, ISL, 0.013),
    (SAT2, BRAVO, GSL, 0.006), (SAT3, BRAVO, GSL, 0.003), (ALPHA, OPS, TERRESTRIAL, 0.002),
    (BRAVO, OPS, TERRESTRIAL, 0.002),
)
ROUTE_SETS = (
    [(ALPHA, SAT0, SAT1, SAT2, BRAVO), (BRAVO, SAT3, SAT0, ALPHA), (OPS, ALPHA, SAT1, SAT2),
     (SAT3, SAT0, SAT1)],
    [(ALPHA, OPS, BRAVO), (BRAVO, OPS, ALPHA), (OPS, BRAVO, SAT3, SAT2), (SAT3, BRAVO)],
    [(ALPHA, SAT1, SAT2, SAT3, BRAVO), (BRAVO, SAT2, SAT1, ALPHA), (SAT3, SAT2, SAT1)],
)


def test_conservation_after_a_random_workload_over_two_workers() -> None:
    rng = random.Random(2026)
    topology = tiny_topology(gsl_loss=0.05, gsl_queue=3)
    owner = np.array([0, 0, 1, 1, 0, 1, 0], dtype=np.int64)
    mailbox: list[tuple[int, bytes]] = []

    def post(worker: int, payload: bytes) -> None:
        mailbox.append((worker, payload))

    rts = [runtime(topology, worker=k, owner=owner, speed=3.0, seed=11, send=post)
           for k in (0, 1)]
    now = 0.0
    next_id = 0
    paths = ROUTE_SETS[0]
    for step in range(400):
        now += rng.uniform(0.0, 0.004)
        if step % 25 == 0:  # links flap and routes change while frames are in flight
            edges = [e for e in EVERY_EDGE if rng.random() < 0.8]
            paths = rng.choice(ROUTE_SETS)
            for rt in rts:
                apply(rt, now * 3.0, edges, paths)
        for _ in range(rng.randint(0, 6)):
            if rng.random() < 0.8:  # mostly along a route, in bursts that fill queues
                path = rng.choice(paths)
                src, dst = path[0], path[-1]
            else:
                src, dst = rng.sample([SAT0, SAT1, SAT2, SAT3, ALPHA, BRAVO, OPS], 2)
            next_id += 1
            rts[int(owner[src])].originate(src, frame(next_id, src, dst,
                                                      rng.randint(40, 1500), now), now)
        for rt in rts:
            rt.run_due(now)
        while mailbox:
            worker, payload = mailbox.pop(0)
            rts[worker].receive_batch(payload, now)
    # Stop half-way through the traffic: some frames are still on links.
    held = sum(len(rt.held_frames()) for rt in rts)
    offered, delivered, dropped = totals(*rts)
    assert held > 0 and delivered > 0
    assert {"loss", "queue", "no_route"} <= set(dropped)
    assert offered == next_id
    assert offered == delivered + sum(dropped.values()) + held
    assert held == sum(rt.stats.in_flight for rt in rts)


# --- roles: telemetry store and dump ------------------------------------------------------------

def test_telemetry_waits_on_board_until_a_route_appears() -> None:
    rate_hz = 10.0
    topology = tiny_topology(tm_rate_hz=rate_hz)
    rt = runtime(topology)
    roles = Roles(rt, duration_s=60.0)
    apply(rt, 0.0, [], [])  # no links, no routes
    roles.start(0.0)
    step_s = 0.005
    t = 0.0
    while t < 2.0:
        t += step_s
        rt.run_due(t)
    tm = rt.stats.flows[FLOW_TELEMETRY]
    held = sum(len(s) for s in roles.store.values())
    # Four satellites at 10 Hz for two seconds, one frame per period each (phase uniform).
    assert 4 * 19 <= tm.offered <= 4 * 20
    assert tm.delivered == 0 and not tm.dropped
    assert held == tm.offered == rt.stats.held_on_board
    assert rt.stats.max_backlog >= 19
    stored = [f for s in roles.store.values() for f in s]
    assert {f[F_KIND] for f in stored} == {TELEMETRY}
    assert {f[F_DST] for f in stored} == {OPS}

    # A pass: sat0 sees alpha, the ISL ring reaches sat0, alpha is fibred to ops.
    edges = [(ALPHA, SAT0, GSL, 0.004), (ALPHA, OPS, TERRESTRIAL, 0.002),
             (SAT1, SAT0, ISL, 0.01), (SAT2, SAT1, ISL, 0.01), (SAT3, SAT0, ISL, 0.01)]
    apply(rt, 2.0, edges, [(SAT0, ALPHA, OPS), (SAT1, SAT0, ALPHA, OPS),
                           (SAT2, SAT1, SAT0, ALPHA, OPS), (SAT3, SAT0, ALPHA, OPS)])
    while t < 4.0:
        t += step_s
        rt.run_due(t)
    assert sum(len(s) for s in roles.store.values()) == 0
    assert rt.stats.held_on_board == 0
    in_flight = len(rt.held_frames())
    assert tm.delivered + in_flight == tm.offered and not tm.dropped
    ages_ms = rt.stats.telemetry_age_ms.samples()
    assert len(ages_ms) == tm.delivered
    # The first frames were made near t=0 and could only leave after the pass began at 2 s.
    assert max(ages_ms) > 1900.0
    # Once the route exists, new telemetry goes straight down: the newest ages are link delays.
    assert min(ages_ms) < 50.0
    assert {f[F_SRC] for f in stored} == {SAT0, SAT1, SAT2, SAT3}


def test_full_on_board_store_drops_with_store_full() -> None:
    topology = tiny_topology(tm_rate_hz=10.0, store=5)
    rt = runtime(topology)
    roles = Roles(rt, duration_s=60.0)
    apply(rt, 0.0, [], [])
    roles.start(0.0)
    t = 0.0
    while t < 1.0:
        t += 0.005
        rt.run_due(t)
    tm = rt.stats.flows[FLOW_TELEMETRY]
    assert all(len(s) == 5 for s in roles.store.values())
    assert tm.dropped["store_full"] == tm.offered - 4 * 5 > 0


# --- roles: rates do not drift when the clock wakes the runtime late ----------------------------

WAKE_UP_STEP_S = 0.013
"""The fake clock calls run_due every 13 ms, so each generator fires up to 13 ms late."""


def _run_late(rt: NodeRuntime, roles: Roles, until_s: float) -> None:
    roles.start(0.0)
    t = 0.0
    while t < until_s:
        t += WAKE_UP_STEP_S
        rt.run_due(t)


def test_constant_rate_flow_keeps_its_rate_when_woken_late() -> None:
    rate_pps, duration_s = 25.0, 10.0
    topology = tiny_topology(traffic=f"""traffic:
  - {{name: f, source: alpha, destination: bravo, pattern: constant, rate_pps: {rate_pps}}}""")
    rt = runtime(topology)
    apply(rt, 0.0, [(ALPHA, BRAVO, TERRESTRIAL, 0.001)], [(ALPHA, BRAVO)])
    _run_late(rt, Roles(rt, duration_s=duration_s), duration_s + 1.0)
    # A constant-rate flow offers rate x duration frames, however late each wake-up is.
    assert abs(rt.stats.flows[0].offered - rate_pps * duration_s) <= 1


def test_telemetry_keeps_its_rate_when_woken_late() -> None:
    rate_hz, duration_s = 10.0, 10.0
    rt = runtime(tiny_topology(tm_rate_hz=rate_hz))
    apply(rt, 0.0, [], [])
    _run_late(rt, Roles(rt, duration_s=duration_s), duration_s + 1.0)
    # Four satellites; each may gain or lose one frame at the ends of the run.
    assert abs(rt.stats.flows[FLOW_TELEMETRY].offered - 4 * rate_hz * duration_s) <= 4


# --- lateness is measured, never compounded -----------------------------------------------------

@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_late_wake_ups_do_not_add_up_along_the_path(speed: float) -> None:
    """Every hop is handled 3 ms (wall) late; the frame still arrives when the links say."""
    rt = runtime(tiny_topology(), speed=speed)
    apply(rt, 0.0, PATH_EDGES, [PATH])
    delivered: list[float] = []
    rt.on_deliver = lambda node, f, at: delivered.append(at)
    late_wall = 0.003
    size = 1250
    created = 100.0
    rt.originate(ALPHA, frame(1, ALPHA, BRAVO, size, created), created)
    while rt.next_due is not None:
        rt.run_due(rt.next_due + late_wall)
    bits = size * 8.0
    expected_s = (bits / 1e6 + 0.004) + (bits / 2e6 + 0.013) + (bits / 1e6 + 0.006)
    assert delivered == [pytest.approx(created + expected_s / speed, abs=ONE_MICROSECOND_S)]
    fs = rt.stats.flows[0]
    assert fs.latency_ms.samples() == [pytest.approx(expected_s * 1000.0, abs=ONE_MICROSECOND_MS)]
    # ... and the lateness is on the books, in scenario ms: 3 hops, each 3 ms wall late.
    late_ms = late_wall * speed * 1000.0
    assert rt.stats.hop_late_ms.samples() == [pytest.approx(late_ms, abs=ONE_MICROSECOND_MS)] * 3
    assert fs.late_ms.samples() == [pytest.approx(late_ms, abs=ONE_MICROSECOND_MS)]


def test_a_frame_handed_over_late_is_still_due_on_time() -> None:
    """The broker took longer than the propagation delay: lateness, not a later arrival."""
    topology = tiny_topology()
    owner = np.array([0, 1, 0, 0, 0, 1, 0], dtype=np.int64)
    sent0 = Sent()
    w0 = runtime(topology, worker=0, owner=owner, send=sent0)
    w1 = runtime(topology, worker=1, owner=owner)
    for rt in (w0, w1):
        apply(rt, 0.0, PATH_EDGES, [PATH])
    arrivals: list[float] = []
    w1.on_deliver = lambda node, f, at: arrivals.append(at)
    w0.originate(ALPHA, frame(1, ALPHA, BRAVO, 125, 0.0), 0.0)
    drain(w0)
    _worker, payload = sent0.calls[0]
    (_v, handed), = decode_batch(payload)[0]
    w1.receive_batch(payload, handed[F_DUE] + 0.010)  # 10 ms after it was due at sat1
    drain(w1)
    bits = 125 * 8.0
    expected_s = (bits / 1e6 + 0.004) + (bits / 2e6 + 0.013) + (bits / 1e6 + 0.006)
    assert arrivals == [pytest.approx(expected_s, abs=ONE_MICROSECOND_S)]
    assert max(w1.stats.hop_late_ms.samples()) == pytest.approx(10.0, abs=ONE_MICROSECOND_MS)


def test_a_down_source_counts_what_it_could_not_offer() -> None:
    topology = tiny_topology(traffic="""traffic:
  - {name: f, source: alpha, destination: bravo, pattern: constant, rate_pps: 10}""")
    rt = runtime(topology)
    a, b, kind, delay_s = links([(ALPHA, BRAVO, TERRESTRIAL, 0.001)])
    destinations, next_hop = routes([(ALPHA, BRAVO)])
    rt.apply_state(0.0, a, b, kind, delay_s, destinations, next_hop)
    roles = Roles(rt, duration_s=10.0)
    roles.start(0.0)
    drain(rt, until=2.0)
    rt.apply_state(2.0, a, b, kind, delay_s, destinations, next_hop, now=2.0,
                   down={ALPHA: "outage1"})
    drain(rt, until=4.0)
    rt.apply_state(4.0, a, b, kind, delay_s, destinations, next_hop, now=4.0)
    drain(rt, until=10.5)
    fs = rt.stats.flows[0]
    # Offers fall at 0.1, 0.2, ..., 9.9 s (99 of them); the 20 between 2.0 and 3.9 s find
    # alpha down.
    assert fs.suppressed == {"outage1": 20}
    assert fs.offered == 99 - 20
    assert rt.stats.fault_suppressed["outage1"][0] == 20


@pytest.mark.parametrize("field, value", [
    (F_SIZE, float("nan")), (F_SIZE, 10**18), (F_SIZE, 0), (F_CREATED, "yesterday"),
    (F_HOPS, "3"), (F_TTL, 1000), (F_DST, 99), (F_DUE, float("inf")), (F_FROM, 3.5),
], ids=["size-nan", "size-huge", "size-zero", "created-str", "hops-str", "ttl-big",
        "dst-unknown", "due-inf", "from-float"])
def test_one_bad_frame_is_refused_and_its_batch_goes_on(field: int, value: Any) -> None:
    rt = runtime(tiny_topology())
    apply(rt, 0.0, [(ALPHA, BRAVO, TERRESTRIAL, 0.001)], [(ALPHA, BRAVO)])
    bad = frame(2, ALPHA, BRAVO, 10, 0.0)
    bad[field] = value
    good = [frame(1, ALPHA, BRAVO, 10, 0.0), frame(3, ALPHA, BRAVO, 10, 0.0)]
    rt.receive_batch(encode_batch([(ALPHA, good[0]), (ALPHA, bad), (ALPHA, good[1])]), 1.0,
                     injected=True, topic="inbox")
    drain(rt)
    assert rt.stats.malformed_by_topic == {"inbox": 1}
    assert rt.stats.flows[0].delivered == 2
