"""Orbital geometry: SGP4 propagation, TEME -> Earth-fixed, station look angles, ISL line of sight.

Array conventions (fixed everywhere in orbitmesh):

* positions are ``(..., 3)`` arrays in km, x/y/z on the **last** axis; the leading axes are
  satellites (``S``), then times (``T``) when there are several, e.g. ``(S, T, 3)``;
* look-angle arrays are ``(G, S)`` or ``(G, S, T)``: stations first, satellites second;
* times are UTC Julian dates split as ``jd + fr`` (the sgp4 convention) so that no precision is
  lost; scenario code talks in seconds since the scenario epoch and converts with
  :func:`julian_date`.

Frames: SGP4 returns TEME. We rotate TEME to the pseudo-Earth-fixed frame with GMST (IAU-82,
AIAA 2006-6753 App. C) and treat PEF as ITRF. What that neglects, and what it costs:

* polar motion (x_p, y_p ~ 0.3 arcsec): ~16 m of position error at LEO;
* UT1 - UTC (|dUT1| < 0.9 s): up to 0.9 s of Earth rotation, ~0.4 km at the equator, i.e.
  ~1.4 us of one-way delay. Both are far below what a link emulator can resolve.

Stations are placed on the WGS84 ellipsoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray
from sgp4.api import WGS72, Satrec, SatrecArray, jday

from orbitmesh.errors import GeometryError

FloatArray = NDArray[np.float64]

C_KM_S = 299_792.458
"""Speed of light in vacuum, km/s."""

EARTH_RADIUS_KM = 6378.135
"""Equatorial radius of the WGS72 Earth model that SGP4 uses; also the occlusion sphere."""

WGS72_MU_KM3_S2 = 398_600.8
WGS84_A_KM = 6378.137
WGS84_F = 1.0 / 298.257223563
EARTH_ROTATION_RAD_S = 7.292115146706979e-5
SGP4_EPOCH_JD = 2433281.5
"""SGP4 counts epochs in days since 1949-12-31 00:00 UT."""


def julian_date(when: datetime) -> tuple[float, float]:
    """Split UTC Julian date ``(jd, fr)`` of an aware (or naive-UTC) datetime."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    seconds = when.second + when.microsecond * 1e-6
    return jday(when.year, when.month, when.day, when.hour, when.minute, seconds)


def offsets_to_jd(epoch: datetime, offsets_s: FloatArray | Sequence[float]) -> tuple[FloatArray,
                                                                                     FloatArray]:
    """Julian dates ``(jd, fr)`` for offsets in seconds after ``epoch`` (vectorised)."""
    jd0, fr0 = julian_date(epoch)
    fr = fr0 + np.asarray(offsets_s, dtype=np.float64) / 86400.0
    whole = np.floor(fr)
    return np.full_like(fr, jd0) + whole, fr - whole


def gmst82_rad(jd: FloatArray | float, fr: FloatArray | float) -> FloatArray:
    """Greenwich mean sidereal time (IAU-82, as SGP4 and skyfield use it), radians in [0, 2pi)."""
    jd_arr = np.asarray(jd, dtype=np.float64)
    fr_arr = np.asarray(fr, dtype=np.float64)
    t = (jd_arr - 2451545.0 + fr_arr) / 36525.0
    g = 67310.54841 + (8640184.812866 + (0.093104 + (-6.2e-6) * t) * t) * t
    theta = ((jd_arr % 1.0) + fr_arr + (g / 86400.0) % 1.0) % 1.0
    return np.asarray(theta * 2.0 * np.pi, dtype=np.float64)


def teme_to_ecef(positions_teme_km: FloatArray, jd: FloatArray | float,
                 fr: FloatArray | float) -> FloatArray:
    """Rotate TEME positions ``(..., 3)`` to Earth-fixed (PEF, polar motion neglected).

    ``jd``/``fr`` broadcast against the leading axes without the xyz axis, e.g. a ``(T,)`` time
    vector against ``(S, T, 3)`` positions.
    """
    theta = gmst82_rad(jd, fr)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    r = np.asarray(positions_teme_km, dtype=np.float64)
    out = np.empty_like(r)
    out[..., 0] = cos_t * r[..., 0] + sin_t * r[..., 1]
    out[..., 1] = -sin_t * r[..., 0] + cos_t * r[..., 1]
    out[..., 2] = r[..., 2]
    return out


