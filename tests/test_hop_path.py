"""The per-hop fast paths say exactly what the slow ones say.

The frame check on receipt has a one-expression path for the usual frame shape beside the
field-by-field one that names what is wrong; the batch encoder can reuse its caller's Packer.
These are speed-ups only: every frame, good or bad, must get the same answer either way.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from typing import Any

import msgpack
import numpy as np
import pytest

from nodes.runtime import NodeRuntime
from orbitmesh.protocol.frames import frame_problem, frame_problem_slowly
from orbitmesh.protocol.wire import (
    ACK,
    F_CREATED,
    F_DUE,
    F_FROM,
    F_PROP,
    F_REF,
    F_WAIT,
    WIRE_VERSION,
    batch_packer,
    decode_batch,
    encode_batch,
    new_frame,
)
from tests.test_runtime import (
    ALPHA,
    BRAVO,
    N_NODES,
    PATH,
    PATH_EDGES,
    apply,
    frame,
    runtime,
    tiny_topology,
    totals,
)

ODD_VALUES: tuple[Any, ...] = (
    -2, -1, 0, 1, 3, 4, 9, 10, 255, 256, 65_535, 65_536, 1 << 40, True, False, 0.0, 1.0, -0.5,
    2.5, 1e11, math.nan, math.inf, -math.inf, None, "x", "", b"", b"ab", [], [1, 2], [99],
    {"a": 1})


def good_frame(rng: random.Random) -> list[Any]:
    """A handed-over frame as workers send it."""
    kind = rng.randrange(4)
    frame = new_frame(rng.randrange(1 << 40), kind, rng.randrange(-4, 8), rng.randrange(N_NODES),
                      rng.randrange(N_NODES), rng.randrange(1, 2000), 1000.0 + rng.random(),
                      ref=[rng.randrange(100)] if kind == ACK else None,
                      payload=rng.randbytes(rng.randrange(4)))
    frame[F_DUE] = frame[F_CREATED] + rng.random()
    frame[F_FROM] = rng.randrange(-1, N_NODES)
    frame[F_WAIT] = rng.random() * 1e-3
    frame[F_PROP] = rng.random() * 1e-2
    return frame


def mutated(rng: random.Random) -> Any:
    """A batch entry with one to three fields (or its shape) made odd."""
    frame = good_frame(rng)
    item: Any = [rng.randrange(N_NODES), frame]
    for _ in range(rng.randrange(1, 4)):
        roll = rng.random()
        if roll < 0.05:
            item = rng.choice([frame, [item[0]], [item[0], frame, 1], (item[0], frame), None])
            break
        if roll < 0.1:
            frame.append(0) if rng.random() < 0.5 else frame.pop()
        elif roll < 0.2:
            item[0] = rng.choice(ODD_VALUES)
        else:
            frame[rng.randrange(len(frame))] = rng.choice(ODD_VALUES)
    return item


def test_the_quick_check_agrees_with_the_field_by_field_one() -> None:
    rng = random.Random(14)
    accepted = refused = 0
    for _ in range(20_000):
        item = mutated(rng)
        quick, slow = frame_problem(item, N_NODES), frame_problem_slowly(item, N_NODES)
        assert quick == slow, item
        accepted += quick is None
        refused += quick is not None
    assert accepted > 1_000 and refused > 10_000  # both answers were exercised


def test_good_frames_take_the_quick_path_and_pass() -> None:
    rng = random.Random(2)
    for _ in range(2_000):
        item = [rng.randrange(N_NODES), good_frame(rng)]
        assert frame_problem(item, N_NODES) is None


def test_a_batch_keeps_its_good_frames_in_order_and_names_the_bad_ones() -> None:
    rng = random.Random(5)
    good = [[i % N_NODES, good_frame(rng)] for i in range(6)]
    bad_size, bad_node = good_frame(rng), good_frame(rng)
    bad_size[5] = 0
    entries = [good[0], good[1], [1, bad_size], good[2], [N_NODES, bad_node], *good[3:]]
    items, refused = decode_batch(msgpack.packb([WIRE_VERSION, entries], use_bin_type=True),
                                  N_NODES)
    assert items == good
    assert refused == ["size 0 is not 1..65535", f"to_node {N_NODES} is not a node index"]
    items, refused = decode_batch(encode_batch([(e[0], e[1]) for e in good]), N_NODES)
    assert (items, refused) == (good, [])


def test_a_reused_packer_packs_what_a_fresh_one_does() -> None:
    rng = random.Random(7)
    packer = batch_packer()
    for size in (1, 5, 40, 1):
        items = [(rng.randrange(N_NODES), good_frame(rng)) for _ in range(size)]
        payload = encode_batch(items, packer)
        assert payload == encode_batch(items)
        decoded, refused = decode_batch(payload, N_NODES)
        assert refused == [] and decoded == [[v, f] for v, f in items]
        assert decoded[0][1][F_REF] == items[0][1][F_REF]


# --- coalesced hand-over ----------------------------------------------------------------------

TRANSIT_S = 50e-6
"""Virtual broker transit between the two runtimes: well inside every guard used below."""


def two_workers(guard_s: float | None) -> tuple[list[NodeRuntime], list[tuple[float, int]]]:
    """Frames alpha -> sat0 -> sat1 -> bravo, every hop crossing between two runtimes, driven
    exactly at each due time; (runtimes, (send time, frames) per message)."""
    topology = tiny_topology()
    owner = np.array([1, 0, 0, 0, 0, 1, 0], dtype=np.int64)  # sat0 w1, sat1 w0, alpha w0, bravo w1
    clock = [0.0]
    pending: list[tuple[float, int, int, bytes]] = []
    sends: list[tuple[float, int]] = []

    def sender(worker: int, payload: bytes) -> None:
        heapq.heappush(pending, (clock[0] + TRANSIT_S, len(sends), worker, payload))
        sends.append((clock[0], len(decode_batch(payload, N_NODES)[0])))

    rts = [runtime(topology, worker=k, owner=owner, send=sender) for k in (0, 1)]
    for rt in rts:
        rt.handover_guard_s = guard_s
        apply(rt, 0.0, PATH_EDGES, [PATH])
    rng = random.Random(11)
    t = 1.0
    for i in range(300):
        t += rng.expovariate(2_000.0)
        offer = frame(i, ALPHA, BRAVO, 40, t)
        rts[0].call_at(t, lambda at, f=offer: rts[0].originate(ALPHA, f, at))
    while True:
        dues = [rt.next_due for rt in rts if rt.next_due is not None]
        if pending:
            dues.append(pending[0][0])
        if not dues:
            return rts, sends
        clock[0] = now = min(dues)
        while pending and pending[0][0] <= now:
            _at, _n, worker, payload = heapq.heappop(pending)
            rts[worker].receive_batch(payload, now, run=False)
        for rt in rts:
            rt.run_due(now)


def test_coalesced_hand_over_sends_fewer_messages_and_changes_nothing_else() -> None:
    plain, plain_sends = two_workers(None)
    held, held_sends = two_workers(0.002)
    for rts in (plain, held):
        assert totals(*rts) == (300, 300, Counter())
        assert [rt.held_frames() for rt in rts] == [[], []]
        assert max(rt.stats.hop_late_ms.maximum or 0.0 for rt in rts) == 0.0  # never late
    assert sum(n for _t, n in held_sends) == sum(n for _t, n in plain_sends)
    assert len(held_sends) < len(plain_sends) / 2
    for a, b in zip(plain, held, strict=True):
        for name in ("latency_ms", "geometric_ms", "late_ms"):
            assert (getattr(a.stats.flows[0], name).samples()
                    == getattr(b.stats.flows[0], name).samples())


def test_a_frame_due_sooner_than_the_guard_leaves_at_the_end_of_its_turn() -> None:
    # Hops of 4, 13 and 6 ms: with a 20 ms guard every frame is due too soon to wait.
    _plain, plain_sends = two_workers(None)
    _held, held_sends = two_workers(0.020)
    assert held_sends == plain_sends


def test_frames_the_outbox_still_holds_are_in_flight() -> None:
    topology = tiny_topology()
    owner = np.array([1, 1, 1, 1, 0, 1, 0], dtype=np.int64)
    sent: list[bytes] = []
    rt = runtime(topology, owner=owner, send=lambda _w, payload: sent.append(payload))
    rt.handover_guard_s = 0.001
    apply(rt, 0.0, PATH_EDGES, [PATH])
    f = frame(1, ALPHA, BRAVO, 40, 1.0)
    rt.originate(ALPHA, f, 1.0)
    rt.run_due(1.0)
    assert sent == [] and rt.held_frames() == [f]  # due at sat0 4.3 ms on: it may wait
    wake = rt.next_due
    assert wake is not None and wake == pytest.approx(f[F_DUE] - 0.001)
    rt.run_due(wake)
    assert len(sent) == 1 and rt.held_frames() == []
