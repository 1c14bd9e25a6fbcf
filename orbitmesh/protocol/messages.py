"""Every control-plane message that crosses a process boundary, as a frozen, versioned type.

The controller, the workers, the launcher, the container supervisor and any MQTT client talk in
these; each type has ``encode() -> bytes`` and ``decode(payload) -> Self``, and ``decode`` checks
everything (JSON shape, field types, finite numbers, known versions) and raises
:class:`MessageError` with the reason — the receiver counts the message as malformed and goes on.
Control-plane messages are JSON, so that any MQTT client (``mosquitto_pub`` included) can read and
write them; frames (:mod:`orbitmesh.protocol.wire`) and the tick snapshot
(:mod:`orbitmesh.protocol.state`) are msgpack. docs/topics.md is the contract; a test checks it
against these types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, TypeVar

import msgpack

MESSAGE_VERSION = 1
"""Version of the JSON control-plane messages (``"v"``; absent means 1)."""
MAX_CONTROL_BYTES = 64 * 1024
"""Larger control-plane payloads are refused unread."""

T = TypeVar("T")


class MessageError(ValueError):
    """A payload is not the message its topic carries; says why."""


def _object(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_CONTROL_BYTES:
        raise MessageError(f"{what}: {len(payload)} bytes, more than {MAX_CONTROL_BYTES}")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # "[" * 1000 is deep enough
        raise MessageError(f"{what}: not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MessageError(f"{what}: expected a JSON object, got {type(body).__name__}")
    version = body.get("v", MESSAGE_VERSION)
    if version != MESSAGE_VERSION:
        raise MessageError(f"{what}: message version {version!r}, this orbitmesh reads "
                           f"{MESSAGE_VERSION}")
    return body


def _get(body: Mapping[str, Any], key: str, kind: type[T], what: str, *,
         default: Any = ..., lo: float | None = None) -> T:
    """``body[key]`` checked to be a ``kind`` (ints pass for floats; numbers must be finite)."""
    if key not in body or body[key] is None:
        if default is ...:
            raise MessageError(f"{what}: {key!r} is missing")
        return default
    value = body[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError(f"{what}: {key!r} must be {kind.__name__}, got {value!r}"[:200])
    if isinstance(value, float) and not math.isfinite(value):
        raise MessageError(f"{what}: {key!r} must be finite, got {value!r}")
    if lo is not None and isinstance(value, int | float) and value < lo:
        raise MessageError(f"{what}: {key!r} must be >= {lo:g}, got {value!r}")
    return value


def _dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


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


# --- worker status ------------------------------------------------------------------------------

WorkerState = Literal["ready", "running", "done", "lost"]
_STATES = ("ready", "running", "done", "lost")


LATENCY_BOUNDS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
                     5000.0, 10000.0)
"""Upper bounds (scenario ms) of the per-flow latency counts a heartbeat carries."""


@dataclass(frozen=True, slots=True)
class FlowProgress:
    """One flow's cumulative counters on one worker (``flows`` in a heartbeat)."""

    flow: int
    offered: int = 0
    delivered: int = 0
    dropped: tuple[tuple[str, int], ...] = ()
    """Drops by reason."""
    latency_sum_ms: float = 0.0
    latency_le: tuple[int, ...] = ()
    """Deliveries with latency <= each of :data:`LATENCY_BOUNDS_MS` (cumulative counts)."""

    def as_list(self) -> list[Any]:
        """``[flow, offered, delivered, {reason: n}, latency_sum_ms, [le counts]]``."""
        return [self.flow, self.offered, self.delivered, dict(self.dropped),
                round(self.latency_sum_ms, 3), list(self.latency_le)]

    @classmethod
    def from_list(cls, item: Any, what: str) -> FlowProgress:
        """Checked inverse of :meth:`as_list`; raises MessageError."""
        if not isinstance(item, list) or len(item) != 6:
            raise MessageError(f"{what}: a flow entry must be [flow, offered, delivered, "
                               "dropped, latency_sum_ms, latency_le]")
        keys = ("flow", "offered", "delivered", "dropped", "latency_sum_ms", "latency_le")
        body = dict(zip(keys, item, strict=True))
        dropped, le = body["dropped"], body["latency_le"]
        if not isinstance(dropped, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 0 for k, v in dropped.items()):
            raise MessageError(f"{what}: a flow's dropped must map reasons to counts")
        if not isinstance(le, list) or len(le) not in (0, len(LATENCY_BOUNDS_MS)) or not all(
                type(v) is int and v >= 0 for v in le):
            raise MessageError(f"{what}: a flow's latency_le must hold "
                               f"{len(LATENCY_BOUNDS_MS)} counts")
        return cls(_get(body, "flow", int, what), _get(body, "offered", int, what, lo=0),
                   _get(body, "delivered", int, what, lo=0), tuple(sorted(dropped.items())),
                   _get(body, "latency_sum_ms", float, what, lo=0.0), tuple(le))


