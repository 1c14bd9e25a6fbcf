"""Every control-plane message that crosses a process boundary, as a frozen, versioned type.

The controller, the workers, the launcher, the container supervisor and any MQTT client talk in
these; each type has ``encode() -> bytes`` and ``decode(payload) -> Self``, and ``decode`` checks
everything (JSON shape, field types, finite numbers, known versions) and raises
:class:`MessageError` with the reason — the receiver counts the message as malformed and goes on.
Control-plane messages are JSON, so that any MQTT client (``mosquitto_pub`` included) can read and
write them; frames (:mod:`orbitmesh.protocol.wire`) and the tick snapshot
(:mod:`orbitmesh.protocol.state`) are msgpack. docs/topics.md is the contract; a test checks it
against these types. This module is their one import path: the JSON checks live in
json_fields.py and the worker status in worker_status.py, re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Self

import msgpack

from orbitmesh.protocol.json_fields import MAX_CONTROL_BYTES, MESSAGE_VERSION, MessageError
from orbitmesh.protocol.json_fields import dumps as _dumps
from orbitmesh.protocol.json_fields import get_field as _get
from orbitmesh.protocol.json_fields import read_object as _object
from orbitmesh.protocol.worker_status import (
    LATENCY_BOUNDS_MS,
    FlowProgress,
    WorkerProgress,
    WorkerState,
    WorkerStatus,
)

__all__ = [
    "END_TAG",
    "LATENCY_BOUNDS_MS",
    "MAX_CONTROL_BYTES",
    "MESSAGE_VERSION",
    "RUN_COURSE_VERBS",
    "ClockMessage",
    "ControlCommand",
    "ControlError",
    "ControlVerb",
    "EndMarker",
    "FaultInfo",
    "FaultListing",
    "FlowProgress",
    "LinksNotice",
    "MessageError",
    "Scalar",
    "WorkerProgress",
    "WorkerState",
    "WorkerStatus",
]


# --- clock -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockMessage:
    """``clock`` (retained): when scenario time 0 is, and how fast the run goes."""

    t0_wall: float
    speed: float
    duration_s: float
    tick_s: float
    epoch: str

    def encode(self) -> bytes:
        """JSON."""
        return _dumps({"v": MESSAGE_VERSION, "t0_wall": self.t0_wall, "speed": self.speed,
                       "duration_s": self.duration_s, "tick_s": self.tick_s,
                       "epoch": self.epoch})

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Checked; raises MessageError."""
        b = _object(payload, "clock")
        speed = _get(b, "speed", float, "clock")
        if speed <= 0.0:
            raise MessageError(f"clock: speed must be > 0, got {speed}")
        return cls(_get(b, "t0_wall", float, "clock", lo=0.0), speed,
                   _get(b, "duration_s", float, "clock", lo=0.0),
                   _get(b, "tick_s", float, "clock", lo=0.0), _get(b, "epoch", str, "clock"))


# --- control ------------------------------------------------------------------------------------

ControlVerb = Literal["fault", "clear", "list", "finish", "stop_traffic"]
_VERBS = ("fault", "clear", "list", "finish", "stop_traffic")
RUN_COURSE_VERBS = ("finish", "stop_traffic")
"""Commands that change a run's course: honoured only from the launcher's own identity."""


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """``control``: a command from an operator or the launcher.

    ``fault`` carries the fault's fields in ``fields`` (validated against the scenario model by
    the controller, which knows the scenario); ``clear`` names the fault ``fault_id``.
    """

    cmd: ControlVerb
    fields: tuple[tuple[str, Any], ...] = ()
    fault_id: str | None = None
    sender: str | None = None
    """Who sent it, as the sender says (the broker's ACL is what makes it true)."""

    def encode(self) -> bytes:
        """JSON."""
        body: dict[str, Any] = {"cmd": self.cmd, **dict(self.fields)}
        if self.fault_id is not None:
            body["id"] = self.fault_id
        if self.sender is not None:
            body["sender"] = self.sender
        return _dumps(body)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Checked; raises MessageError with an example of what would be accepted."""
        b = _object(payload, "control")
        cmd = b.get("cmd")
        if not isinstance(cmd, str):
            raise MessageError('control: expected a JSON object with a "cmd" key, e.g. '
                               '{"cmd": "fault", "kind": "link_down", "a": "gs1", "for_s": 10}')
        if cmd not in _VERBS:
            raise MessageError(f"control: unknown cmd {cmd!r}; expected one of "
                               f"{', '.join(_VERBS)}")
        sender = _get(b, "sender", str, "control", default=None)
        fault_id = _get(b, "id", str, "control", default=None)
        if cmd == "clear" and not fault_id:
            raise MessageError('control: clear needs the fault "id"')
        fields = tuple(sorted((k, v) for k, v in b.items()
                              if k not in ("cmd", "sender", "v") and not
                              (k == "id" and cmd == "clear")))
        for key, value in fields:
            if isinstance(value, float) and not math.isfinite(value):
                raise MessageError(f"control: {key!r} must be finite, got {value!r}")
        return cls(cmd, fields, fault_id if cmd == "clear" else None,  # type: ignore[arg-type]
                   sender)

    def fault_body(self) -> dict[str, Any]:
        """A ``fault`` command's fields, as the scenario's fault model reads them."""
        return dict(self.fields)


@dataclass(frozen=True, slots=True)
class ControlError:
    """``control/error``: why a command was refused."""

    error: str
    command: str
    errors_so_far: int

    def encode(self) -> bytes:
        """JSON."""
        return _dumps({"v": MESSAGE_VERSION, "error": self.error, "command": self.command[:500],
                       "errors_so_far": self.errors_so_far})

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Checked; raises MessageError."""
        b = _object(payload, "control error")
        return cls(_get(b, "error", str, "control error"),
                   _get(b, "command", str, "control error", default=""),
                   _get(b, "errors_so_far", int, "control error", default=0))


