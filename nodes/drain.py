"""The end of a worker's frame exchange: count what the other workers sent before they stopped.

Every worker sends an end marker to every other one after it stops forwarding; MQTT keeps one
publisher's messages in order, so once all markers are in, nothing sent to us is still inside the
broker, and the frames read meanwhile are counted as in flight (conservation holds).

A worker that ran behind has a backlog in the broker to read first: at 150k hops/s the python
plane once ran 13 s behind, and a fixed 3 s limit gave up with 17,832 frames uncounted. So the
drain waits as long as frames keep coming (it gives up after :data:`DRAIN_IDLE_S` with nothing
new), up to an overall limit that grows with how far behind the worker was
(:func:`drain_cap_s`). When it gives up, :class:`DrainResult` says so, and the worker puts it in
its log and stats file (``drain``), which the summary reports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodes.runtime import NodeRuntime
from nodes.stats import Stats
from orbitmesh.protocol.clock import WallSource
from orbitmesh.protocol.messages import EndMarker
from orbitmesh.protocol.transport import Transport
from orbitmesh.protocol.wire import F_FLOW, WIRE_VERSION, Topics, decode_batch

log = logging.getLogger("orbitmesh.worker")

DRAIN_IDLE_S = 3.0
"""Give up after this many wall seconds with nothing new on the frame topic."""
DRAIN_MIN_CAP_S = 10.0
"""The overall limit of a worker that kept up."""
DRAIN_BEHIND_FACTOR = 2.0
"""Overall limit per second the worker was behind: reading a backlog only decodes and counts,
so it goes faster than the forwarding that built it."""
DRAIN_MAX_CAP_S = 15.0
"""Never longer: the launcher waits 20 s for every worker's ``done``
(orbitmesh/run/launch/local_run.py FINISH_TIMEOUT_S) before it reaps them."""


def drain_cap_s(behind_s: float) -> float:
    """Overall wall-second limit of a drain by a worker that was ``behind_s`` behind."""
    return min(DRAIN_MAX_CAP_S, max(DRAIN_MIN_CAP_S,
                                    DRAIN_IDLE_S + DRAIN_BEHIND_FACTOR * max(0.0, behind_s)))


@dataclass
class DrainResult:
    """How a drain ended: what it read, how long it took, and whether it gave up (and why)."""

    cap_s: float
    waited_s: float = 0.0
    frames: int = 0
    missing: list[int] = field(default_factory=list)
    """Workers whose end marker never came."""
    gave_up: str | None = None
    """None (every marker came), "idle" (nothing new for DRAIN_IDLE_S), "cap" (the overall
    limit) or "closed" (the transport ended first)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the stats file."""
        return {"cap_s": round(self.cap_s, 3), "waited_s": round(self.waited_s, 3),
                "frames": self.frames, "missing_end_markers": self.missing,
                "timed_out": self.gave_up is not None, "gave_up": self.gave_up}


async def drain_frames(transport: Transport, frames_topic: str, others: set[int],
                       count: Callable[[bytes], int], *, cap_s: float,
                       idle_s: float = DRAIN_IDLE_S) -> DrainResult:
    """Read ``frames_topic`` until every worker in ``others`` has sent its end marker, handing
    each frame batch to ``count`` (it returns how many frames it counted)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + cap_s
    result = DrainResult(cap_s)
    waiting = set(others)
    try:
        async with asyncio.timeout_at(min(started + idle_s, deadline)) as scope:
            async for batch in transport.batches():
                moved = False
                for message in batch:
                    if message.topic != frames_topic:
                        continue
                    moved = True
                    end = EndMarker.sniff(message.payload, WIRE_VERSION)
                    if end is not None:
                        waiting.discard(end.sender)
                    else:
                        result.frames += count(message.payload)
                if not waiting:
                    break
                if moved:  # progress: the idle limit starts again, the overall one stands
                    scope.reschedule(min(loop.time() + idle_s, deadline))
    except TimeoutError:
        result.gave_up = "cap" if loop.time() >= deadline else "idle"
    if waiting and result.gave_up is None:  # the connection closed first
        result.gave_up = "closed"
    result.waited_s = loop.time() - started
    result.missing = sorted(waiting)
    return result


class WorkerDrain:
    """Mixin of :class:`nodes.worker.Worker`: its end markers and its drain."""

    index: int
    workers: int
    topics: Topics
    transport: Transport
    runtime: NodeRuntime
    stats: Stats
    drained: dict[int, int]
    drain: DrainResult | None
    behind_s: float
    _ends_seen: set[int]
    wall: WallSource

    async def _drain(self) -> None:
        """Send our end markers, then count the frames other workers sent us before they
        stopped, as still in flight (nodes/drain.py: it waits while they keep coming)."""
        others = {k for k in range(self.workers) if k != self.index} - self._ends_seen
        marker = EndMarker(self.index).encode(WIRE_VERSION)
        for k in range(self.workers):
            if k == self.index:
                continue
            self.transport.publish(self.topics.worker_frames(k), marker)
        if not others:  # every marker came while we were running: nothing left to wait for
            self.drain = DrainResult(cap_s=0.0)
            return
        due = self.runtime.next_due
        behind_s = max(self.behind_s, self.wall.now_wall() - due if due is not None else 0.0)
        result = await drain_frames(self.transport, self.topics.worker_frames(self.index),
                                    others, self._count_drained, cap_s=drain_cap_s(behind_s))
        self.drain = result
        if result.gave_up is not None:
            log.warning("drain gave up (%s) after %.1f s (limit %.1f s, %d frames counted): no "
                        "end marker from worker(s) %s; frames they sent after that are "
                        "uncounted", result.gave_up, result.waited_s, result.cap_s,
                        result.frames, result.missing)

    def _count_drained(self, payload: bytes) -> int:
        """Count one drained batch's frames as in flight, by flow; how many there were."""
        try:
            items, _refused = decode_batch(payload, self.runtime.n_nodes)
        except ValueError as exc:
            self.stats.malformed(str(exc), "frames")
            return 0
        for _node, frame in items:
            self.stats.remote_received(frame)
            self.drained[frame[F_FLOW]] = self.drained.get(frame[F_FLOW], 0) + 1
        return len(items)
