"""The shutdown drain (nodes/drain.py) waits while frames keep coming, on virtual time.

Worker 0 of two has stopped; worker 1 is still working through a backlog and hands frames over
for longer than the old fixed 3 s drain limit (one batch a second, then its end marker). Every
one of them must be counted as in flight and the drain must not report giving up. A peer that
goes quiet without its marker makes the drain give up after the idle limit, and say so (stats
``drain``, the log); one that keeps sending for ever is cut off at the overall limit.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from nodes.drain import DRAIN_IDLE_S, DRAIN_MAX_CAP_S, DRAIN_MIN_CAP_S, drain_cap_s
from nodes.worker import Worker
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.protocol.messages import EndMarker
from orbitmesh.protocol.transport import MemoryBroker, MemoryTransport
from orbitmesh.protocol.wire import (
    DATA,
    F_DUE,
    F_FROM,
    WIRE_VERSION,
    Topics,
    encode_batch,
    new_frame,
)
from tests.virtual_time import LoopWall, VirtualTimeLoop

SCENARIO = Path(__file__).parent / "data" / "faults" / "detour.yaml"
RUN = "drain"
FRAMES_PER_BATCH = 5
FLOW = 0


async def _drain_with_peer(batches: int, gap_s: float, marker: bool) -> tuple[Worker, int]:
    """Worker 0 drains while worker 1 sends ``batches`` batches ``gap_s`` apart (then its end
    marker, if ``marker``); returns the worker and how many frames were sent."""
    topology = build_topology(load_scenario(SCENARIO))
    broker = MemoryBroker()
    topics = Topics(RUN)
    transport = MemoryTransport(broker, "w0")
    peer = MemoryTransport(broker, "w1")
    async with transport, peer:
        worker = Worker(topology, worker=0, workers=2, run_id=RUN, transport=transport,
                        out_dir=None, duration_s=10.0, speed=1.0,
                        wall=LoopWall(asyncio.get_running_loop()))
        await transport.subscribe(topics.worker_frames(0))
        node = min(worker.runtime.local)
        sent = 0

        async def peer_sends() -> None:
            nonlocal sent
            for k in range(batches):
                await asyncio.sleep(gap_s)
                items = []
                for i in range(FRAMES_PER_BATCH):
                    frame = new_frame(k * 100 + i, DATA, FLOW, node, node, 100, 1.0)
                    frame[F_FROM], frame[F_DUE] = 1, 2.0  # a handed-over frame
                    items.append((node, frame))
                peer.publish(topics.worker_frames(0), encode_batch(items))
                sent += len(items)
            if marker:
                peer.publish(topics.worker_frames(0), EndMarker(1).encode(WIRE_VERSION))

        async with asyncio.TaskGroup() as tg:
            tg.create_task(peer_sends())
            await worker._drain()
    return worker, sent


def _run(batches: int, gap_s: float, marker: bool) -> tuple[Worker, int]:
    loop = VirtualTimeLoop()
    loop.virtual_s = 86_400.0  # a loop clock far from 0, as a real one is (since boot)
    try:
        return loop.run_until_complete(_drain_with_peer(batches, gap_s, marker))
    finally:
        loop.close()


def test_a_peer_still_sending_after_the_old_limit_is_waited_for() -> None:
    gap_s = DRAIN_IDLE_S / 3
    batches = int(3 * DRAIN_IDLE_S / gap_s)  # 3x the idle limit: the old fixed 3 s gave up
    worker, sent = _run(batches, gap_s, marker=True)
    assert worker.drain is not None
    assert worker.drain.gave_up is None, worker.drain
    assert worker.drain.missing == []
    assert worker.drain.frames == sent == batches * FRAMES_PER_BATCH
    assert worker.drained == {FLOW: sent}
    assert worker.drain.waited_s > DRAIN_IDLE_S


def test_a_peer_gone_quiet_without_its_marker_is_given_up_on_and_said(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orbitmesh.worker"):
        worker, sent = _run(2, 0.5, marker=False)
    assert worker.drain is not None
    assert worker.drain.gave_up == "idle"
    assert worker.drain.missing == [1]
    assert worker.drain.frames == sent
    assert worker.drain.as_dict()["timed_out"] is True
    assert "drain gave up (idle)" in caplog.text
    assert worker.drain.waited_s == pytest.approx(1.0 + DRAIN_IDLE_S, abs=0.05)


def test_a_peer_that_never_stops_is_cut_off_at_the_overall_limit() -> None:
    gap_s = DRAIN_IDLE_S / 2
    worker, _sent = _run(int(2 * DRAIN_MAX_CAP_S / gap_s), gap_s, marker=False)
    assert worker.drain is not None
    assert worker.drain.gave_up == "cap"
    assert worker.drain.waited_s == pytest.approx(worker.drain.cap_s, abs=0.05)


def test_the_overall_limit_grows_with_how_far_behind_the_worker_was() -> None:
    assert drain_cap_s(0.0) == DRAIN_MIN_CAP_S
    assert drain_cap_s(5.0) > DRAIN_MIN_CAP_S
    assert drain_cap_s(5.0) > drain_cap_s(4.0)
    assert drain_cap_s(1e6) == DRAIN_MAX_CAP_S


def test_a_peer_that_sends_nothing_at_all_is_given_up_on_after_the_idle_limit() -> None:
    worker, _sent = _run(0, 0.0, marker=False)
    assert worker.drain is not None
    assert worker.drain.gave_up == "idle"
    assert worker.drain.waited_s == pytest.approx(DRAIN_IDLE_S, abs=0.05)
