"""Geometry against published references and closed-form results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sgp4.api import WGS72, Satrec
from sgp4.conveniences import check_satrec

from orbitmesh.core.geometry import (
    EARTH_RADIUS_KM,
    Propagator,
    Stations,
    julian_date,
    line_of_sight_clear,
    look_angles,
    max_isl_range_km,
    teme_to_ecef,
    walker_satrecs,
)

ten_metres_km = 0.010
one_centimetre_km = 1e-5
one_km = 1.0
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def test_teme_to_ecef_matches_aiaa_2006_6753_appendix_c() -> None:
    # Vallado et al., "Revisiting Spacetrack Report #3", App. C: r_TEME at
    # 2004-04-06 07:51:28.386 UTC, dUT1 = -0.439961 s. Published r_ITRF (with polar motion):
    # (-1033.47938300, 7901.29527540, 6380.35659580) km. Without polar motion (which we neglect,
    # documented as ~16 m) the PEF vector is (-1033.47504, 7901.30558, 6380.34453).
    ut1 = datetime(2004, 4, 6, 7, 51, 28, 386000, tzinfo=UTC) + timedelta(seconds=-0.439961)
    jd, fr = julian_date(ut1)
    r = teme_to_ecef(np.array([5094.18016210, 6127.64465950, 6380.34453270]), jd, fr)
    assert r == pytest.approx([-1033.47504, 7901.30558, 6380.34453], abs=one_centimetre_km * 10)
    itrf = np.array([-1033.47938300, 7901.29527540, 6380.35659580])
    assert np.linalg.norm(r - itrf) < 0.020  # polar motion alone: ~16 m


def test_teme_to_ecef_broadcasts_over_satellites_and_times() -> None:
    r = np.random.default_rng(1).normal(size=(4, 3, 3)) * 7000
    jd = np.full(3, 2460000.5)
    fr = np.array([0.1, 0.2, 0.3])
    out = teme_to_ecef(r, jd, fr)
    for t in range(3):
        assert out[:, t] == pytest.approx(teme_to_ecef(r[:, t], jd[t], fr[t]))
    assert np.linalg.norm(out, axis=-1) == pytest.approx(np.linalg.norm(r, axis=-1))


def test_walker_delta_shell_counts_steps_and_altitude() -> None:
    sats = walker_satrecs(epoch=EPOCH, total=1584, planes=72, phasing=1, inclination_deg=53.0,
                          altitude_km=550.0)
    assert len(sats) == 1584
    raan = np.degrees([s.nodeo for s in sats]).reshape(72, 22)
    anomaly = np.degrees([s.mo for s in sats]).reshape(72, 22)
    assert np.diff(raan[:, 0]) == pytest.approx(np.full(71, 360 / 72))
    assert np.all(raan == raan[:, :1])
    assert np.diff(anomaly[0]) == pytest.approx(np.full(21, 360 / 22))
    # Inter-plane phase step F*360/T.
    assert (anomaly[1, 0] - anomaly[0, 0]) == pytest.approx(360 / 1584)
    for s in sats:
        check_satrec(s)  # raises ValueError on elements SGP4 cannot use
    jd, fr = julian_date(EPOCH + timedelta(minutes=37))
    alt = np.linalg.norm(Propagator(sats).ecef_at(jd, fr), axis=1) - EARTH_RADIUS_KM
    assert abs(alt.mean() - 550.0) < one_km
    assert np.all(np.abs(alt - 550.0) < 15.0)  # J2 short-period terms only


def test_walker_star_spreads_planes_over_half_a_circle() -> None:
    sats = walker_satrecs(epoch=EPOCH, total=36, planes=6, phasing=0, inclination_deg=87.9,
                          altitude_km=1200.0, pattern="star")
    raan = np.degrees([s.nodeo for s in sats[::6]])
    assert raan == pytest.approx(np.arange(6) * 30.0)


def test_walker_satrec_round_trips_through_tle_export() -> None:
    from sgp4.exporter import export_tle

    sat = walker_satrecs(epoch=EPOCH, total=4, planes=2, phasing=1, inclination_deg=53.0,
                         altitude_km=550.0)[3]
    line1, line2 = export_tle(sat)
    again = Satrec.twoline2rv(line1, line2, WGS72)
    jd, fr = julian_date(EPOCH + timedelta(hours=3))
    _, r1, _ = sat.sgp4(jd, fr)
    _, r2, _ = again.sgp4(jd, fr)
    assert np.linalg.norm(np.subtract(r1, r2)) < 1.0  # TLE rounding of the elements


def test_max_isl_range_closed_form() -> None:
    # domain.md: 5,016.6 km at 550 km with an 80 km grazing margin (Hypatia's value).
    assert max_isl_range_km(550.0, 80.0) == pytest.approx(5016.6, abs=0.1)


def test_occlusion_through_grazing_and_clear() -> None:
    r = EARTH_RADIUS_KM + 550.0
    clearance = EARTH_RADIUS_KM + 80.0
    a = np.array([[r, 0.0, 0.0]] * 3)
    b = np.array([
        [-r, 0.0, 0.0],  # straight through the Earth
        [r * np.cos(np.radians(10)), r * np.sin(np.radians(10)), 0.0],  # short chord, clear
        [0.0, 0.0, 0.0],  # ends at the centre
    ])
    assert line_of_sight_clear(a, b, clearance).tolist() == [False, True, False]
    # Grazing: the chord's midpoint sits just above / just below the clearance sphere.
    for offset_km, expected in ((+0.5, True), (-0.5, False)):
        half = np.arccos((clearance + offset_km) / r)
        p = np.array([[r * np.cos(half), r * np.sin(half), 0.0]])
        q = np.array([[r * np.cos(half), -r * np.sin(half), 0.0]])
        assert line_of_sight_clear(p, q, clearance).tolist() == [expected]
    # A segment whose closest point is an end point (both ends on the same side).
    assert line_of_sight_clear(np.array([[r, 0, 0]]), np.array([[2 * r, 0, 0]]), clearance)[0]


def test_look_angles_zenith_and_horizon() -> None:
    st = Stations.from_geodetic([0.0, 45.0], [0.0, 90.0], [0.0, 0.0])
    up = st.positions_ecef_km + st.up * 550.0  # a point 550 km straight up from each station
    el, _az, rng = look_angles(st, up)
    assert np.diag(el) == pytest.approx([90.0, 90.0], abs=1e-6)
    assert np.diag(rng) == pytest.approx([550.0, 550.0], abs=1e-6)
    north = st.positions_ecef_km[:1] + st.north[:1] * 100.0
    east = st.positions_ecef_km[:1] + st.east[:1] * 100.0
    _, az, _ = look_angles(st, np.concatenate([north, east]))
    assert az[0] == pytest.approx([0.0, 90.0], abs=1e-9)


def test_slant_range_matches_spherical_formula() -> None:
    # domain.md: rho(e) = sqrt((R+h)^2 - R^2 cos^2 e) - R sin e; 1,123.4 km at 25 deg, h=550.
    st = Stations.from_geodetic([0.0], [0.0], [0.0])
    r_site = float(np.linalg.norm(st.positions_ecef_km[0]))
    e = np.radians(25.0)
    rho = np.sqrt((r_site + 550) ** 2 - (r_site * np.cos(e)) ** 2) - r_site * np.sin(e)
    sat = st.positions_ecef_km[0] + rho * (np.cos(e) * st.north[0] + np.sin(e) * st.up[0])
    el, _, rng = look_angles(st, sat[np.newaxis])
    assert el[0, 0] == pytest.approx(25.0, abs=1e-9)
    assert rng[0, 0] == pytest.approx(rho, abs=1e-9)
