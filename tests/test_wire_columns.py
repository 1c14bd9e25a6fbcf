"""The columnar frame batch (wire version 3) and the worker's plane switch.

A batch of rows reads back as the frames that went in (also through decode_batch, as lists);
one bad row is refused with its reason and the rest go on, in the codec and in the batched
plane's own reader; ORBITMESH_PLANE picks the runtime and refuses what it does not know.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from nodes.plane import PlaneRuntime
from nodes.runtime import NodeRuntime
from nodes.worker import runtime_class
from orbitmesh.errors import OrbitmeshError
from orbitmesh.protocol.wire import DATA, decode_batch, new_frame, unpack_batch
from orbitmesh.protocol.wire_columns import ROW, decode_columns, encode_columns
from tests.test_plane_diff import T0_WALL, Links, scenario


def rows(frames: list[tuple[int, list]]) -> np.ndarray:
    """Frames in flight (to_node, frame) as wire rows."""
    out = np.zeros(len(frames), dtype=ROW)
    for i, (to, f) in enumerate(frames):
        out[i] = (f[0], f[1], f[2], f[3], f[4], f[5], f[7], f[8], -1, f[14], to, f[6], f[11],
                  f[15], f[16])
    return out


def in_flight(fid: int, src: int, dst: int, frm: int, due: float) -> list:
    """A frame as another worker hands it over."""
    f = new_frame(fid, DATA, 0, src, dst, 100, T0_WALL)
    f[14], f[11] = frm, due
    return f


def test_a_batch_of_rows_reads_back_as_its_frames() -> None:
    frames = [(1, in_flight(i, 0, 2, 0, T0_WALL + 0.01 * (i + 1))) for i in range(5)]
    rare = [[1, new_frame(99, DATA, 0, 0, 2, 50, T0_WALL, route=[0, 1, 2])]]
    items, refused = decode_batch(encode_columns(rows(frames), [], rare), 3)
    assert refused == []
    assert items == [[to, f] for to, f in frames] + rare


def test_one_bad_row_is_refused_with_its_reason_and_the_rest_go_on() -> None:
    frames = [(1, in_flight(i, 0, 2, 0, T0_WALL + 0.01)) for i in range(4)]
    block = rows(frames)
    block[1]["due"] = np.nan
    block[2]["dst"] = 7
    good, _policies, _rare, refused = decode_columns(
        unpack_batch(encode_columns(block, [], [])), 3)
    assert sorted(refused) == ["due is not a finite time", "src/dst are not node indices"]
    assert good["id"].tolist() == [0, 3]


def test_the_plane_counts_a_bad_row_and_takes_the_rest() -> None:
    topo = scenario(3)  # nodes 0..3; this runtime (worker 1) hosts 1 and 3
    owner = np.array([0, 1, 0, 1], dtype=np.int64)
    rt = PlaneRuntime(topo, 1, owner, send=lambda _w, _p: None, speed=1.0, seed=1)
    links = Links(topo.n_nodes, [(0, 1), (1, 2), (2, 3)], random.Random(1))
    rt.t0_wall = T0_WALL
    rt.apply_state(0.0, links.a, links.b, links.kind, links.delay_s, links.destinations,
                   {None: links.table}, now=T0_WALL)
    block = rows([(1, in_flight(i, 0, 1, 0, T0_WALL + 0.002)) for i in range(3)])
    block[1]["due"] = np.inf
    rt.receive_batch(encode_columns(block, [], []), T0_WALL, run=False)
    rt.run_due(T0_WALL + 1.0)
    rt.stats.as_dict()
    assert rt.stats.malformed_count == 1
    assert rt.stats.flows[0].delivered == 2
    assert rt.stats.flows[0].remote_in == 2


def test_the_worker_runs_the_plane_it_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORBITMESH_PLANE", raising=False)
    assert runtime_class() is NodeRuntime
    monkeypatch.setenv("ORBITMESH_PLANE", "batched")
    assert runtime_class() is PlaneRuntime
    monkeypatch.setenv("ORBITMESH_PLANE", "numpy")
    with pytest.raises(OrbitmeshError, match="ORBITMESH_PLANE='numpy'"):
        runtime_class()
