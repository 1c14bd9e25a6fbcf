"""What made a worker's memory grow over a long run (bench/soak.py, bench/soak_virtual.py) stays
bounded: transmitters of links idle for a tick are forgotten, whether the link is still live or
not, without changing when any frame leaves; a histogram's exact part holds doubles, not float
objects.
"""

from __future__ import annotations

import functools
import itertools
import tracemalloc

import numpy as np
import pytest

from nodes.runtime import NodeRuntime
from orbitmesh.core.histogram import EXACT_SAMPLES, Histogram
from orbitmesh.core.topology import GSL, ISL
from tests.test_runtime import (
    ALPHA,
    N_NODES,
    ONE_MICROSECOND_S,
    SAT0,
    apply,
    drain,
    frame,
    links,
    routes,
    runtime,
    tiny_topology,
)

TEN_MINUTES_OF_TICKS = 600
ALL_PAIRS = list(itertools.combinations(range(N_NODES), 2))
DIRECTIONS = [(u, v) for a, b in ALL_PAIRS for u, v in ((a, b), (b, a))]


def _full_mesh_state(rt: NodeRuntime, t_s: float, at_wall: float) -> None:
    """Every pair of nodes linked (ISL, 1 ms), every node one hop from every other."""
    a = np.array([p[0] for p in ALL_PAIRS], dtype=np.int64)
    b = np.array([p[1] for p in ALL_PAIRS], dtype=np.int64)
    kind = np.full(len(ALL_PAIRS), ISL, dtype=np.int8)
    delay_s = np.full(len(ALL_PAIRS), 0.001)
    table = np.tile(np.arange(N_NODES, dtype=np.int64)[:, None], (1, N_NODES))  # [dst, u] = dst
    rt.apply_state(t_s, a, b, kind, delay_s, np.arange(N_NODES, dtype=np.int64), {None: table},
                   now=at_wall)


def test_transmitters_stay_few_while_traffic_wanders_over_live_links() -> None:
    """Ten minutes of ticks, one frame a tick on a different link direction each time, every
    link live throughout: only the directions used in the last tick or two keep a transmitter
    (before, every direction ever used kept one: 42 here, all of an ISL mesh in a long run)."""
    rt = runtime(tiny_topology())
    directions = itertools.cycle(DIRECTIONS)
    used: set[tuple[int, int]] = set()
    most = 0
    for k in range(TEN_MINUTES_OF_TICKS):
        rt.call_at(float(k), functools.partial(_full_mesh_state, rt, float(k)), first=True)
        drain(rt, float(k))
        u, v = next(directions)
        used.add((u, v))
        rt.originate(u, frame(k, u, v, 500, k + 0.5), k + 0.5)
        drain(rt, k + 0.99)
        most = max(most, len(rt.tx))
    assert rt.stats.flows[0].delivered == TEN_MINUTES_OF_TICKS  # it flowed over all of them
    assert len(used) == len(DIRECTIONS)
    assert most <= 2


def test_a_transmitter_busy_across_link_states_keeps_its_queue_and_an_idle_one_starts_afresh(
) -> None:
    """Forgetting changes no departure: a frame behind one still serialising waits for it across
    two state changes; a frame on a link idle for two ticks leaves at once, as it would have."""
    rt = runtime(tiny_topology())
    edges = [(ALPHA, SAT0, GSL, 0.003)]
    arrivals: list[float] = []
    rt.on_deliver = lambda node, f, now: arrivals.append(now)
    serialise_s = 125_000 * 8 / 1e6  # 1 s at the GSL's 1 Mb/s
    apply(rt, 0.0, edges, [(ALPHA, SAT0)])
    rt.originate(ALPHA, frame(1, ALPHA, SAT0, 125_000, 0.5), 0.5)  # serialising 0.5 .. 1.5
    for t in (1.0, 2.0):
        rt.call_at(t, functools.partial(_reapply, rt, edges, t), first=True)
    rt.call_at(1.2, lambda at: rt.originate(ALPHA, frame(2, ALPHA, SAT0, 125_000, at), at))
    drain(rt, 2.9)
    assert (ALPHA, SAT0) in rt.tx  # busy until 2.5, after the state of 2.0 took effect
    for t in (3.0, 4.0):
        rt.call_at(t, functools.partial(_reapply, rt, edges, t), first=True)
    drain(rt, 4.1)
    assert (ALPHA, SAT0) not in rt.tx  # idle since 2.5, before the state of 3.0: forgotten
    rt.originate(ALPHA, frame(3, ALPHA, SAT0, 125_000, 4.2), 4.2)
    drain(rt)
    assert arrivals == pytest.approx([1.5 + 0.003, 2.5 + 0.003, 4.2 + serialise_s + 0.003],
                                     abs=ONE_MICROSECOND_S)


def _reapply(rt: NodeRuntime, edges: list[tuple[int, int, int, float]], t_s: float,
             at_wall: float) -> None:
    """The same links and routes again, as the state of tick ``t_s`` taking effect at
    ``at_wall``."""
    a, b, kind, delay_s = links(edges)
    destinations, next_hop = routes([(ALPHA, SAT0)])
    rt.apply_state(t_s, a, b, kind, delay_s, destinations, next_hop, now=at_wall)


def test_the_exact_part_of_a_histogram_costs_about_eight_bytes_a_sample() -> None:
    """A slow figure (a 3-pps flow's latency) fills its exact part over ~23 minutes; as float
    objects in a list that was 32 bytes a sample, which the soak saw as growth."""
    tracemalloc.start()
    try:
        before_b = tracemalloc.get_traced_memory()[0]
        h = Histogram()
        for i in range(EXACT_SAMPLES - 1):
            h.add(i * 0.5 + 0.25)  # a new float object each time, as a measurement is
        held_b = tracemalloc.get_traced_memory()[0] - before_b
    finally:
        tracemalloc.stop()
    assert h.exact and h.n == EXACT_SAMPLES - 1
    assert held_b <= EXACT_SAMPLES * 8 * 1.25 + 1024
