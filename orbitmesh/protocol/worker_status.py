"""``worker/<k>/status`` (retained): a worker's state and the progress its heartbeat carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from orbitmesh.protocol.json_fields import MESSAGE_VERSION, MessageError
from orbitmesh.protocol.json_fields import dumps as _dumps
from orbitmesh.protocol.json_fields import get_field as _get
from orbitmesh.protocol.json_fields import read_object as _object

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