@dataclass(frozen=True, slots=True)
class WorkerProgress:
    """Counters a running worker reports with every heartbeat."""

    offered: int = 0
    delivered: int = 0
    dropped: int = 0
    hops: int = 0
    held_on_board: int = 0
    malformed: int = 0
    t_s: float | None = None
    late_ms: float = 0.0
    """Largest hop lateness since the last heartbeat, scenario ms."""
    apply_late_ms: float = 0.0
    """Largest link-apply lateness since the last heartbeat, scenario ms."""
    flows: tuple[FlowProgress, ...] = ()
    """Per-flow counters (absent from heartbeats of older workers: then empty)."""

    FIELDS: ClassVar[tuple[str, ...]] = ("offered", "delivered", "dropped", "hops",
                                         "held_on_board", "malformed")


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """``worker/<k>/status`` (retained): a worker's state; its last will says ``lost``."""

    worker: int
    state: WorkerState
    generation: int = 0
    time_wall: float | None = None
    pid: int | None = None
    nodes: int | None = None
    progress: WorkerProgress | None = None

    def encode(self) -> bytes:
        """JSON."""
        body: dict[str, Any] = {"v": MESSAGE_VERSION, "worker": self.worker,
                                "state": self.state, "generation": self.generation}
        for key, value in (("time", self.time_wall), ("pid", self.pid), ("nodes", self.nodes)):
            if value is not None:
                body[key] = value
        if self.progress is not None:
            p = self.progress
            body |= {k: getattr(p, k) for k in WorkerProgress.FIELDS}
            body |= {"t_s": p.t_s, "late_ms": p.late_ms, "apply_late_ms": p.apply_late_ms}
            if p.flows:
                body["flows"] = [f.as_list() for f in p.flows]
        return _dumps(body)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Checked; raises MessageError."""
        what = "worker status"
        b = _object(payload, what)
        state = _get(b, "state", str, what)
        if state not in _STATES:
            raise MessageError(f"{what}: state {state!r} is not one of {', '.join(_STATES)}")
        progress = None
        if "offered" in b:
            counts = {k: _get(b, k, int, what, default=0, lo=0) for k in WorkerProgress.FIELDS}
            progress = WorkerProgress(
                **counts, t_s=_get(b, "t_s", float, what, default=None),
                late_ms=_get(b, "late_ms", float, what, default=0.0, lo=0.0),
                apply_late_ms=_get(b, "apply_late_ms", float, what, default=0.0, lo=0.0),
                flows=_flows(b.get("flows", []), what))
        return cls(_get(b, "worker", int, what, lo=0), state,  # type: ignore[arg-type]
                   _get(b, "generation", int, what, default=0, lo=0),
                   _get(b, "time", float, what, default=None),
                   _get(b, "pid", int, what, default=None, lo=1),
                   _get(b, "nodes", int, what, default=None, lo=0), progress)


def _flows(raw: Any, what: str) -> tuple[FlowProgress, ...]:
    if not isinstance(raw, list):
        raise MessageError(f"{what}: 'flows' must be a list")
    return tuple(FlowProgress.from_list(item, what) for item in raw)


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
