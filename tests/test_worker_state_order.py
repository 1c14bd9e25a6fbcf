"""A tick re-published with a live fault outranks its earlier copy, whatever order they run in.

Both copies of tick k share ``t_s``; when both arrive before it is due they are queued for the
same instant, and the runtime runs same-instant state changes newest first — so the earlier
copy used to run last and put the state without the fault back in force.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nodes.worker import Worker
from orbitmesh.core.engine import TickEngine
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.protocol.state import TickSnapshot, decode_state, encode_state
from orbitmesh.protocol.transport import MemoryBroker, MemoryTransport

SCENARIO = Path(__file__).parent / "data" / "faults" / "detour.yaml"


def _worker_and_ticks() -> tuple[Worker, TickSnapshot, TickSnapshot]:
    topology = build_topology(load_scenario(SCENARIO))
    worker = Worker(topology, worker=0, workers=1, run_id="order",
                    transport=MemoryTransport(MemoryBroker(), "w0"), out_dir=None,
                    duration_s=10.0, speed=1.0)
    tick = TickEngine(topology).step(1.0)
    plain = decode_state(encode_state(4, tick.state, tick.routes), topology.n_nodes)
    victim = topology.node_ids.index("perth")
    faulted = dataclasses.replace(plain, seq=5, down={victim: "perth-down"})
    return worker, plain, faulted


def _apply_both(first: str, second: str) -> Worker:
    worker, plain, faulted = _worker_and_ticks()
    order = {"plain": plain, "faulted": faulted}
    rt = worker.runtime
    rt.t0_wall = 1000.0
    worker.started = True
    received = rt.wall_at(0.5)  # both copies arrive half a tick before tick 1 is due
    worker._on_state(order[first], received)
    worker._on_state(order[second], received)
    rt.run_due(rt.wall_at(1.0))
    return worker


def test_the_republication_wins_when_it_arrives_second() -> None:
    worker = _apply_both("plain", "faulted")
    assert set(worker.runtime.down_all.values()) == {"perth-down"}


def test_the_republication_wins_when_it_arrives_first() -> None:
    worker = _apply_both("faulted", "plain")
    assert set(worker.runtime.down_all.values()) == {"perth-down"}
