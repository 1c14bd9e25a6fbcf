"""The frame: its fields, kinds, limits and the check every received frame passes.

A frame travels as a msgpack array (a list for speed) with the fields at the ``F_*`` positions
below. Node references are global node indices of the scenario's topology, which every process
derives identically from the scenario file. orbitmesh/protocol/wire.py packs frames into
batches (list or columnar, wire_columns.py); both read their limits and checks from here.
"""

from __future__ import annotations

from typing import Any

WIRE_VERSION = 2
"""Version of the list batch ``[2, [[to_node, frame], ...]]`` (what clients inject)."""
COLUMNS_VERSION = 3
"""Version of the columnar batch (orbitmesh/protocol/wire_columns.py) the batched plane sends."""

# Frame kinds
DATA, TELEMETRY, TELECOMMAND, ACK = 0, 1, 2, 3
KIND_NAMES = ("data", "telemetry", "telecommand", "ack")

# Frame fields (positions in the frame list). Times: F_CREATED and F_DUE are wall seconds (the
# run clock maps them to scenario time); F_WAIT and F_PROP are scenario seconds.
F_ID, F_KIND, F_FLOW, F_SRC, F_DST, F_SIZE, F_CREATED, F_HOPS, F_TTL = range(9)
F_POLICY, F_ROUTE, F_DUE, F_REF, F_PAYLOAD = range(9, 14)
F_FROM, F_WAIT, F_PROP = range(14, 17)
"""F_FROM: the node the frame is crossing from while in flight to another worker (-1 otherwise);
F_WAIT: time spent queueing and serialising so far; F_PROP: propagation delay met so far."""
FRAME_FIELDS = 17
DEFAULT_TTL = 64
MAX_TTL = 255
MAX_FRAME_BYTES = 65_535
MAX_BATCH_FRAMES = 16_384
"""Frames in one batch at most: senders split longer ones, receivers refuse them whole before
building them (a 10 MB batch of tiny bad frames cost a worker 5.6 s and 180 MB to check)."""

# Flow indices of the built-in traffic classes (user flows are 0..F-1)
FLOW_TELEMETRY, FLOW_TELECOMMAND, FLOW_ACK = -1, -2, -3
FLOW_ENDPOINT = -4
"""Packets and datagrams of real software (nodes/endpoints.py); the payload is the packet."""


def new_frame(frame_id: int, kind: int, flow: int, src: int, dst: int, size: int,
              created_wall: float, *, policy: str | None = None, route: list[int] | None = None,
              ref: Any = None, payload: bytes = b"") -> list[Any]:
    """A frame as the list the runtime passes around (and msgpack sends)."""
    return [frame_id, kind, flow, src, dst, size, created_wall, 0, DEFAULT_TTL, policy, route,
            0.0, ref, payload, -1, 0.0, 0.0]


_INT, _FLOAT = int, float
_FINITE_WALL = 1e11
"""Wall times beyond this (year ~5138) are not times of a run."""


def frame_problem(item: Any, n_nodes: int) -> str | None:
    """Why ``[to_node, frame]`` cannot be a frame of this run, or None when it can.

    The common shape (no policy, no source route) is accepted by one expression over the
    frame's fields unpacked into locals (half the cost of indexing the list field by field);
    anything else takes the field-by-field path, which also says what is wrong. The expression
    accepts nothing that path would refuse.
    """
    if type(item) is list and len(item) == 2:
        to, f = item
        if type(to) is _INT and type(f) is list and len(f) == FRAME_FIELDS:
            (fid, kind, flow, src, dst, size, created, hops, ttl, policy, route, due, _ref,
             payload, frm, wait, prop) = f
            if (policy is None and route is None and type(payload) is bytes
                    and type(fid) is _INT and type(kind) is _INT and type(flow) is _INT
                    and type(src) is _INT and type(dst) is _INT and type(size) is _INT
                    and type(hops) is _INT and type(ttl) is _INT and type(frm) is _INT
                    and type(created) is _FLOAT and type(due) is _FLOAT
                    and type(wait) is _FLOAT and type(prop) is _FLOAT
                    and 0 <= to < n_nodes and 0 <= src < n_nodes and 0 <= dst < n_nodes
                    and DATA <= kind <= ACK and 1 <= size <= MAX_FRAME_BYTES
                    and 0 <= hops <= MAX_TTL and -1 <= ttl <= MAX_TTL
                    and -1 <= frm < n_nodes and 0.0 <= created < _FINITE_WALL
                    and 0.0 <= due < _FINITE_WALL and 0.0 <= wait < _FINITE_WALL
                    and 0.0 <= prop < _FINITE_WALL):
                return None
    return frame_problem_slowly(item, n_nodes)


def frame_problem_slowly(item: Any, n_nodes: int) -> str | None:
    """Field by field: what is wrong with ``item``, or None."""
    if type(item) is not list or len(item) != 2:
        return "entry is not [to_node, frame]"
    to, f = item
    if type(to) is not _INT or not 0 <= to < n_nodes:
        return f"to_node {to!r} is not a node index"
    if type(f) is not list or len(f) != FRAME_FIELDS:
        return f"frame is not a list of {FRAME_FIELDS} fields"
    src, dst, size, hops, ttl = f[F_SRC], f[F_DST], f[F_SIZE], f[F_HOPS], f[F_TTL]
    if type(f[F_ID]) is not _INT or type(f[F_FLOW]) is not _INT:
        return "id and flow must be integers"
    if f[F_KIND] not in (DATA, TELEMETRY, TELECOMMAND, ACK) or type(f[F_KIND]) is not _INT:
        return f"kind {f[F_KIND]!r} is not 0..3"
    if type(src) is not _INT or type(dst) is not _INT or not (0 <= src < n_nodes
                                                                and 0 <= dst < n_nodes):
        return "src/dst are not node indices"
    if type(size) is not _INT or not 1 <= size <= MAX_FRAME_BYTES:
        return f"size {size!r} is not 1..{MAX_FRAME_BYTES}"
    if type(hops) is not _INT or type(ttl) is not _INT or not (0 <= hops <= MAX_TTL
                                                                 and -1 <= ttl <= MAX_TTL):
        return "hops/ttl are not 0..255"
    for field in (F_CREATED, F_DUE, F_WAIT, F_PROP):
        value = f[field]
        if type(value) is not _FLOAT and type(value) is not _INT:
            return f"field {field} is not a number"
        if not 0.0 <= value < _FINITE_WALL:  # also false for NaN
            return f"field {field} is {value!r}, not a finite time"
    if type(f[F_FROM]) is not _INT or not -1 <= f[F_FROM] < n_nodes:
        return "from is not a node index or -1"
    policy, route = f[F_POLICY], f[F_ROUTE]
    if policy is not None and type(policy) is not str:
        return "policy is not a name"
    if route is not None and (type(route) is not list or len(route) > MAX_TTL or any(
            type(x) is not _INT or not 0 <= x < n_nodes for x in route)):
        return "route is not a list of node indices"
    if type(f[F_PAYLOAD]) is not bytes:
        return "payload is not bytes"
    return None
