"""Wire formats: MQTT topic names, the frame codec and CCSDS space packets.

docs/topics.md is the contract; this is the only module that builds topic strings.

A frame travels as a msgpack array (a list for speed) with the fields at the ``F_*`` positions
below. Node references are global node indices of the scenario's topology, which every process
derives identically from the scenario file. Frames cross MQTT in batches:
``[WIRE_VERSION, [[to_node, frame], ...]]``.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from orbitmesh.errors import RunError

WIRE_VERSION = 1

# Frame kinds
DATA, TELEMETRY, TELECOMMAND, ACK = 0, 1, 2, 3
KIND_NAMES = ("data", "telemetry", "telecommand", "ack")

# Frame fields (positions in the frame list)
F_ID, F_KIND, F_FLOW, F_SRC, F_DST, F_SIZE, F_CREATED, F_HOPS, F_TTL = range(9)
F_POLICY, F_ROUTE, F_DUE, F_REF, F_PAYLOAD = range(9, 14)
FRAME_FIELDS = 14
DEFAULT_TTL = 64

# Flow indices of the built-in traffic classes (user flows are 0..F-1)
FLOW_TELEMETRY, FLOW_TELECOMMAND, FLOW_ACK = -1, -2, -3


def new_frame(frame_id: int, kind: int, flow: int, src: int, dst: int, size: int,
              created_wall: float, *, policy: str | None = None, route: list[int] | None = None,
              ref: Any = None, payload: bytes = b"") -> list[Any]:
    """A frame as the list the runtime passes around (and msgpack sends)."""
    return [frame_id, kind, flow, src, dst, size, created_wall, 0, DEFAULT_TTL, policy, route,
            0.0, ref, payload]


def encode_batch(items: list[tuple[int, list[Any]]]) -> bytes:
    """Pack ``(to_node, frame)`` pairs for one MQTT message."""
    return msgpack.packb([WIRE_VERSION, items], use_bin_type=True)


def decode_batch(payload: bytes) -> list[list[Any]]:
    """Unpack a batch into ``[to_node, frame]`` pairs; raises ValueError on anything malformed."""
    try:
        version, items = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ValueError(f"not a frame batch: {exc}") from exc
    if version != WIRE_VERSION:
        raise ValueError(f"frame batch version {version}, this orbitmesh reads {WIRE_VERSION}")
    if not isinstance(items, list):
        raise ValueError("frame batch: expected a list of [to_node, frame]")
    for item in items:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int)
                or not isinstance(item[1], list) or len(item[1]) != FRAME_FIELDS):
            raise ValueError("frame batch: malformed entry")
    return items


class Topics:
    """Every MQTT topic of one run, under ``orbitmesh/<run>/``."""

    def __init__(self, run_id: str) -> None:
        if not run_id or any(c in run_id for c in "/+#") or " " in run_id:
            raise RunError(f"run id {run_id!r} is not topic-safe (no '/', '+', '#', spaces)")
        self.run_id = run_id
        self.root = f"orbitmesh/{run_id}"
        self.clock = f"{self.root}/clock"
        self.state = f"{self.root}/state"
        self.links = f"{self.root}/links"
        self.control = f"{self.root}/control"
        self.control_error = f"{self.root}/control/error"
        self.faults = f"{self.root}/faults"

    def worker_frames(self, worker: int) -> str:
        """Batched frames for every node that worker ``worker`` hosts."""
        return f"{self.root}/worker/{worker}/frames"

    def worker_status(self, worker: int) -> str:
        """Retained status of a worker (ready, heartbeat, done, lost)."""
        return f"{self.root}/worker/{worker}/status"

    @property
    def worker_status_all(self) -> str:
        """Wildcard over every worker's status."""
        return f"{self.root}/worker/+/status"

    def node_inbox(self, node_id: str) -> str:
        """Inbox of one node: any client may inject frame batches here."""
        return f"{self.root}/node/{node_id}/in"


# --- CCSDS space packets (CCSDS 133.0-B-2) ------------------------------------------------------

TM, TC = 0, 1
_HEADER = struct.Struct(">HHH")
SEQ_MODULO = 1 << 14


def space_packet(packet_type: int, apid: int, seq_count: int, data: bytes,
                 *, secondary_header: bool = False) -> bytes:
    """Encode an unsegmented space packet: 6-octet primary header + data field."""
    if not 0 <= apid <= 2047:
        raise ValueError(f"APID {apid} outside 0..2047")
    if not data:
        raise ValueError("a space packet carries at least one octet of data")
    word1 = (packet_type & 1) << 12 | int(secondary_header) << 11 | apid
    word2 = 0b11 << 14 | (seq_count % SEQ_MODULO)
    return _HEADER.pack(word1, word2, len(data) - 1) + data


def parse_space_packet(packet: bytes) -> tuple[int, int, int, bytes]:
    """Decode ``(packet_type, apid, seq_count, data)``; raises ValueError when malformed."""
    if len(packet) < 7:
        raise ValueError(f"space packet of {len(packet)} octets is shorter than 7")
    word1, word2, length = _HEADER.unpack_from(packet)
    if word1 >> 13:
        raise ValueError(f"space packet version {word1 >> 13}, expected 0")
    data = packet[6:]
    if len(data) != length + 1:
        raise ValueError(f"space packet says {length + 1} data octets, has {len(data)}")
    return (word1 >> 12) & 1, word1 & 0x7FF, word2 & 0x3FFF, data


class SequenceCounter:
    """Per-APID 14-bit source sequence counters."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}

    def next(self, apid: int) -> int:
        """The count for the next packet of ``apid`` (wraps at 16384)."""
        value = self._next.get(apid, 0)
        self._next[apid] = (value + 1) % SEQ_MODULO
        return value
