"""The columnar frame batch (wire version 3): common frames as one block of fixed-width rows.

``[3, rows, policies, rare]`` in msgpack: ``rows`` is the bytes of a little-endian structured
array (:data:`ROW`, one row per frame of the common shape: no source route, ref or payload),
``policies`` the routing policy names its ``policy`` column indexes (-1: none), ``rare`` a list
of ``[to_node, frame]`` pairs as in version 2 for every other frame. Rows are checked as arrays
(finite times, values in range, nodes in 0..n-1); a bad row is refused with its reason and the
rest go on, as in version 2. docs/topics.md has the contract.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from orbitmesh.protocol.frames import (
    ACK,
    COLUMNS_VERSION,
    DATA,
    FRAME_FIELDS,
    MAX_BATCH_FRAMES,
    MAX_FRAME_BYTES,
    MAX_TTL,
    frame_problem,
)

ROW = np.dtype([("id", "<i8"), ("kind", "<i8"), ("flow", "<i8"), ("src", "<i8"),
                ("dst", "<i8"), ("size", "<i8"), ("hops", "<i8"), ("ttl", "<i8"),
                ("policy", "<i8"), ("frm", "<i8"), ("to", "<i8"), ("created", "<f8"),
                ("due", "<f8"), ("wait", "<f8"), ("prop", "<f8")])
"""One frame: 15 eight-byte fields, in the order of the lane's columns (nodes/plane_kernel.py
FI_* then FF_*), so a worker sends its hand-over buffer as it is and reads a batch in place."""
_FINITE_WALL = 1e11


def encode_columns(rows: np.ndarray | bytes, policies: list[str | None], rare: list[Any],
                   packer: msgpack.Packer | None = None) -> bytes:
    """Pack a block of :data:`ROW` rows (or their bytes) and the rare ``[to_node, frame]``
    pairs."""
    raw = rows if isinstance(rows, bytes) else rows.astype(ROW, copy=False).tobytes()
    body = [COLUMNS_VERSION, raw, policies, rare]
    if packer is None:
        return msgpack.packb(body, use_bin_type=True)
    return packer.pack(body)


def columns_body(body: list[Any]) -> tuple[bytes, list[str | None], list[Any]]:
    """(row bytes, policy names, rare pairs) of an unpacked version-3 batch, its shape checked
    (the rows themselves are checked where they are read); ValueError if it is not one."""
    if len(body) != 4:
        raise ValueError("frame batch version 3: expected [3, rows, policies, rare]")
    _v, raw, policies, rare = body
    if type(raw) is not bytes or len(raw) % ROW.itemsize:
        raise ValueError(f"frame batch version 3: rows are not a multiple of {ROW.itemsize} B")
    if type(policies) is not list or any(p is not None and type(p) is not str
                                         for p in policies):
        raise ValueError("frame batch version 3: policies are not a list of names")
    if type(rare) is not list:
        raise ValueError("frame batch version 3: rare frames are not a list")
    if len(raw) // ROW.itemsize + len(rare) > MAX_BATCH_FRAMES:
        raise ValueError(f"frame batch of {len(raw) // ROW.itemsize + len(rare)} frames, more "
                         f"than {MAX_BATCH_FRAMES}")
    return raw, policies, rare


def decode_columns(body: list[Any], n_nodes: int
                   ) -> tuple[np.ndarray, list[str | None], list[Any], list[str]]:
    """(good rows, policy names, rare pairs, reasons of the refused) of an unpacked version-3
    batch; a body that is not one raises ValueError."""
    raw, policies, rare = columns_body(body)
    rows = np.frombuffer(raw, dtype=ROW)
    bad: list[str] = []
    ok = np.ones(len(rows), dtype=bool)
    checks = (
        ((rows["to"] >= 0) & (rows["to"] < n_nodes), "to_node is not a node index"),
        ((rows["src"] >= 0) & (rows["src"] < n_nodes) & (rows["dst"] >= 0)
         & (rows["dst"] < n_nodes), "src/dst are not node indices"),
        ((rows["kind"] >= DATA) & (rows["kind"] <= ACK), "kind is not 0..3"),
        ((rows["size"] >= 1) & (rows["size"] <= MAX_FRAME_BYTES),
         f"size is not 1..{MAX_FRAME_BYTES}"),
        ((rows["hops"] >= 0) & (rows["hops"] <= MAX_TTL) & (rows["ttl"] >= -1)
         & (rows["ttl"] <= MAX_TTL), "hops/ttl are not 0..255"),
        ((rows["frm"] >= -1) & (rows["frm"] < n_nodes), "from is not a node index or -1"),
        ((rows["policy"] >= -1) & (rows["policy"] < len(policies)), "policy is not listed"),
    )
    for good, why in checks:
        fail = ok & ~good
        bad.extend([why] * int(fail.sum()))
        ok &= good
    for field in ("created", "due", "wait", "prop"):
        value = rows[field]
        good = (value >= 0.0) & (value < _FINITE_WALL)  # also false for NaN
        fail = ok & ~good
        bad.extend([f"{field} is not a finite time"] * int(fail.sum()))
        ok &= good
    good_rare: list[Any] = []
    for item in rare:
        problem = frame_problem(item, n_nodes)
        if problem is None:
            good_rare.append(item)
        else:
            bad.append(problem)
    return (rows if ok.all() else rows[ok]), policies, good_rare, bad


def rows_to_items(rows: np.ndarray, policies: list[str | None]) -> list[list[Any]]:
    """Version-3 rows as version-2 ``[to_node, frame]`` pairs (for the list path)."""
    out = []
    cols = [rows[name].tolist() for name in ROW.names or ()]
    for (fid, kind, flow, src, dst, size, hops, ttl, pol, frm, to, created, due, wait,
         prop) in zip(*cols, strict=True):
        frame = [fid, kind, flow, src, dst, size, created, hops, ttl,
                 policies[pol] if pol >= 0 else None, None, due, None, b"", frm, wait, prop]
        out.append([to, frame])
    assert not out or len(out[0][1]) == FRAME_FIELDS
    return out
