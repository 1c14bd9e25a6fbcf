"""The compiled screen keeps exactly the pairs of the numpy rule on a mixed constellation.

The compiled screen first drops pairs that are out of reach of the loosest satellite (the
highest and fastest in the block), then applies each remaining pair's own reach; mixing shells
of different altitudes and an eccentric orbit makes that shortcut matter.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from sgp4.api import Satrec

from orbitmesh.core._pass_screen import candidate_pairs
from orbitmesh.core.geometry import Propagator, Stations, walker_satrecs
from orbitmesh.core.passes import ecef_valid_km
from tests.orbits import MOLNIYA

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _constellation() -> list[Satrec]:
    low = walker_satrecs(epoch=EPOCH, total=60, planes=6, phasing=1, inclination_deg=53.0,
                         altitude_km=550.0)
    high = walker_satrecs(epoch=EPOCH, total=24, planes=4, phasing=1, inclination_deg=87.0,
                          altitude_km=1200.0, first_satnum=100)
    return [*low, *high, Satrec.twoline2rv(*MOLNIYA)]


def test_compiled_screen_equals_numpy_rule_on_mixed_orbits() -> None:
    """Same (station, satellite) set as the reference, for several blocks and masks."""
    rng = np.random.default_rng(4)
    lat, lon = rng.uniform(-70, 70, 40), rng.uniform(-180, 180, 40)
    stations = Stations.from_geodetic(lat, lon, rng.uniform(0.0, 3.0, 40))
    masks = rng.choice([0.0, 5.0, 10.0, 25.0, 40.0], 40)
    sats = _constellation()
    pos_km = ecef_valid_km(Propagator(sats), EPOCH, np.arange(200, dtype=np.float64) * 30.0)
    kept_some_far = False
    for a in range(0, 164, 32):
        block = pos_km[:, a:a + 36]
        g, s = candidate_pairs(block, stations, masks)
        ours = set(zip(g.tolist(), s.tolist(), strict=True))
        g, s = candidate_pairs(block, stations, masks, compiled=False)
        reference = set(zip(g.tolist(), s.tolist(), strict=True))
        assert ours == reference, a
        assert 0 < len(ours) < len(masks) * len(sats)
        kept_some_far |= any(sat == len(sats) - 1 for _g, sat in ours)
    assert kept_some_far  # the eccentric orbit took part


def test_peak_floor_bounds_how_far_a_sample_sits_below_the_top() -> None:
    """Every sampled maximum of a pair that tops its mask is within the kernel's margin of it.

    The scan refines only sampled maxima above a per-pair floor; the top of the elevation
    (SGP4 every second) must never be further above the sample than the floor allows, for fast
    low orbits, high ones and an eccentric one, on 30 s and 60 s grids.
    """
    from orbitmesh.core._pass_kernel import _peak_floors
    from orbitmesh.core.geometry import look_angles

    rng = np.random.default_rng(7)
    stations = Stations.from_geodetic(rng.uniform(-65, 65, 30), rng.uniform(-180, 180, 30),
                                      np.zeros(30))
    masks = rng.choice([0.0, 10.0, 25.0, 40.0], 30)
    sats = [*_constellation(), *walker_satrecs(epoch=EPOCH, total=12, planes=3, phasing=1,
                                               inclination_deg=70.0, altitude_km=300.0,
                                               first_satnum=300)]
    propagator = Propagator(sats)
    pg, ps = (x.reshape(-1) for x in np.meshgrid(np.arange(30), np.arange(len(sats)),
                                                 indexing="ij"))
    checked = 0
    for step_s in (30.0, 60.0):
        dense_s = np.arange(0.0, 36 * step_s + 1.0, 1.0)
        el_dense = look_angles(stations, ecef_valid_km(propagator, EPOCH, dense_s))[0]
        coarse = ecef_valid_km(propagator, EPOCH, np.arange(36) * step_s)
        floor = _peak_floors(np.ascontiguousarray(coarse), stations.positions_ecef_km, masks,
                             pg, ps)
        margin_deg = (masks[pg] - np.degrees(np.arcsin(np.clip(floor, -1, 1)))).reshape(
            30, len(sats))
        el = look_angles(stations, coarse)[0]
        for j in range(1, 35):
            peak = (el[:, :, j] > el[:, :, j - 1]) & (el[:, :, j + 1] <= el[:, :, j])
            lo, hi = int((j - 1) * step_s), int((j + 1) * step_s)
            top = el_dense[:, :, lo:hi + 1].max(axis=2)
            tops = peak & (top >= masks[:, None])
            checked += int(tops.sum())
            assert np.all(top[tops] - el[:, :, j][tops] <= margin_deg[tops])
        assert margin_deg.min() < 40.0  # the bound is tighter than the old 45 deg somewhere
    assert checked > 100
