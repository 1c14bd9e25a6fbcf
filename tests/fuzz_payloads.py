"""Hostile MQTT payloads for the fuzzer (tests/test_mqtt_fuzz.py): every topic family's decoder,
valid samples of each message type, and seeded mutations of them.

A mutation is one of: random bytes, a truncation, flipped bytes, a valid payload of another
family, a structural change (a field swapped for a hostile value: wrong type, NaN, inf, huge
numbers, deep nesting; a field removed), deep nesting, or a 10 MB blob. Everything is drawn from
one ``random.Random``, so a case is reproduced from (seed, case index).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from collections.abc import Callable
from typing import Any

import msgpack

from orbitmesh.protocol.messages import (
    ClockMessage,
    ControlCommand,
    ControlError,
    FaultInfo,
    FaultListing,
    FlowProgress,
    LinksNotice,
    WorkerProgress,
    WorkerStatus,
)
from orbitmesh.protocol.state import decode_state
from orbitmesh.protocol.wire import WIRE_VERSION, decode_batch, encode_batch, new_frame

SEED = int(os.environ.get("ORBITMESH_FUZZ_SEED", "16"))
CASES = int(os.environ.get("ORBITMESH_FUZZ_CASES", "300"))
"""Cases per fuzz test: a few hundred in CI, thousands with `make fuzz`."""
BLOB_B = 10 * 1024 * 1024
JSON_FAMILIES = ("clock", "status", "control", "launcher", "control/error", "faults", "links")
MSGPACK_FAMILIES = ("state", "frames", "inbox")
FAMILIES = JSON_FAMILIES + MSGPACK_FAMILIES
HOSTILE: tuple[Any, ...] = (
    None, True, False, "", "x", "\x00" * 3, "é" * 300, [], {}, [[[[]]]], {"v": {"v": {}}},
    math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-300, 10**18, -(10**18), 2**63, 2**64 + 1,
    -1, 0, 1.5, 255, 256, 1 << 31)
"""Values swapped into fields: wrong types, non-finite and huge numbers, bounds +- 1."""

Decoder = Callable[[bytes], object]


def decoders(n_nodes: int) -> dict[str, Decoder]:
    """The checking decoder of every topic family, as the receivers call them."""
    return {"clock": ClockMessage.decode, "status": WorkerStatus.decode,
            "control": ControlCommand.decode, "launcher": ControlCommand.decode,
            "control/error": ControlError.decode, "faults": FaultListing.decode,
            "links": LinksNotice.decode, "state": lambda p: decode_state(p, n_nodes),
            "frames": lambda p: decode_batch(p, n_nodes),
            "inbox": lambda p: decode_batch(p, n_nodes)}


def synthetic_samples(n_nodes: int) -> dict[str, list[bytes]]:
    """A valid payload of every message type (recorded runs add real ones, state above all)."""
    flow = FlowProgress(0, offered=10, delivered=9, dropped=(("queue", 1),))
    progress = WorkerProgress(offered=10, delivered=9, dropped=1, hops=30, flows=(flow,))
    frames = [new_frame(7, 0, 0, 0, n_nodes - 1, 1000, 1.8e9 + 1.0),
              new_frame(8, 0, 0, 1 % n_nodes, 0, 40, 1.8e9 + 1.5)]
    return {
        "clock": [ClockMessage(1.8e9 + 1.0, 4.0, 14.0, 1.0, "2026-01-01T00:00:00+00:00").encode()],
        "status": [WorkerStatus(0, "running", 0, 1.8e9 + 2.0, 123, 5, progress).encode(),
                   WorkerStatus(1, "ready", 0, 1.8e9, 124, 5).encode()],
        "control": [ControlCommand("list").encode(), ControlCommand("clear", fault_id="x").encode(),
                    b'{"cmd": "fault", "kind": "node_down", "node": "perth", "for_s": 1}'],
        "launcher": [ControlCommand("finish").encode(), ControlCommand("stop_traffic").encode()],
        "control/error": [ControlError("bad", "{}", 1).encode()],
        "faults": [FaultListing(2.0, (FaultInfo("cut", "link_down", "scheduled", 1.0, 3.0, True,
                                                (("a", "tokyo"), ("b", "perth"))),)).encode()],
        "links": [LinksNotice(3.0, 2, 1, 4, 0, 1).encode()],
        "frames": [encode_batch([(n_nodes - 1, f) for f in frames])],
        "inbox": [encode_batch([(0, frames[0])])],
        "state": [],
    }


def _paths(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested lists and dicts (the root is ``()``)."""
    out = [path]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*path, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*path, i))
    return out


