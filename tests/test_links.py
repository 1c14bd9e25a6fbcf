"""+Grid topology, ISL occlusion, GSL assignment and link diffs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orbitmesh.core.links import LinkEngine, LinkTracker, assign_gsl
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import GSL, ISL, TERRESTRIAL, build_topology

SHELL1 = """\
name: shell1
epoch: 2026-01-01T00:00:00Z
duration_s: 600
constellations:
  - name: sl
    operator: spacex
    walker: {inclination_deg: 53, satellites: 1584, planes: 72, phasing: 1, altitude_km: 550}
    max_gsl: 2
stations:
  - {name: gs1, operator: spacex, lat_deg: 47.6, lon_deg: -122.3, min_elevation_deg: 25,
     antennas: 3}
  - {name: gs2, operator: spacex, lat_deg: 40.7, lon_deg: -74.0, min_elevation_deg: 25,
     antennas: 3}
ops_centres:
  - {name: occ, operator: spacex, lat_deg: 34.0, lon_deg: -118.2, stations: all}
"""


@pytest.fixture(scope="module")
def shell1() -> LinkEngine:
    return LinkEngine(build_topology(parse_scenario(SHELL1, Path("/tmp/shell1.yaml"))))


def test_plus_grid_has_four_links_per_satellite(shell1: LinkEngine) -> None:
    pairs = shell1.topology.isl_pairs
    assert len(pairs) == 2 * 1584
    assert np.all(np.bincount(pairs.ravel(), minlength=1584) == 4)


def test_walker_seam_links_slot_j_to_j_plus_f(shell1: LinkEngine) -> None:
    ids = shell1.topology.node_ids
    pairs = {(ids[a], ids[b]) for a, b in shell1.topology.isl_pairs}
    assert ("sl-00-01", "sl-71-00") in pairs  # plane 71 slot 0 -> plane 0 slot 0+F
    assert ("sl-00-00", "sl-71-00") not in pairs


def test_seam_links_are_as_long_as_other_cross_plane_links(shell1: LinkEngine) -> None:
    topo = shell1.topology
    pos = shell1.positions_ecef_km(0.0)
    plane = np.concatenate([s.plane for s in topo.shells])
    a, b = topo.isl_pairs.T
    length = np.linalg.norm(pos[a] - pos[b], axis=1)
    cross = plane[a] != plane[b]
    seam = cross & (np.abs(plane[a] - plane[b]) == 71)
    assert seam.sum() == 22
    assert length[seam].mean() == pytest.approx(length[cross & ~seam].mean(), rel=0.02)
    # ... and the naive same-slot seam would have been three times longer (domain.md).
    assert length[cross].mean() < 600.0


def test_shell1_isls_are_never_occluded(shell1: LinkEngine) -> None:
    a, _b, delay = shell1.isl(shell1.positions_ecef_km(120.0))
    assert len(a) == 2 * 1584
    assert np.all(delay > 0)


def test_sparse_shell_loses_in_plane_links_to_occlusion() -> None:
    text = SHELL1.replace("satellites: 1584, planes: 72", "satellites: 48, planes: 6")
    engine = LinkEngine(build_topology(parse_scenario(text, Path("/tmp/s.yaml"))))
    a, b, _ = engine.isl(engine.positions_ecef_km(0.0))
    planes = np.concatenate([s.plane for s in engine.topology.shells])
    in_plane = planes[a] == planes[b]
    # 8 satellites per plane at 550 km are 45 deg apart: a 5,302 km chord dips into the margin.
    assert not np.any(in_plane)


def test_gsl_respects_masks_antennas_and_satellite_limits(shell1: LinkEngine) -> None:
    topo = shell1.topology
    for t_s in (0.0, 300.0, 600.0):
        state = shell1.state_at(t_s)
        gsl = state.kind == GSL
        sat, gs = state.a[gsl], state.b[gsl] - topo.n_satellites
        assert np.all(np.bincount(gs, minlength=2) <= 3)
        assert np.all(np.bincount(sat) <= 2)
        from orbitmesh.core.geometry import elevation_deg

        el = elevation_deg(topo.stations, shell1.positions_ecef_km(t_s))
        assert np.all(el[gs, sat] >= 25.0)
        assert state.count(TERRESTRIAL) == 2
        assert state.count(ISL) == 2 * 1584


def test_assign_gsl_prefers_elevation_and_honours_limits() -> None:
    cg = np.array([0, 0, 0, 1, 1])
    cs = np.array([0, 1, 2, 0, 2])
    el = np.array([80.0, 30.0, 50.0, 70.0, 20.0])
    keep = np.zeros(5, dtype=bool)
    chosen = assign_gsl(cg, cs, el, keep, antennas=np.array([2, 1]), sat_limit=np.array([1, 1, 1]))
    # station 0 takes sats 0 (80) and 2 (50); station 1 loses sat 0 and sat 2 is full -> nothing.
    assert chosen.tolist() == [True, False, True, False, False]
    chosen = assign_gsl(cg, cs, el, keep, antennas=np.array([2, 1]), sat_limit=np.array([1, 1, 2]))
    assert chosen.tolist() == [True, False, True, False, True]
    sticky = assign_gsl(cg, cs, el, np.array([False, True, False, False, False]),
                        antennas=np.array([1, 1]), sat_limit=np.array([1, 1, 1]))
    assert sticky.tolist() == [False, True, False, True, False]


def test_sticky_keeps_satellites_best_hands_over_more() -> None:
    counts = {}
    for policy in ("sticky", "best"):
        text = SHELL1 + f"links:\n  gsl: {{handover: {policy}}}\n"
        engine = LinkEngine(build_topology(parse_scenario(text, Path("/tmp/s.yaml"))))
        for t in np.arange(0.0, 900.0, 5.0):
            engine.state_at(float(t))
        counts[policy] = engine.handovers_total
    assert 0 < counts["sticky"] < counts["best"]


def test_tracker_diffs_up_down_and_drift(shell1: LinkEngine) -> None:
    tracker = LinkTracker(threshold_s=1e-4)
    s0 = shell1.state_at(0.0)
    first = tracker.update(s0)
    assert len(first.up) == len(s0)
    s1 = shell1.state_at(60.0)
    d = tracker.update(s1)
    before = set(s0.key.tolist())
    after = set(s1.key.tolist())
    assert {int(s1.key[i]) for i in d.up} == after - before
    down = {int(a) * s1.n_nodes + int(b) for a, b in zip(d.down_a, d.down_b, strict=True)}
    assert down == before - after
    # Each changed delay moved by more than the threshold since it was last announced.
    for i in d.delay_changed:
        assert s0.delay_of(int(s1.a[i]), int(s1.b[i])) is not None
    assert len(d.delay_changed) > 0
    quiet = tracker.update(s1)
    assert quiet.empty
