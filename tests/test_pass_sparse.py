"""SGP4 only where a pass can use it: the same passes, to the bit, as SGP4 at every sample.

:mod:`orbitmesh.core._pass_sparse` interpolates the samples far from every station and runs SGP4
at the others; its claim is that the search's output does not change at all. These tests hold it
to that on orbits that stress the near test (LEO shells, a 300 km polar orbit, the ISS, a very
eccentric orbit and one SGP4 cannot propagate, masks from 0 to 40 deg, stations at altitude),
and show that a narrower near region would change the answer, so the comparison can fail.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sgp4.api import Satrec

from orbitmesh.core import _pass_sparse
from orbitmesh.core._pass_sparse import SparseChunk, put_exact
from orbitmesh.core.geometry import (
    Propagator,
    Stations,
    offsets_to_jd,
    teme_to_ecef,
    walker_satrecs,
)
from orbitmesh.core.pass_table import PassTable
from orbitmesh.core.passes import ecef_valid_km, iter_pass_tables
from tests.orbits import ISS_2018, MOLNIYA

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
BROKEN = ("1 33334U 78066F   06174.85818871  .00000620  00000-0  10000-3 0  6809",
          "2 33334  68.4714 236.1303 5602877 123.7484 302.5767  0.00001000 67521")
"""sgp4/SGP4-VER.TLE case 33334: SGP4 errors at every time."""
five_km = 5.0


def _satellites() -> list[Satrec]:
    shell = walker_satrecs(epoch=EPOCH, total=60, planes=6, phasing=1, inclination_deg=53.0,
                           altitude_km=550.0)
    polar = walker_satrecs(epoch=EPOCH, total=8, planes=2, phasing=1, inclination_deg=97.0,
                           altitude_km=300.0, first_satnum=500)
    high = walker_satrecs(epoch=EPOCH, total=6, planes=2, phasing=1, inclination_deg=70.0,
                          altitude_km=1200.0, first_satnum=600)
    return [*shell, *polar, *high, Satrec.twoline2rv(*ISS_2018), Satrec.twoline2rv(*MOLNIYA),
            Satrec.twoline2rv(*BROKEN)]


def _stations() -> tuple[Stations, list[str], list[float]]:
    sites = [(40.7, -74.0, 0.0, 25.0), (51.5, -0.1, 0.1, 10.0), (-33.9, 151.2, 0.0, 40.0),
             (78.2, 15.6, 0.5, 0.0), (0.0, 30.0, 2.5, 5.0), (35.7, 139.7, 0.0, 25.0),
             (-54.8, -68.3, 0.0, 15.0), (19.4, -99.1, 2.2, 25.0)]
    stations = Stations.from_geodetic([s[0] for s in sites], [s[1] for s in sites],
                                      [s[2] for s in sites])
    return stations, [f"g{i}" for i in range(len(sites))], [s[3] for s in sites]


def _search(sats: list[Satrec], start: datetime, hours: float, *, everywhere: bool,
            chunk_samples: int | None = None) -> PassTable:
    stations, names, masks = _stations()
    return PassTable.concat(list(iter_pass_tables(
        Propagator(sats), [f"s{i}" for i in range(len(sats))], stations, names, masks, start,
        start + timedelta(hours=hours), chunk_samples=chunk_samples,
        sgp4_everywhere=everywhere)))


def _same_bits(a: PassTable, b: PassTable) -> bool:
    if a.json_text() != b.json_text():
        return False
    fields = [name for name, value in vars(a).items() if isinstance(value, np.ndarray)]
    return bool(fields) and all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True)
                                for f in fields)


@pytest.mark.parametrize("chunk_samples", [None, 32, 64])
def test_sparse_propagation_gives_the_same_bits(chunk_samples: int | None) -> None:
    sats = _satellites()
    dense = _search(sats, EPOCH, 18.0, everywhere=True, chunk_samples=chunk_samples)
    sparse = _search(sats, EPOCH, 18.0, everywhere=False, chunk_samples=chunk_samples)
    assert len(dense) > 500
    assert _same_bits(sparse, dense)


def test_sparse_propagation_same_bits_near_the_iss_epoch() -> None:
    # A real element set near its own epoch, a window starting off the grid's round numbers.
    iss = Satrec.twoline2rv(*ISS_2018)
    start = datetime(2018, 7, 3, 12, 0, 7, 250000, tzinfo=UTC)
    dense = _search([iss], start, 30.0, everywhere=True)
    assert len(dense) > 20
    assert _same_bits(_search([iss], start, 30.0, everywhere=False), dense)


def test_a_narrower_near_region_would_change_the_passes(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Without the two-sample widening the stencils mix in interpolated samples: the check
    above would see it."""
    sats = _satellites()[:60]
    dense = _search(sats, EPOCH, 6.0, everywhere=True)
    monkeypatch.setattr(_pass_sparse, "DILATE_SAMPLES", 0)
    assert not _same_bits(_search(sats, EPOCH, 6.0, everywhere=False), dense)


