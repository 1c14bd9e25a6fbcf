"""SGP4 every k-th grid sample with cubic Hermite between: positions and passes against all-SGP4.

The pass search with ``sgp4_step_s`` must find the same passes as the search that runs SGP4 at
every sample (which the skyfield tests check), with AOS/LOS/TCA within a few milliseconds, and
stream the same way whatever the chunking.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sgp4.api import WGS72, Satrec

from orbitmesh.core._pass_hermite import hermite_ecef_km, knots
from orbitmesh.core.geometry import Propagator, Stations, walker_satrecs
from orbitmesh.core.passes import ecef_valid_km, find_passes, iter_pass_tables
from orbitmesh.errors import GeometryError
from tests.orbits import ISS_2018 as ISS
from tests.orbits import MOLNIYA

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
one_metre_km = 1e-3
twenty_metres_km = 2e-2  # 13 m measured near a Molniya perigee at 120 s
five_milliseconds_s = 5e-3
one_millidegree = 1e-3


def _sats() -> list[Satrec]:
    low = walker_satrecs(epoch=EPOCH, total=24, planes=6, phasing=1, inclination_deg=53.0,
                         altitude_km=550.0)
    very_low = walker_satrecs(epoch=EPOCH, total=4, planes=2, phasing=1, inclination_deg=97.0,
                              altitude_km=300.0, first_satnum=500)
    return [*low, *very_low, Satrec.twoline2rv(*ISS), Satrec.twoline2rv(*MOLNIYA)]


@pytest.mark.parametrize(("every", "step_s", "tolerance_km"),
                         [(2, 30.0, one_metre_km), (4, 30.0, twenty_metres_km),
                          (2, 60.0, twenty_metres_km)])
def test_interpolated_positions_match_sgp4(every: int, step_s: float,
                                           tolerance_km: float) -> None:
    """Between knots the curve stays within the stated bound of SGP4; on knots it is SGP4."""
    sats = _sats()
    propagator = Propagator(sats)
    # The ISS TLE is from 2018: search near its epoch like the other satellites' (2026) one.
    grid_s = np.arange(0.0, 400 * step_s, step_s)
    direct = ecef_valid_km(propagator, EPOCH, grid_s)
    for lo, hi in ((0, 400), (37, 121), (398, 400)):
        ours = hermite_ecef_km(propagator, EPOCH, grid_s, lo, hi, every)
        error_km = np.linalg.norm(ours - direct[:, lo:hi], axis=-1)
        assert np.nanmax(error_km) < tolerance_km
        on_knot = (np.arange(lo, hi) % every == 0) | (np.arange(lo, hi) == 399)
        assert np.array_equal(ours[:, on_knot], direct[:, lo:hi][:, on_knot], equal_nan=True)
        if hi - lo > 2:
            assert np.nanmax(error_km) > 0.0  # the samples between are interpolated


def test_knots_bracket_every_sample_and_do_not_depend_on_the_chunk() -> None:
    """Knots are multiples of k from the grid's start, plus its last sample."""
    assert knots(10, 4, 0, 10) == [0, 4, 8, 9]
    assert knots(10, 4, 5, 7) == [4, 8]
    assert knots(10, 4, 8, 9) == [8]
    assert knots(10, 2, 9, 10) == [8, 9]


def _decaying() -> Satrec:
    """A 200 km satellite with a huge drag term: SGP4 gives up on it (error 1) within days."""
    sat = Satrec()
    sat.sgp4init(WGS72, "i", 900, (EPOCH.replace(tzinfo=None) - datetime(1949, 12, 31)).days,
                 0.05, 0.0, 0.0, 0.001, 0.0, np.radians(51.6), 0.0, 15.9 * 2 * np.pi / 1440.0,
                 0.0)
    return sat


def test_failed_sgp4_knot_blanks_the_samples_it_bounds() -> None:
    """Where SGP4 fails at a knot, the samples that knot bounds are NaN, as direct SGP4's are."""
    propagator = Propagator([*_sats()[:2], _decaying()])
    minutes = np.arange(0.0, 7 * 1440.0)
    fails = np.isnan(ecef_valid_km(propagator, EPOCH, minutes * 60.0)[2, :, 0])
    first_fail_s = minutes[np.argmax(fails)] * 60.0
    assert first_fail_s > 0
    grid_s = first_fail_s - 600.0 + np.arange(40) * 30.0
    direct = ecef_valid_km(propagator, EPOCH, grid_s)
    ours = hermite_ecef_km(propagator, EPOCH, grid_s, 0, 40, 2)
    broken_direct, broken_ours = np.isnan(direct[2, :, 0]), np.isnan(ours[2, :, 0])
    assert broken_direct.any() and not broken_direct.all()
    assert np.all(broken_ours >= broken_direct)  # never a position where SGP4 had none
    assert broken_ours.sum() <= broken_direct.sum() + 1  # at most the sample before the knot
    assert np.array_equal(ours[:2], hermite_ecef_km(Propagator(_sats()[:2]), EPOCH, grid_s, 0,
                                                    40, 2))  # the others are untouched


def _network() -> tuple[Stations, list[str], list[float]]:
    lat = [52.5, -33.9, 35.7, 64.8, 0.0, -77.8]
    lon = [13.4, 18.4, 139.7, -147.7, 10.0, 166.7]
    return (Stations.from_geodetic(lat, lon, [0.1] * 6), [f"g{i}" for i in range(6)],
            [0.0, 10.0, 25.0, 5.0, 40.0, 15.0])


def test_passes_with_interpolation_are_the_all_sgp4_passes() -> None:
    """Same passes, in the same order, times within a few ms and elevations within 0.001 deg."""
    sats = _sats()[:-2]  # LEO only: the ISS TLE is years from this window, Molniya not LEO
    stations, names, masks = _network()
    args = (Propagator(sats), [f"s{i}" for i in range(len(sats))], stations, names, masks,
            EPOCH, EPOCH + timedelta(hours=12))
    exact = find_passes(*args)
    assert len(exact) > 200
    ours = find_passes(*args, sgp4_step_s=60.0)
    assert [(p.station, p.satellite) for p in ours] == [(p.station, p.satellite) for p in exact]
    for p, q in zip(ours, exact, strict=True):
        for a, b in ((p.aos, q.aos), (p.tca, q.tca), (p.los, q.los)):
            assert abs((a - b).total_seconds()) < five_milliseconds_s
        assert abs(p.max_elevation_deg - q.max_elevation_deg) < one_millidegree
    streamed = [p for t in iter_pass_tables(*args, sgp4_step_s=60.0, chunk_samples=32)
                for p in t.passes()]
    assert streamed == ours


@pytest.mark.parametrize("sgp4_step_s", [45.0, 120.0, 0.0])
def test_bad_sgp4_step_is_refused(sgp4_step_s: float) -> None:
    """Not a whole multiple of the grid step, or too long: a clear error."""
    stations, names, masks = _network()
    sats = _sats()[:2]
    with pytest.raises(GeometryError, match="sgp4_step_s"):
        find_passes(Propagator(sats), ["a", "b"], stations, names, masks, EPOCH,
                    EPOCH + timedelta(hours=1), sgp4_step_s=sgp4_step_s)
