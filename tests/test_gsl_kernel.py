"""The compiled link paths (cube-grid GSL candidates, assignment rounds, the ISL cut) pick exactly
the links the numpy paths pick: tick after tick, with masks, range limits, station restrictions,
failed nodes and occluded ISLs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orbitmesh.core import gsl_assign, links
from orbitmesh.core.links import LinkEngine, LinkState, assign_gsl
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import build_topology

pytestmark = pytest.mark.skipif(not links.HAVE_NUMBA, reason="numba is not installed")


def scenario_text(n_stations: int) -> str:
    """Two shells, seeded stations of every kind: some range-limited, some tracking one shell."""
    rng = np.random.default_rng(11)
    lines = ["name: gsl", "epoch: 2026-01-01T00:00:00Z", "duration_s: 600", "constellations:",
             "  - {name: a, operator: op, max_gsl: 2, walker: {inclination_deg: 53, "
             "satellites: 396, planes: 18, phasing: 1, altitude_km: 550}}",
             "  - {name: b, operator: op, max_gsl: 1, walker: {inclination_deg: 97.6, "
             "satellites: 120, planes: 6, phasing: 1, altitude_km: 560}}",
             "stations:"]
    for g in range(n_stations):
        lat = float(np.degrees(np.arcsin(rng.uniform(-0.9, 0.95))))
        lon = float(rng.uniform(-180, 180))
        extra = ""
        if g % 5 == 1:
            extra += ", max_range_km: 900"
        if g % 7 == 2:
            extra += ", constellations: [b]"
        lines.append(f"  - {{name: gs{g}, operator: op, lat_deg: {lat:.3f}, lon_deg: {lon:.3f}, "
                     f"min_elevation_deg: {10 + 5 * (g % 4)}, antennas: {1 + g % 3}{extra}}}")
    return "\n".join(lines) + "\n"


def _states_agree(compiled: LinkEngine, plain: LinkEngine, t_s: float,
                  down: np.ndarray | None, monkeypatch: pytest.MonkeyPatch
                  ) -> LinkState:
    """The compiled state at ``t_s``, asserted equal to the numpy one link for link."""
    with monkeypatch.context() as patch:
        patch.setattr(links, "_compiled", lambda: None)
        patch.setattr(gsl_assign, "_compiled", lambda: None)
        want = plain.state_at(t_s, failed=down)
    got = compiled.state_at(t_s, failed=down)
    np.testing.assert_array_equal(got.a, want.a)
    np.testing.assert_array_equal(got.b, want.b)
    np.testing.assert_array_equal(got.delay_s, want.delay_s)
    return got


@pytest.mark.parametrize("handover", ["sticky", "best"])
def test_compiled_links_equal_numpy_links_tick_after_tick(
        handover: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = scenario_text(80) + f"links:\n  gsl: {{handover: {handover}}}\n"
    topology = build_topology(parse_scenario(text, Path("/tmp/gsl.yaml")))
    compiled, plain = LinkEngine(topology), LinkEngine(topology)
    failed = np.zeros(topology.n_nodes, dtype=bool)
    failed[[3, 50, 200, topology.n_satellites + 4]] = True
    gsl_seen = 0
    for t_s in np.arange(0.0, 600.0, 20.0):
        down = failed if 200.0 <= t_s < 300.0 else None
        got_state = _states_agree(compiled, plain, float(t_s), down, monkeypatch)
        assert compiled.last_handovers == plain.last_handovers
        gsl_seen += int(np.count_nonzero(got_state.b >= topology.n_satellites))
    assert gsl_seen > 1000  # the case is not vacuous: many GSLs were placed


def test_compiled_rounds_equal_numpy_rounds_on_random_candidates() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n_g, n_s = int(rng.integers(1, 12)), int(rng.integers(1, 30))
        pairs = rng.choice(n_g * n_s, size=int(rng.integers(1, n_g * n_s + 1)), replace=False)
        cg, cs = pairs // n_s, pairs % n_s
        el = rng.choice([30.0, 45.0, 60.0], cg.size) if rng.random() < 0.3 else \
            rng.uniform(10.0, 90.0, cg.size)  # equal elevations too: ties go the same way
        keep = rng.random(cg.size) < 0.2
        antennas, limit = rng.integers(0, 4, n_g), rng.integers(0, 3, n_s)
        want = assign_gsl(cg, cs, el, keep, antennas, limit, compiled=False)
        got = assign_gsl(cg, cs, el, keep, antennas, limit, compiled=True)
        np.testing.assert_array_equal(got, want)


def test_compile_kernels_compiles_what_a_tick_calls() -> None:
    # What an image's build runs: it must keep up with the kernels' signatures.
    from orbitmesh.core.engine import compile_kernels

    compile_kernels()


def test_compiled_isls_equal_numpy_isls(monkeypatch: pytest.MonkeyPatch) -> None:
    # 18 planes of 22 at 550 km: in-plane neighbours are 1,980 km apart and clear; a sparse
    # shell (planes of 4) loses in-plane links to the Earth, and a range limit cuts more.
    for text in (scenario_text(5), scenario_text(5).replace("satellites: 396", "satellites: 72")
                 + "links:\n  isl: {max_range_km: 3000}\n"):
        topology = build_topology(parse_scenario(text, Path("/tmp/isl.yaml")))
        engine = LinkEngine(topology)
        cut = 0
        for t_s in (0.0, 700.0, 1400.0):
            pos = engine.positions_ecef_km(t_s)
            got = engine.isl(pos)
            with monkeypatch.context() as patch:
                patch.setattr(links, "_compiled", lambda: None)
                want = engine.isl(pos)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
            cut += len(topology.isl_pairs) - len(got[0])
        if "max_range_km: 3000" in text:
            assert cut > 0  # some candidates were cut, so the cut itself was compared


def test_neighbour_lists_hold_every_satellite_in_reach_until_rebuilt() -> None:
    from orbitmesh.core._gsl_near import NearLists

    rng = np.random.default_rng(8)
    stations = rng.normal(size=(40, 3))
    stations *= 6371.0 / np.linalg.norm(stations, axis=1, keepdims=True)
    pos = rng.normal(size=(600, 3))
    pos *= 6921.0 / np.linalg.norm(pos, axis=1, keepdims=True)
    usable = rng.random(600) > 0.05
    near = NearLists(stations, margin_km=150.0)
    reach_km = 1200.0
    for step in range(80):
        # small moves (the lists are kept), a jump past the margin at 30 and 60, and satellites
        # that become usable at 15 and 45 (they are on no list)
        pos = pos + rng.normal(scale=400.0 if step in (30, 60) else 3.0, size=pos.shape)
        if step in (15, 45):
            usable = rng.random(600) > 0.05
        lists = near.lists(pos, usable, reach_km)
        assert lists is not None  # lists that served several calls are rebuilt, not paused
        seg, sats = lists
        gap = np.linalg.norm(pos[None, :, :] - stations[:, None, :], axis=2)
        for g in range(len(stations)):
            want = np.flatnonzero(usable & (gap[g] <= reach_km))
            listed = sats[seg[g]:seg[g + 1]]
            assert np.all(np.diff(listed) > 0)  # index order, each satellite once
            assert np.isin(want, listed).all(), f"station {g} misses a satellite in reach"
    assert near.rebuilds == 5  # at the start, and at each jump and each newly usable set
    for _ in range(3):  # stale at once, call after call: the cube grid's turn for a while
        pos = pos + rng.normal(scale=400.0, size=pos.shape)
        last = near.lists(pos, usable, reach_km)
    assert last is None and near.rebuilds == 6


def test_links_from_neighbour_lists_equal_numpy_links_second_by_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    topology = build_topology(parse_scenario(scenario_text(60), Path("/tmp/gsl.yaml")))
    compiled, plain = LinkEngine(topology), LinkEngine(topology)
    failed = np.zeros(topology.n_nodes, dtype=bool)
    failed[[7, 90, topology.n_satellites + 2]] = True
    times = [*np.arange(0.0, 40.0, 1.0), 35.0, 900.0, 901.0, 902.0]  # and back, and far ahead
    for t_s in times:
        down = failed if 10.0 <= t_s < 20.0 else None
        _states_agree(compiled, plain, float(t_s), down, monkeypatch)
    assert compiled._near is not None and compiled._near.rebuilds <= 6  # the lists were used


def test_compiled_slant_ranges_equal_numpy_norms_bit_for_bit() -> None:
    from orbitmesh.core._gsl_near import slant_km

    rng = np.random.default_rng(21)
    pos = rng.normal(size=(3000, 3)) * 7000.0
    stations = rng.normal(size=(200, 3)) * 6371.0
    g, s = rng.integers(0, 200, 50_000), rng.integers(0, 3000, 50_000)
    np.testing.assert_array_equal(slant_km(pos, stations, g, s),
                                  np.linalg.norm(pos[s] - stations[g], axis=1))


def test_a_tick_after_compile_kernels_compiles_nothing_more() -> None:
    # A kernel a tick calls with argument types compile_kernels did not use would compile on
    # the run's first tick (seconds with a cold cache): the signatures must not grow.
    import numba

    from orbitmesh.core import (
        _bucket_kernel,
        _csr_kernel,
        _diff_kernel,
        _gsl_kernel,
        _gsl_near,
        _isl_kernel,
        _repair_kernel,
    )
    from orbitmesh.core.engine import TickEngine, compile_kernels
    from tests.test_links import SHELL1

    compile_kernels()
    dispatchers = [getattr(module, name) for module in (
        _bucket_kernel, _csr_kernel, _diff_kernel, _gsl_kernel, _gsl_near, _isl_kernel,
        _repair_kernel) for name in dir(module)
        if isinstance(getattr(module, name), numba.core.registry.CPUDispatcher)]
    before = {d: len(d.signatures) for d in dispatchers}
    engine = TickEngine(build_topology(parse_scenario(SHELL1, Path("/tmp/shell1.yaml"))))
    for t_s in (0.0, 1.0, 2.0):
        engine.step(t_s)
    grown = [d.__name__ for d in dispatchers if len(d.signatures) != before[d]]
    assert not grown, f"compiled on a tick, not by compile_kernels: {grown}"
