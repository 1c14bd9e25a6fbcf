"""The protocol package: every control-plane message round-trips, refuses what it is not, and
docs/topics.md describes the same topics, fields and versions as the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgpack
import numpy as np
import pytest

from orbitmesh.protocol import wire
from orbitmesh.protocol.clock import FakeWallClock, RunClock
from orbitmesh.protocol.messages import (
    MAX_CONTROL_BYTES,
    ClockMessage,
    ControlCommand,
    ControlError,
    EndMarker,
    FaultInfo,
    FaultListing,
    LinksNotice,
    MessageError,
    WorkerProgress,
    WorkerStatus,
)
from orbitmesh.protocol.state import STATE_VERSION, decode_state

DOC = (Path(__file__).resolve().parents[1] / "docs" / "topics.md").read_text()

MESSAGES = [
    ClockMessage(1_800_000_000.5, 4.0, 60.0, 1.0, "2026-01-01T00:00:00+00:00"),
    WorkerStatus(3, "running", 1, 1_800_000_001.0, None, None,
                 WorkerProgress(10, 9, 1, 30, 2, 0, 12.5, 0.4, 1.2)),
    WorkerStatus(0, "ready", 0, 1_800_000_000.0, 4242, 17),
    WorkerStatus(1, "lost", 2),
    ControlCommand("fault", (("for_s", 10), ("kind", "node_down"), ("node", "tokyo"))),
    ControlCommand("clear", (), "live1"),
    ControlCommand("finish"),
    ControlError("no such fault", '{"cmd": "clear"}', 3),
    FaultListing(31.2, (FaultInfo("f1", "link_down", "live", 30.0, 40.0, True,
                                  (("a", "tokyo"), ("b", "*"))),)),
    LinksNotice(12.0, 3, 2, 140, 1, 17),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    encoded = message.encode()  # type: ignore[attr-defined]
    assert type(message).decode(encoded) == message  # type: ignore[attr-defined]


def test_end_marker() -> None:
    payload = EndMarker(5).encode(wire.WIRE_VERSION)
    assert EndMarker.sniff(payload, wire.WIRE_VERSION) == EndMarker(5)
    assert EndMarker.sniff(payload, wire.WIRE_VERSION + 1) is None
    assert EndMarker.sniff(msgpack.packb([wire.WIRE_VERSION, "end", -1]), 2) is None
    assert EndMarker.sniff(wire.encode_batch([]), wire.WIRE_VERSION) is None


HOSTILE = [b"null", b"[]", b"42", b'"x"', b"{", b"\xff\xfe", b'{"v": 2}', b"{}",
           b"x" * (MAX_CONTROL_BYTES + 1)]


@pytest.mark.parametrize("kind", [ClockMessage, WorkerStatus, ControlCommand, ControlError,
                                  LinksNotice], ids=lambda k: k.__name__)
@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_payloads_are_message_errors(kind: type, payload: bytes) -> None:
    with pytest.raises(MessageError):
        kind.decode(payload)


@pytest.mark.parametrize("body", [
    {"worker": 0},  # no state (this once killed the controller's listener)
    {"worker": 0, "state": "running", "offered": "x"},  # this once crashed the controller
    {"worker": -1, "state": "ready"},
    {"worker": True, "state": "ready"},
    {"worker": 0, "state": "dancing"},
    {"worker": 0, "state": "running", "offered": 1, "late_ms": float("nan")},
])
def test_bad_worker_status(body: dict[str, object]) -> None:
    with pytest.raises(MessageError):
        WorkerStatus.decode(json.dumps(body).encode())


@pytest.mark.parametrize("body", [
    {"t0_wall": 1.0, "speed": 0, "duration_s": 1, "tick_s": 1, "epoch": "e"},
    {"t0_wall": 1.0, "speed": "fast", "duration_s": 1, "tick_s": 1, "epoch": "e"},
    {"t0_wall": -5.0, "speed": 1, "duration_s": 1, "tick_s": 1, "epoch": "e"},
    {"speed": 1, "duration_s": 1, "tick_s": 1, "epoch": "e"},
])
def test_bad_clock(body: dict[str, object]) -> None:
    with pytest.raises(MessageError):
        ClockMessage.decode(json.dumps(body).encode())


def test_bad_fault_listing() -> None:
    for payload in (b"[]", b'{"faults": {}}', b'{"faults": [1]}',
                    b'{"faults": [{"id": "f", "kind": "k", "active": "yes"}]}',
                    b'{"faults": [{"id": "f", "kind": "k", "target": {"a": [1]}}]}'):
        with pytest.raises(MessageError):
            FaultListing.decode(payload)
    assert FaultListing.decode(b"") == FaultListing(0.0, ())


def test_control_commands() -> None:
    with pytest.raises(MessageError, match="unknown cmd"):
        ControlCommand.decode(b'{"cmd": "explode"}')
    with pytest.raises(MessageError, match="needs the fault"):
        ControlCommand.decode(b'{"cmd": "clear"}')
    with pytest.raises(MessageError, match="finite"):
        ControlCommand.decode(b'{"cmd": "fault", "kind": "node_down", "for_s": NaN}')
    command = ControlCommand.decode(b'{"cmd": "fault", "kind": "node_down", "node": "x"}')
    assert command.fault_body() == {"kind": "node_down", "node": "x"}


def _snapshot(**overrides: object) -> bytes:
    n = 3
    raw: dict[str, object] = {
        "v": STATE_VERSION, "t_s": 1.0, "seq": 1, "n": n,
        "a": np.array([0], "<i4").tobytes(), "b": np.array([1], "<i4").tobytes(),
        "kind": np.array([0], "i1").tobytes(), "delay_s": np.array([0.01], "<f8").tobytes(),
        "destinations": np.array([2], "<i4").tobytes(),
        "next_hop": {"": np.array([1, 2, -1], "<i4").tobytes()}, "blame": None,
        "down": [], "cut": [], "degraded": []}
    raw.update(overrides)
    return msgpack.packb(raw, use_bin_type=True)


def test_state_snapshot_is_checked() -> None:
    assert decode_state(_snapshot(), 3).t_s == 1.0
    forged = [
        _snapshot(a=np.array([7], "<i4").tobytes()),          # node out of range
        _snapshot(next_hop={"": np.array([1, 9, 0], "<i4").tobytes()}),
        _snapshot(delay_s=np.array([np.nan], "<f8").tobytes()),
        _snapshot(down=[[5, "f"]]),
        _snapshot(t_s=float("inf")),
        _snapshot(kind=np.array([0, 1], "i1").tobytes()),      # lengths differ
        msgpack.packb(None), msgpack.packb([1, 2]),
    ]
    for payload in forged:
        with pytest.raises(ValueError, match="malformed state snapshot"):
            decode_state(payload, 3)
    with pytest.raises(ValueError, match="this scenario has 4"):
        decode_state(_snapshot(), 4)


def test_run_clock() -> None:
    clock = RunClock(1000.0, 4.0)
    assert clock.scenario_s(1002.5) == 10.0
    assert clock.wall_at(10.0) == 1002.5
    assert clock.wall_delay(0.02) == 0.005
    wall = FakeWallClock(5.0)
    wall.advance(1.5)
    assert wall.now_wall() == 6.5


# --- the contract page matches the code -----------------------------------------------------------

def test_every_topic_is_documented() -> None:
    topics = wire.Topics("r")
    names = [topics.clock, topics.state, topics.links, topics.control, topics.control_error,
             topics.launcher, topics.faults, topics.worker_frames(0), topics.worker_status(0),
             topics.node_inbox("x")]
    attributes = {k for k, v in vars(topics).items() if isinstance(v, str) and k not in
                  ("run_id", "root")}
    assert attributes == {"clock", "state", "links", "control", "control_error", "launcher",
                          "faults"}, "a new topic needs a row in docs/topics.md and here"
    for name in names:
        documented = (name.replace("orbitmesh/r/", "orbitmesh/<run>/").replace("/0/", "/<k>/")
                      .replace("/x/", "/<id>/"))
        assert f"`{documented}`" in DOC, f"{documented} is not in docs/topics.md"


def test_frame_fields_and_versions_are_documented() -> None:
    fields = {name: value for name, value in vars(wire).items()
              if name.startswith("F_") and isinstance(value, int)}
    assert sorted(fields.values()) == list(range(wire.FRAME_FIELDS))
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", DOC, flags=re.MULTILINE)
    assert [int(i) for i, _ in rows] == list(range(wire.FRAME_FIELDS))
    for index, name in rows:
        assert fields[f"F_{name.upper()}"] == int(index), name
    assert f"array of {wire.FRAME_FIELDS} fields" in DOC
    assert f"`WIRE_VERSION = {wire.WIRE_VERSION}`" in DOC
    assert f"`STATE_VERSION` {STATE_VERSION}" in DOC


@pytest.mark.parametrize("message", [m for m in MESSAGES if not isinstance(m, ControlCommand)],
                         ids=lambda m: type(m).__name__)
def test_json_keys_are_documented(message: object) -> None:
    body = json.loads(message.encode())  # type: ignore[attr-defined]
    for key in body:
        assert f'"{key}"' in DOC or f"`{key}`" in DOC, f"{type(message).__name__}.{key}"