def geodetic_to_ecef(lat_deg: FloatArray | float, lon_deg: FloatArray | float,
                     alt_km: FloatArray | float) -> FloatArray:
    """WGS84 geodetic coordinates to Earth-fixed positions ``(N, 3)`` in km."""
    lat = np.radians(np.atleast_1d(np.asarray(lat_deg, dtype=np.float64)))
    lon = np.radians(np.atleast_1d(np.asarray(lon_deg, dtype=np.float64)))
    alt = np.atleast_1d(np.asarray(alt_km, dtype=np.float64))
    e2 = WGS84_F * (2.0 - WGS84_F)
    n = WGS84_A_KM / np.sqrt(1.0 - e2 * np.sin(lat) ** 2)
    x = (n + alt) * np.cos(lat) * np.cos(lon)
    y = (n + alt) * np.cos(lat) * np.sin(lon)
    z = (n * (1.0 - e2) + alt) * np.sin(lat)
    return np.stack([x, y, z], axis=-1)


@dataclass(frozen=True)
class Stations:
    """Ground sites in Earth-fixed coordinates with their local east/north/up unit vectors."""

    positions_ecef_km: FloatArray  # (G, 3)
    east: FloatArray  # (G, 3)
    north: FloatArray  # (G, 3)
    up: FloatArray  # (G, 3)

    @classmethod
    def from_geodetic(cls, lat_deg: Sequence[float] | FloatArray,
                      lon_deg: Sequence[float] | FloatArray,
                      alt_km: Sequence[float] | FloatArray) -> Stations:
        """Place sites on the WGS84 ellipsoid (geodetic latitude defines local up)."""
        lat = np.radians(np.asarray(lat_deg, dtype=np.float64).reshape(-1))
        lon = np.radians(np.asarray(lon_deg, dtype=np.float64).reshape(-1))
        pos = geodetic_to_ecef(np.degrees(lat), np.degrees(lon),
                               np.asarray(alt_km, dtype=np.float64).reshape(-1))
        east = np.stack([-np.sin(lon), np.cos(lon), np.zeros_like(lon)], axis=-1)
        north = np.stack([-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)],
                         axis=-1)
        up = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)
        return cls(pos, east, north, up)

    def __len__(self) -> int:
        return int(self.positions_ecef_km.shape[0])


