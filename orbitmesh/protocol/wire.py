"""Wire formats: MQTT topic names, the frame codec and CCSDS space packets.

docs/topics.md is the contract; this is the only module that builds topic strings.

The frame itself (fields ``F_*``, kinds, limits, the receipt check) is defined in
orbitmesh/protocol/frames.py and re-exported here. Frames cross MQTT in batches: the list batch
``[WIRE_VERSION, [[to_node, frame], ...]]`` (what clients inject) or the columnar batch of the
batched plane (``COLUMNS_VERSION``, orbitmesh/protocol/wire_columns.py); :func:`decode_batch`
reads both.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from orbitmesh.errors import RunError
from orbitmesh.protocol.frames import (
    ACK,
    COLUMNS_VERSION,
    DATA,
    DEFAULT_TTL,
    F_CREATED,
    F_DST,
    F_DUE,
    F_FLOW,
    F_FROM,
    F_HOPS,
    F_ID,
    F_KIND,
    F_PAYLOAD,
    F_POLICY,
    F_PROP,
    F_REF,
    F_ROUTE,
    F_SIZE,
    F_SRC,
    F_TTL,
    F_WAIT,
    FLOW_ACK,
    FLOW_ENDPOINT,
    FLOW_TELECOMMAND,
    FLOW_TELEMETRY,
    FRAME_FIELDS,
    KIND_NAMES,
    MAX_BATCH_FRAMES,
    MAX_FRAME_BYTES,
    MAX_TTL,
    TELECOMMAND,
    TELEMETRY,
    WIRE_VERSION,
    frame_problem,
    new_frame,
)
from orbitmesh.protocol.wire_columns import decode_columns, rows_to_items

__all__ = [
    "ACK",
    "COLUMNS_VERSION",
    "DATA",
    "DEFAULT_TTL",
    "FLOW_ACK",
    "FLOW_ENDPOINT",
    "FLOW_TELECOMMAND",
    "FLOW_TELEMETRY",
    "FRAME_FIELDS",
    "F_CREATED",
    "F_DST",
    "F_DUE",
    "F_FLOW",
    "F_FROM",
    "F_HOPS",
    "F_ID",
    "F_KIND",
    "F_PAYLOAD",
    "F_POLICY",
    "F_PROP",
    "F_REF",
    "F_ROUTE",
    "F_SIZE",
    "F_SRC",
    "F_TTL",
    "F_WAIT",
    "KIND_NAMES",
    "MAX_BATCH_FRAMES",
    "MAX_FRAME_BYTES",
    "MAX_TTL",
    "SEQ_MODULO",
    "TC",
    "TELECOMMAND",
    "TELEMETRY",
    "TM",
    "WIRE_VERSION",
    "SequenceCounter",
    "Topics",
    "batch_packer",
    "decode_batch",
    "encode_batch",
    "frame_problem",
    "new_frame",
    "space_packet",
    "unpack_batch",
]

def encode_batch(items: list[tuple[int, list[Any]]], packer: msgpack.Packer | None = None
                 ) -> bytes:
    """Pack ``(to_node, frame)`` pairs for one MQTT message.

    ``packer``: one from :func:`batch_packer`, reused by its one owner (a Packer is not safe to
    share between threads), which saves building one per batch (~1.5 µs).
    """
    if packer is None:
        return msgpack.packb([WIRE_VERSION, items], use_bin_type=True)
    return packer.pack([WIRE_VERSION, items])


def batch_packer() -> msgpack.Packer:
    """A Packer for :func:`encode_batch` (the options every batch is packed with)."""
    return msgpack.Packer(use_bin_type=True)


def unpack_batch(payload: bytes) -> list[Any]:
    """The msgpack body of a frame batch of a version this orbitmesh reads (ValueError if not).
    """
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False,
                               max_array_len=MAX_BATCH_FRAMES)
    except Exception as exc:
        raise ValueError(f"not a frame batch: {exc}") from exc
    if type(body) is not list or not body:
        raise ValueError("not a frame batch: expected [version, ...]")
    if body[0] not in (WIRE_VERSION, COLUMNS_VERSION):
        raise ValueError(f"frame batch version {body[0]}, this orbitmesh reads {WIRE_VERSION} "
                         f"and {COLUMNS_VERSION}")
    return body


def decode_batch(payload: bytes, n_nodes: int | None = None
                 ) -> tuple[list[list[Any]], list[str]]:
    """Unpack a batch into ``[to_node, frame]`` pairs and the reasons of the frames refused.

    A batch that is not one at all raises ValueError; a single bad frame in it (wrong types,
    non-finite times, sizes or TTLs out of range, nodes outside ``0..n_nodes-1``) is left out
    and its reason returned, so the rest of the batch goes on.
    """
    body = unpack_batch(payload)
    if body[0] == COLUMNS_VERSION:  # the columnar batch of nodes/plane.py, read as lists
        rows, policies, rare, reasons = decode_columns(body, n_nodes or 1 << 31)
        return rows_to_items(rows, policies) + rare, reasons
    if len(body) != 2:
        raise ValueError("frame batch version 2: expected [2, [[to_node, frame], ...]]")
    items = body[1]
    if not isinstance(items, list):
        raise ValueError("frame batch: expected a list of [to_node, frame]")
    bad: list[str] = []
    bad_at: list[int] = []
    limit = n_nodes if n_nodes is not None else 1 << 31
    problem = frame_problem
    for at, item in enumerate(items):
        why = problem(item, limit)
        if why is not None:
            bad.append(why)
            bad_at.append(at)
    if not bad:  # the usual case: the decoded list is the answer, no copy
        return items, bad
    refused = set(bad_at)
    return [item for at, item in enumerate(items) if at not in refused], bad


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
        self.launcher = f"{self.root}/launcher"
        """Commands that change the run's course (finish, stop_traffic): the launcher's alone."""
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

    def family(self, topic: str) -> str:
        """The topic family of ``topic`` (``frames``, ``status``, ``inbox``, ``state``, ...), for
        counting malformed messages per family."""
        rest = topic.removeprefix(self.root + "/")
        if rest.startswith("worker/"):
            return rest.rsplit("/", 1)[-1]
        if rest.startswith("node/"):
            return "inbox" if rest.endswith("/in") else "outbox"
        return rest

    def node_inbox(self, node_id: str) -> str:
        """Inbox of one node: any client may inject frame batches here."""
        return f"{self.root}/node/{node_id}/in"

    def node_outbox(self, node_id: str) -> str:
        """Outbox of one MQTT endpoint node: frames delivered to it, as batches like ``in``."""
        return f"{self.root}/node/{node_id}/out"


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


class SequenceCounter:
    """Per-APID 14-bit source sequence counters."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}

    def next(self, apid: int) -> int:
        """The count for the next packet of ``apid`` (wraps at 16384)."""
        value = self._next.get(apid, 0)
        self._next[apid] = (value + 1) % SEQ_MODULO
        return value
