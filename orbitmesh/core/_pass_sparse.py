"""The pass search's grid positions with SGP4 run only where a pass can use them.

SGP4 is most of the pass search's time, and most of its samples decide nothing: a LEO satellite
spends most of a day far below every station's mask. A chunk of the grid is propagated like
this (near-Earth orbits; the others get SGP4 at every sample, as before):

1. SGP4 at every ``KNOT_EVERY``-th grid sample (the *knots*), positions and velocities;
2. the samples between are cubic Hermite curves through the knots (as in
   :mod:`orbitmesh.core._pass_hermite`), off by up to ~2 km at LEO with knots 8 minutes
   apart (1.7 km measured at 300 km altitude, less higher up);
3. the screen (:mod:`orbitmesh.core._pass_screen`) picks each block's candidate pairs from
   those positions, and every sample of a candidate pair where the satellite is within the
   station's horizon cap plus a margin is *near* (a pair with no near sample in a block has no
   events there, so the scan skips it);
4. SGP4 runs again at every sample within two samples of a near one, and those exact positions
   replace the interpolated ones.

Why the passes are the same bits as with SGP4 everywhere: every value the search reports comes
from a stencil of samples around a grid sample where some station sees the satellite above its
mask (a rise or set: the sample above the mask and its neighbours, four points; a culmination:
the sample nearest the top, within a step of it, and two on either side). Such a sample is
within the horizon cap ``lambda`` of that station (the mask less 0.2 deg of geodetic-vs-radial
up), a culmination's sample within ``lambda`` plus one step of motion; the near test adds that
step (1.25 x the largest chord of the chunk over its least radius), 0.5 deg, and the
interpolation's own error (4 x ``h**4 / 384 * r * n**4``, at least 10 km) on top, and
the two-sample dilation covers the stencils. So every stencil the search refines holds SGP4's
own samples, rotated by the same arithmetic. The interpolated samples only ever answer "below
the mask" (by degrees), and feed bounds that keep degrees of slack (the screen's reach, the
peak floors of :mod:`orbitmesh.core._pass_kernel`): a km or two of error is ~0.02 deg.
Satellites that SGP4 fails for at a knot, orbits below 200 km, eccentric (e > 0.1) and
deep-space ones are propagated at every sample. ``tests/test_pass_sparse.py`` checks the bits.

Arrays: ``(S, T, 3)`` satellites, chunk samples, xyz (Earth-fixed km); ``(S, T)`` flags.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
from numba import njit
from numpy.typing import NDArray

from orbitmesh.core._pass_hermite import knots
from orbitmesh.core.geometry import (
    EARTH_RADIUS_KM,
    EARTH_ROTATION_RAD_S,
    FloatArray,
    Propagator,
    gmst82_rad,
    offsets_to_jd,
)

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

KNOT_EVERY = 16
"""Grid samples per interpolated segment (8 minutes on the 30 s grid)."""
DILATE_SAMPLES = 2  # the widest stencil reaches two samples from the sample that anchors it
_MAX_ECCENTRICITY = 0.1
_MIN_RADIUS_KM = EARTH_RADIUS_KM + 200.0
_MIN_APPROX_ERROR_KM = 10.0
_RATE_SAFETY = 1.25
_MARGIN_RAD = math.radians(0.5)
_GEODETIC_UP_RAD = math.radians(0.2)


@njit(cache=True, nogil=True)
def _rotate_into(out: FloatArray, s: int, t: int, x: float, y: float, z: float, c: float,
                 sn: float) -> None:
    # The arithmetic of geometry.teme_to_ecef, term by term, so the bits are the same.
    out[s, t, 0] = c * x + sn * y
    out[s, t, 1] = (-sn) * x + c * y
    out[s, t, 2] = z


@njit(cache=True, nogil=True)
def fill_interpolated(out: FloatArray, r_k: FloatArray, v_k: FloatArray, knot_idx: IntArray,
                      lo: int, step_s: float, cos_t: FloatArray, sin_t: FloatArray,
                      fill: BoolArray) -> None:
    """Earth-fixed cubic Hermite positions of the ``fill`` satellites at every chunk sample."""
    n_t = out.shape[1]
    seg = np.empty(n_t, np.int64)
    m = 0
    for t in range(n_t):
        while m + 2 < len(knot_idx) and knot_idx[m + 1] <= lo + t:
            m += 1
        seg[t] = m
    for s in range(out.shape[0]):
        if not fill[s]:
            continue
        for t in range(n_t):
            m = seg[t]
            k0, k1 = knot_idx[m], knot_idx[m + 1]
            tau = (lo + t - k0) / (k1 - k0)
            h = (k1 - k0) * step_s
            tau2, tau3 = tau * tau, tau * tau * tau
            a0, b0 = 2.0 * tau3 - 3.0 * tau2 + 1.0, (tau3 - 2.0 * tau2 + tau) * h
            a1, b1 = -2.0 * tau3 + 3.0 * tau2, (tau3 - tau2) * h
            r0, v0, r1, v1 = r_k[s, m], v_k[s, m], r_k[s, m + 1], v_k[s, m + 1]
            x = a0 * r0[0] + b0 * v0[0] + a1 * r1[0] + b1 * v1[0]
            y = a0 * r0[1] + b0 * v0[1] + a1 * r1[1] + b1 * v1[1]
            z = a0 * r0[2] + b0 * v0[2] + a1 * r1[2] + b1 * v1[2]
            _rotate_into(out, s, t, x, y, z, cos_t[t], sin_t[t])


@njit(cache=True, nogil=True)
def put_exact(out: FloatArray, s_of: IntArray, t_of: IntArray, r: FloatArray, err: NDArray,
              cos_t: FloatArray, sin_t: FloatArray) -> None:
    """SGP4's TEME positions ``r (N, 3)`` rotated into ``out[s_of, t_of]``; NaN where it failed."""
    for i in range(len(s_of)):
        s, t = s_of[i], t_of[i]
        if err[i] != 0:
            out[s, t, 0] = out[s, t, 1] = out[s, t, 2] = np.nan
        else:
            _rotate_into(out, s, t, r[i, 0], r[i, 1], r[i, 2], cos_t[t], sin_t[t])