def _chunk(sats: list[Satrec], lo: int, hi: int) -> tuple[SparseChunk, np.ndarray]:
    grid_s = np.arange(-60.0, 6 * 3600.0, 30.0)
    chunk = SparseChunk(Propagator(sats), EPOCH, grid_s, lo, hi)
    return chunk, ecef_valid_km(Propagator(sats), EPOCH, grid_s[lo:hi])


def test_exact_samples_are_sgp4s_bits_and_the_rest_interpolated_closely() -> None:
    sats = _satellites()
    chunk, sgp4_km = _chunk(sats, 37, 37 + 68)
    stations, _names, masks = _stations()
    site_km = np.linalg.norm(stations.positions_ecef_km, axis=1)
    pg = np.repeat(np.arange(len(masks)), len(sats))
    ps = np.tile(np.arange(len(sats)), len(masks))
    chunk.mark(pg, ps, 0, 68, stations.positions_ecef_km / site_km[:, None], site_km,
               np.asarray(masks))
    pos_km = chunk.refine()
    exact = chunk.exact
    assert np.array_equal(pos_km[exact], sgp4_km[exact], equal_nan=True)
    # Orbits the interpolation does not serve (eccentric, deep space, failing) are all SGP4.
    assert not chunk.eligible[-2:].any() and exact[-2:].all()
    assert chunk.eligible[:-2].all()
    # Some samples are interpolated (the point), none far from SGP4's position: within half
    # the 10 km the near test allows for it (1.7 km measured, on the 300 km orbit).
    assert 0.1 < exact[:-2].mean() < 0.9
    error_km = np.linalg.norm(pos_km[~exact] - sgp4_km[~exact], axis=-1)
    assert error_km.max() < five_km <= _pass_sparse._MIN_APPROX_ERROR_KM / 2


def test_rotation_is_teme_to_ecef_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    teme = rng.normal(scale=7000.0, size=(3, 5, 3))
    jd, fr = offsets_to_jd(EPOCH, rng.uniform(0, 86400.0, 5))
    theta = teme_to_ecef(np.array([[[1.0, 0.0, 0.0]] * 5]), jd, fr)[0]  # (cos, -sin, 0) rows
    out = np.zeros_like(teme)
    s_of, t_of = np.repeat(np.arange(3), 5), np.tile(np.arange(5), 3)
    put_exact(out, s_of, t_of, teme.reshape(-1, 3), np.zeros(15, np.uint8),
              np.ascontiguousarray(theta[:, 0]), np.ascontiguousarray(-theta[:, 1]))
    assert np.array_equal(out, teme_to_ecef(teme, jd, fr))
    put_exact(out, s_of[:1], t_of[:1], teme[0, :1], np.ones(1, np.uint8), theta[:, 0],
              -theta[:, 1])
    assert np.isnan(out[0, 0]).all()
