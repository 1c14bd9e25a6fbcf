"""The per-hop fast paths say exactly what the slow ones say.

The frame check on receipt has a one-expression path for the usual frame shape beside the
field-by-field one that names what is wrong; the batch encoder can reuse its caller's Packer.
These are speed-ups only: every frame, good or bad, must get the same answer either way.
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgpack

from orbitmesh.protocol.wire import (
    ACK,
    F_CREATED,
    F_DUE,
    F_FROM,
    F_PROP,
    F_REF,
    F_WAIT,
    WIRE_VERSION,
    _frame_problem,
    _frame_problem_slowly,
    batch_packer,
    decode_batch,
    encode_batch,
    new_frame,
)

N_NODES = 10
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
        quick, slow = _frame_problem(item, N_NODES), _frame_problem_slowly(item, N_NODES)
        assert quick == slow, item
        accepted += quick is None
        refused += quick is not None
    assert accepted > 1_000 and refused > 10_000  # both answers were exercised


def test_good_frames_take_the_quick_path_and_pass() -> None:
    rng = random.Random(2)
    for _ in range(2_000):
        item = [rng.randrange(N_NODES), good_frame(rng)]
        assert _frame_problem(item, N_NODES) is None


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