# --- faults listing -----------------------------------------------------------------------------

Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class FaultInfo:
    """One fault as the ``faults`` topic lists it."""

    id: str
    kind: str
    origin: str
    start_s: float
    end_s: float | None
    active: bool
    target: tuple[tuple[str, Scalar], ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The JSON object of this fault (also what summary.json lists)."""
        return {"id": self.id, "kind": self.kind, "target": dict(self.target),
                "start_s": self.start_s, "end_s": self.end_s, "origin": self.origin,
                "active": self.active}


@dataclass(frozen=True, slots=True)
class FaultListing:
    """``faults`` (retained): every fault of the run and whether it is in force."""

    t_s: float
    faults: tuple[FaultInfo, ...]

    def encode(self) -> bytes:
        """JSON."""
        return _dumps({"v": MESSAGE_VERSION, "t_s": self.t_s,
                       "faults": [f.as_json() for f in self.faults]})

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Checked; raises MessageError. An empty payload (a cleared retained topic) is empty."""
        if not payload:
            return cls(0.0, ())
        what = "faults"
        b = _object(payload, what)
        raw = b.get("faults")
        if not isinstance(raw, list):
            raise MessageError(f"{what}: 'faults' must be a list")
        faults = []
        for item in raw:
            if not isinstance(item, dict):
                raise MessageError(f"{what}: every fault must be an object")
            target = item.get("target", {})
            if not isinstance(target, dict) or not all(
                    isinstance(v, str | int | float | bool) for v in target.values()):
                raise MessageError(f"{what}: a fault's target must map names to values")
            active = item.get("active", False)
            if not isinstance(active, bool):
                raise MessageError(f"{what}: 'active' must be true or false")
            faults.append(FaultInfo(
                _get(item, "id", str, what), _get(item, "kind", str, what),
                _get(item, "origin", str, what, default="live"),
                _get(item, "start_s", float, what, default=0.0),
                _get(item, "end_s", float, what, default=None), active,
                tuple(sorted(target.items()))))
        return cls(_get(b, "t_s", float, what, default=0.0), tuple(faults))


# --- links notice -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinksNotice:
    """``links``: what one tick changed (for watchers; the snapshot is on ``state``)."""

    t_s: float
    up: int
    down: int
    delay_changed: int
    handovers: int
    route_changes: int

    def encode(self) -> bytes:
        """JSON."""
        return _dumps({"v": MESSAGE_VERSION, "t_s": self.t_s, "up": self.up, "down": self.down,
                       "delay_changed": self.delay_changed, "handovers": self.handovers,
                       "route_changes": self.route_changes})

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Checked; raises MessageError."""
        b = _object(payload, "links")
        return cls(_get(b, "t_s", float, "links"),
                   *(_get(b, k, int, "links", lo=0) for k in
                     ("up", "down", "delay_changed", "handovers", "route_changes")))


# --- end of frames ------------------------------------------------------------------------------

END_TAG = "end"


@dataclass(frozen=True, slots=True)
class EndMarker:
    """On ``worker/<k>/frames``: worker ``sender`` sends no more frames (msgpack, like frames)."""

    sender: int

    def encode(self, wire_version: int) -> bytes:
        """msgpack ``[wire_version, "end", sender]``."""
        return msgpack.packb([wire_version, END_TAG, self.sender])

    @classmethod
    def sniff(cls, payload: bytes, wire_version: int) -> Self | None:
        """The marker, if ``payload`` is one (cheap: frame batches are longer)."""
        if len(payload) > 16:
            return None
        try:
            version, tag, sender = msgpack.unpackb(payload)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if version != wire_version or tag != END_TAG or type(sender) is not int or sender < 0:
            return None
        return cls(sender)