@njit(cache=True, nogil=True)
def chunk_bounds(pos: FloatArray, v_k: FloatArray, knot_idx: IntArray, step_s: float
                 ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per satellite: unit vectors ``(S, T, 3)``, the largest radius (km) and the near test's
    margin (rad) in the chunk.

    The margin is one step of motion (``_RATE_SAFETY`` x the largest chord over the least
    radius), ``_MARGIN_RAD``, and the interpolation's error over the least radius: cubic
    Hermite is off by at most ``h**4 / 384 * max|r|``, and ``|r|`` is ``r n**4`` on a
    circular orbit (``n`` the angular rate, bounded by the fastest speed over the least radius
    plus the Earth's rotation); four times that, and never less than 10 km.
    """
    n_s, n_t = pos.shape[0], pos.shape[1]
    unit = np.empty_like(pos)
    r_max = np.zeros(n_s)
    margin = np.zeros(n_s)
    h_s = (knot_idx[1] - knot_idx[0]) * step_s if len(knot_idx) > 1 else step_s
    for s in range(n_s):
        r_lo, chord = np.inf, 0.0
        for t in range(n_t):
            x, y, z = pos[s, t, 0], pos[s, t, 1], pos[s, t, 2]
            r = math.sqrt(x * x + y * y + z * z)
            unit[s, t, 0], unit[s, t, 1], unit[s, t, 2] = x / r, y / r, z / r
            r_max[s] = max(r_max[s], r)
            r_lo = min(r_lo, r)
            if t > 0:
                dx, dy, dz = x - pos[s, t - 1, 0], y - pos[s, t - 1, 1], z - pos[s, t - 1, 2]
                chord = max(chord, math.sqrt(dx * dx + dy * dy + dz * dz))
        v_top = 0.0
        for k in range(v_k.shape[1]):
            v_top = max(v_top, math.sqrt(v_k[s, k, 0] ** 2 + v_k[s, k, 1] ** 2
                                         + v_k[s, k, 2] ** 2))
        n_rad_s = v_top / r_lo + EARTH_ROTATION_RAD_S
        approx_km = max(_MIN_APPROX_ERROR_KM, 4.0 * h_s ** 4 / 384.0 * r_max[s] * n_rad_s ** 4)
        margin[s] = _RATE_SAFETY * chord / r_lo + _MARGIN_RAD + approx_km / r_lo
        r_max[s] += approx_km
    return unit, r_max, margin


@njit(cache=True, nogil=True)
def mark_near(near: BoolArray, unit: FloatArray, pg: IntArray, ps: IntArray, t0: int, t1: int,
              site_unit: FloatArray, site_km: FloatArray, masks_deg: FloatArray,
              r_max: FloatArray, margin: FloatArray, eligible: BoolArray) -> BoolArray:
    """Flag samples ``t0 .. t1 - 1`` where a pair's satellite is within its station's reach;
    returns which pairs have such a sample (all pairs of satellites propagated everywhere)."""
    seen = np.zeros(len(pg), np.bool_)
    for p in range(len(pg)):
        g, s = pg[p], ps[p]
        if not eligible[s]:
            seen[p] = True
            continue
        e = math.radians(masks_deg[g]) - _GEODETIC_UP_RAD
        q = site_km[g] * math.cos(e) / r_max[s]
        if q >= 1.0:
            continue
        reach = math.acos(max(q, -1.0)) - e + margin[s]
        if reach <= 0.0:
            continue
        cos_reach = math.cos(min(reach, math.pi))
        u0, u1, u2 = site_unit[g, 0], site_unit[g, 1], site_unit[g, 2]
        for t in range(t0, t1):
            if unit[s, t, 0] * u0 + unit[s, t, 1] * u1 + unit[s, t, 2] * u2 >= cos_reach:
                near[s, t] = True
                seen[p] = True
    return seen


@njit(cache=True, nogil=True)
def exact_samples(near: BoolArray, exact: BoolArray, dilate: int, everywhere: BoolArray
                  ) -> tuple[IntArray, IntArray, IntArray]:
    """Samples still to propagate: near ones widened by ``dilate``, all of ``everywhere``
    satellites, none already ``exact``. Returns per-satellite offsets and flat (s, t)."""
    n_s, n_t = near.shape
    want = np.zeros(n_t, np.bool_)
    offsets = np.zeros(n_s + 1, np.int64)
    s_of = np.empty(n_s * n_t, np.int64)
    t_of = np.empty(n_s * n_t, np.int64)
    n = 0
    for s in range(n_s):
        want[:] = everywhere[s]
        if not everywhere[s]:
            for t in range(n_t):
                if near[s, t]:
                    for u in range(max(0, t - dilate), min(n_t, t + dilate + 1)):
                        want[u] = True
        for t in range(n_t):
            if want[t] and not exact[s, t]:
                s_of[n], t_of[n] = s, t
                n += 1
        offsets[s + 1] = n
    return offsets, s_of[:n], t_of[:n]


class SparseChunk:
    """One chunk's positions: interpolated first, then SGP4 wherever :meth:`refine` asks."""

    def __init__(self, propagator: Propagator, ref: datetime, grid_s: FloatArray, lo: int,
                 hi: int) -> None:
        self.propagator, self.lo = propagator, lo
        n_s, n_t = propagator.count, hi - lo
        self.jd, self.fr = offsets_to_jd(ref, grid_s[lo:hi])
        # The rotation's angles for exactly these columns, as teme_to_ecef computes them.
        theta = gmst82_rad(self.jd, self.fr)
        self.cos_t, self.sin_t = np.cos(theta), np.sin(theta)
        step_s = float(grid_s[1] - grid_s[0]) if len(grid_s) > 1 else 0.0
        idx = np.asarray(knots(len(grid_s), KNOT_EVERY, lo, hi), dtype=np.int64)
        r_k, v_k, err_k = propagator.teme_state_km(*offsets_to_jd(ref, grid_s[idx]))
        radius_k = np.linalg.norm(r_k, axis=-1)
        sats = propagator.satrecs
        self.eligible = np.fromiter(
            ((sat.method == "n" and sat.ecco <= _MAX_ECCENTRICITY) for sat in sats), bool,
            count=n_s) & (err_k == 0).all(axis=1) & (radius_k.min(axis=1) >= _MIN_RADIUS_KM) \
            if len(idx) > 1 else np.zeros(n_s, bool)
        self.pos = np.empty((n_s, n_t, 3))
        if len(idx) > 1:
            fill_interpolated(self.pos, r_k, v_k, idx, lo, step_s, self.cos_t, self.sin_t,
                              self.eligible)
        self.exact = np.zeros((n_s, n_t), bool)
        inside = (idx >= lo) & (idx < hi)
        cols = idx[inside] - lo
        s_of = np.repeat(np.arange(n_s, dtype=np.int64), len(cols))
        t_of = np.tile(cols, n_s)
        put_exact(self.pos, s_of, t_of, np.ascontiguousarray(r_k[:, inside].reshape(-1, 3)),
                  np.ascontiguousarray(err_k[:, inside].reshape(-1)), self.cos_t, self.sin_t)
        self.exact[:, cols] = True
        self.near = np.zeros((n_s, n_t), bool)
        # Satellites the interpolation does not serve are exact everywhere before any screen.
        self._propagate(self.near, ~self.eligible)
        self.unit, self.r_max, self.margin = chunk_bounds(self.pos, v_k, idx, step_s)

    def mark(self, pg: IntArray, ps: IntArray, t0: int, t1: int, site_unit: FloatArray,
             site_km: FloatArray, masks_deg: FloatArray) -> tuple[IntArray, IntArray]:
        """Flag the near samples of screened pairs ``(pg, ps)`` in chunk samples ``t0 .. t1``;
        the pairs that have one (the others have no events there)."""
        seen = mark_near(self.near, self.unit, pg, ps, t0, t1, site_unit, site_km, masks_deg,
                         self.r_max, self.margin, self.eligible)
        return pg[seen], ps[seen]

    def refine(self) -> FloatArray:
        """SGP4 at every sample within reach of a flagged one; the chunk's final positions."""
        del self.unit  # the near test is done; a worker's peak memory is here
        self._propagate(self.near, np.zeros(len(self.eligible), bool))
        return self.pos

    def _propagate(self, near: BoolArray, everywhere: BoolArray) -> None:
        offsets, s_of, t_of = exact_samples(near, self.exact, DILATE_SAMPLES, everywhere)
        if not len(s_of):
            return
        jd, fr = self.jd[t_of], self.fr[t_of]
        r = np.empty((len(s_of), 3))
        err = np.empty(len(s_of), np.uint8)
        sats = self.propagator.satrecs
        ends = offsets.tolist()
        for s in np.flatnonzero(np.diff(offsets)).tolist():
            a, b = ends[s], ends[s + 1]
            err[a:b], r[a:b], _v = sats[s].sgp4_array(jd[a:b], fr[a:b])
        put_exact(self.pos, s_of, t_of, r, err, self.cos_t, self.sin_t)
        self.exact[s_of, t_of] = True