def look_angles(stations: Stations, positions_ecef_km: FloatArray
                ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Elevation (deg), azimuth (deg, from north through east) and range (km).

    ``positions_ecef_km`` is ``(S, 3)`` or ``(S, T, 3)``; results are ``(G, S)`` or ``(G, S, T)``.
    """
    sat = np.asarray(positions_ecef_km, dtype=np.float64)
    extra = sat.ndim - 1  # number of leading satellite/time axes
    shape = (len(stations),) + (1,) * extra + (3,)
    rho = sat[np.newaxis, ...] - stations.positions_ecef_km.reshape(shape)
    range_km = np.linalg.norm(rho, axis=-1)
    up = np.einsum("g...k,gk->g...", rho, stations.up)
    east = np.einsum("g...k,gk->g...", rho, stations.east)
    north = np.einsum("g...k,gk->g...", rho, stations.north)
    elevation_deg = np.degrees(np.arcsin(np.clip(up / range_km, -1.0, 1.0)))
    azimuth_deg = np.degrees(np.arctan2(east, north)) % 360.0
    return elevation_deg, azimuth_deg, range_km


def elevation_deg(stations: Stations, positions_ecef_km: FloatArray) -> FloatArray:
    """Elevation only (cheaper than :func:`look_angles`); shapes as there."""
    sat = np.asarray(positions_ecef_km, dtype=np.float64)
    shape = (len(stations),) + (1,) * (sat.ndim - 1) + (3,)
    rho = sat[np.newaxis, ...] - stations.positions_ecef_km.reshape(shape)
    range_km = np.linalg.norm(rho, axis=-1)
    up = np.einsum("g...k,gk->g...", rho, stations.up)
    return np.asarray(np.degrees(np.arcsin(np.clip(up / range_km, -1.0, 1.0))), dtype=np.float64)


def line_of_sight_clear(a_km: FloatArray, b_km: FloatArray,
                        clearance_radius_km: float) -> NDArray[np.bool_]:
    """True where segment a->b stays outside a sphere of ``clearance_radius_km`` (rows ``(K, 3)``).

    The closest point of the segment to Earth's centre is ``a + t*(b-a)`` with
    ``t = clamp(-a.(b-a)/|b-a|^2, 0, 1)``; the link is blocked when that point is inside the
    sphere (Earth plus the grazing margin).
    """
    a = np.asarray(a_km, dtype=np.float64)
    d = np.asarray(b_km, dtype=np.float64) - a
    dd = np.einsum("...k,...k->...", d, d)
    t = np.clip(-np.einsum("...k,...k->...", a, d) / np.where(dd > 0, dd, 1.0), 0.0, 1.0)
    closest = a + t[..., np.newaxis] * d
    return np.asarray(np.einsum("...k,...k->...", closest, closest) >= clearance_radius_km ** 2)


def max_isl_range_km(altitude_km: float, margin_km: float) -> float:
    """Longest unobstructed link between two satellites at the same altitude."""
    r = EARTH_RADIUS_KM + altitude_km
    return float(2.0 * np.sqrt(r * r - (EARTH_RADIUS_KM + margin_km) ** 2))


def mean_motion_rad_min(altitude_km: float) -> float:
    """Kozai mean motion of a circular orbit at ``altitude_km`` (WGS72), rad/min."""
    return float(np.sqrt(WGS72_MU_KM3_S2 / (EARTH_RADIUS_KM + altitude_km) ** 3) * 60.0)


def walker_satrecs(*, epoch: datetime, total: int, planes: int, phasing: int,
                   inclination_deg: float, altitude_km: float, pattern: str = "delta",
                   first_satnum: int = 1, raan_offset_deg: float = 0.0) -> list[Satrec]:
    """Circular Walker i:T/P/F shell as SGP4 elements, plane-major (plane k, then slot j).

    Plane k has RAAN k*360/P (delta) or k*180/P (star); slot j of plane k has mean anomaly
    j*360/S + k*F*360/T with S = T/P.
    """
    if total % planes:
        raise GeometryError(f"Walker shell: {total} satellites do not split into {planes} planes")
    per_plane = total // planes
    spread_deg = 360.0 if pattern == "delta" else 180.0
    jd, fr = julian_date(epoch)
    epoch_days = jd - SGP4_EPOCH_JD + fr
    n = mean_motion_rad_min(altitude_km)
    sats: list[Satrec] = []
    for k in range(planes):
        raan = np.radians((raan_offset_deg + k * spread_deg / planes) % 360.0)
        for j in range(per_plane):
            mean_anomaly = np.radians((j * 360.0 / per_plane + k * phasing * 360.0 / total) % 360.0)
            sat = Satrec()
            sat.sgp4init(WGS72, "i", first_satnum + k * per_plane + j, epoch_days, 0.0, 0.0, 0.0,
                         0.0, 0.0, np.radians(inclination_deg), mean_anomaly, n, raan)
            sats.append(sat)
    return sats


class Propagator:
    """All satellites of a scenario, propagated together with one ``SatrecArray`` call."""

    def __init__(self, satrecs: Sequence[Satrec]) -> None:
        if not satrecs:
            raise GeometryError("nothing to propagate: the scenario has no satellites")
        self.satrecs = tuple(satrecs)  # one at a time: the pass search's sparse propagation
        self._array = SatrecArray(list(satrecs))
        self.count = len(satrecs)

    def teme_km(self, jd: FloatArray, fr: FloatArray) -> tuple[FloatArray, NDArray[np.uint8]]:
        """TEME positions ``(S, T, 3)`` and SGP4 error codes ``(S, T)`` at times ``(T,)``."""
        err, r, _v = self._array.sgp4(np.atleast_1d(jd), np.atleast_1d(fr))
        return r, err

    def teme_state_km(self, jd: FloatArray, fr: FloatArray
                      ) -> tuple[FloatArray, FloatArray, NDArray[np.uint8]]:
        """TEME positions ``(S, T, 3)``, velocities ``(S, T, 3)`` in km/s and error codes."""
        err, r, v = self._array.sgp4(np.atleast_1d(jd), np.atleast_1d(fr))
        return r, v, err

    def ecef_km(self, jd: FloatArray | float, fr: FloatArray | float) -> FloatArray:
        """Earth-fixed positions ``(S, T, 3)``; failed satellites come back as NaN rows."""
        jd_a, fr_a = np.atleast_1d(jd), np.atleast_1d(fr)
        r, _err = self.teme_km(jd_a, fr_a)
        return teme_to_ecef(r, jd_a, fr_a)

    def ecef_at(self, jd: float, fr: float) -> FloatArray:
        """Earth-fixed positions ``(S, 3)`` at a single time."""
        return self.ecef_km(np.array([jd]), np.array([fr]))[:, 0, :]