def _replace(tree: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> Any:
    if not path:
        return value
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return tree


def _unpack(family: str, payload: bytes) -> Any:
    if family in JSON_FAMILIES:
        return json.loads(payload)
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


def _pack(family: str, tree: Any) -> bytes:
    if family in JSON_FAMILIES:
        return json.dumps(tree).encode()  # NaN and Infinity as Python writes them
    try:
        return bytes(msgpack.packb(tree, use_bin_type=True))
    except (OverflowError, TypeError, ValueError):  # an int beyond 64 bits
        return bytes(msgpack.packb(str(tree)))


def _structural(rng: random.Random, family: str, sample: bytes) -> bytes:
    tree = _unpack(family, sample)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(tree))
        if path and rng.random() < 0.2:
            tree = _replace(tree, path, None, delete=True)
        else:
            tree = _replace(tree, path, _hostile(rng, family))
    return _pack(family, tree)


def _hostile(rng: random.Random, family: str) -> Any:
    value = copy.deepcopy(rng.choice(HOSTILE))  # shared lists would nest into themselves
    if family not in JSON_FAMILIES and rng.random() < 0.2:
        return rng.randbytes(rng.randint(0, 40))  # msgpack bin: arrays of the state snapshot
    return value


def _deep(rng: random.Random, family: str) -> bytes:
    depth = rng.choice((100, 1_000, 10_000, 60_000))
    if family in JSON_FAMILIES:
        return b"[" * depth + b"]" * depth if rng.random() < 0.5 else b'{"a":' * depth + b"1"
    body = b"\x91" * depth + b"\xc0"
    return bytes(msgpack.packb(WIRE_VERSION)) + body if rng.random() < 0.5 else body


def _blob(rng: random.Random, family: str) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return b"\x00" * BLOB_B
    if kind == 1:
        return b'{"v":1,"pad":"' + b"a" * BLOB_B + b'"}'
    return bytes(msgpack.packb([WIRE_VERSION, [[0, [0] * 17]] * (BLOB_B // 20)]))


def mutate(rng: random.Random, family: str, samples: dict[str, list[bytes]]) -> bytes:
    """One hostile payload for ``family`` (see the module docstring)."""
    sample = rng.choice(samples[family] or samples["frames"])
    roll = rng.random()
    if roll < 0.10:
        return rng.randbytes(rng.randint(0, 300))
    if roll < 0.22:
        return sample[:rng.randrange(len(sample))] if sample else b""
    if roll < 0.34:
        body = bytearray(sample)
        for _ in range(rng.randint(1, 8)):
            if body:
                body[rng.randrange(len(body))] = rng.randrange(256)
        return bytes(body)
    if roll < 0.42:
        other = rng.choice([f for f in FAMILIES if f != family and samples[f]])
        return rng.choice(samples[other])
    if roll < 0.90:
        return _structural(rng, family, sample)
    if roll < 0.985:
        return _deep(rng, family)
    return _blob(rng, family)


def must_cases() -> list[tuple[str, bytes]]:
    """Payloads that once stopped a run (issue 16), on the families they were sent to."""
    return [("control", b"null"), ("faults", b"[]"), ("status", b'{"worker":0}'),
            ("status", b'{"offered":"x"}'), ("clock", b"null"), ("state", b"\x00" * BLOB_B),
            ("frames", b"\xff" * BLOB_B), ("launcher", b"[" * 5000 + b"]" * 5000),
            ("status", b"[" * 1000 + b"]" * 1000), ("control", b'{"a":' * 20_000 + b"1")]
