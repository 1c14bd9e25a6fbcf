"""The controller: owns the clock, computes each tick one tick ahead, and publishes it.

Scenario time is ``(wall - t0_wall) * speed``. The controller publishes the retained clock
(``t0_wall``, speed, duration) once every worker is ready, then for tick k it publishes the
complete state in force from ``k * tick_s`` (retained, so late joiners catch up) while tick k-1 is
still in force. The link timeline (every diff) goes to ``links.msgpack`` in the run directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import msgpack
import numpy as np

from nodes.transport import Transport
from orbitmesh.engine import Tick, TickEngine
from orbitmesh.errors import RunError
from orbitmesh.links import LinkState
from orbitmesh.state import encode_state
from orbitmesh.topology import Topology
from orbitmesh.wire import Topics

log = logging.getLogger("orbitmesh.controller")
START_LEAD_S = 0.5
"""Wall seconds between publishing the clock and scenario time 0."""


class Controller:
    """Computes and publishes ticks for one run."""

    def __init__(self, topology: Topology, transport: Transport, topics: Topics, *,
                 duration_s: float, speed: float, out_dir: Path | None) -> None:
        self.topology = topology
        self.transport = transport
        self.topics = topics
        self.duration_s = duration_s
        self.speed = speed
        scenario = topology.scenario
        policies = sorted({f.policy for f in scenario.traffic if f.policy})
        self.engine = TickEngine(topology, policies=policies)
        self.tick_s = scenario.tick_s
        self.t0_wall = 0.0
        self.seq = 0
        self.tick_compute_ms: list[float] = []
        self.handovers = 0
        self._timeline: IO[bytes] | None = (
            (out_dir / "links.msgpack").open("wb") if out_dir else None)
        self._packer = msgpack.Packer(use_bin_type=True)

    def wall_at(self, t_s: float) -> float:
        """Wall time of scenario time ``t_s``."""
        return self.t0_wall + t_s / self.speed

    def _compute(self, t_s: float) -> Tick:
        started = time.perf_counter()
        tick = self.engine.step(t_s)
        self.tick_compute_ms.append((time.perf_counter() - started) * 1000.0)
        self.handovers += tick.handovers
        self._record(tick)
        return tick

    def _publish(self, tick: Tick) -> None:
        self.seq += 1
        self.transport.publish(self.topics.state, encode_state(self.seq, tick.state, tick.routes),
                               retain=True)
        d = tick.diff
        self.transport.publish(self.topics.links, json.dumps({
            "t_s": tick.t_s, "up": len(d.up), "down": len(d.down_a),
            "delay_changed": len(d.delay_changed), "handovers": tick.handovers,
            "route_changes": tick.route_changes}).encode())

    def _record(self, tick: Tick) -> None:
        if self._timeline is None:
            return
        s, d = tick.state, tick.diff
        ids = self.topology.node_ids

        def rows(idx: np.ndarray, st: LinkState) -> list[list[Any]]:
            return [[ids[st.a[i]], ids[st.b[i]], int(st.kind[i]), float(st.delay_s[i])]
                    for i in idx.tolist()]

        self._timeline.write(self._packer.pack({
            "t_s": tick.t_s, "up": rows(d.up, s), "changed": rows(d.delay_changed, s),
            "down": [[ids[a], ids[b], int(k)] for a, b, k in
                     zip(d.down_a.tolist(), d.down_b.tolist(), d.down_kind.tolist(),
                         strict=True)],
            "handovers": tick.handovers, "route_changes": tick.route_changes}))

    async def run(self, on_tick: Callable[[float], None] | None = None,
                  stop: asyncio.Event | None = None) -> None:
        """Start the clock and tick until the duration is over (or ``stop`` is set)."""
        self._publish(self._compute(0.0))
        n_ticks = math.ceil(self.duration_s / self.tick_s)
        upcoming = self._compute(self.tick_s) if n_ticks >= 1 else None
        self.t0_wall = time.time() + START_LEAD_S
        self.transport.publish(self.topics.clock, json.dumps({
            "t0_wall": self.t0_wall, "speed": self.speed, "duration_s": self.duration_s,
            "tick_s": self.tick_s,
            "epoch": self.topology.scenario.epoch.isoformat()}).encode(), retain=True)
        for k in range(1, n_ticks + 1):
            # Publish tick k while tick k-1 is in force, then compute tick k+1 ahead of time.
            await _sleep_until(self.wall_at((k - 1) * self.tick_s))
            if stop is not None and stop.is_set():
                break
            assert upcoming is not None
            self._publish(upcoming)
            if on_tick is not None:
                on_tick((k - 1) * self.tick_s)
            upcoming = self._compute((k + 1) * self.tick_s) if k < n_ticks else None
            if self.tick_compute_ms[-1] > self.tick_s / self.speed * 1000.0:
                log.warning("tick took %.0f ms, longer than a tick at this speed; links will "
                            "be late — lower --speed", self.tick_compute_ms[-1])
        await _sleep_until(self.wall_at(self.duration_s))

    def close(self) -> None:
        """Close the timeline file."""
        if self._timeline is not None:
            self._timeline.close()
            self._timeline = None


async def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def check_alive(processes: dict[int, Any]) -> None:
    """Raise RunError when a worker process has exited early."""
    for k, proc in processes.items():
        if proc.returncode is not None:
            raise RunError(f"worker {k} exited with code {proc.returncode} before the run ended; "
                           "see its log in the run directory")
