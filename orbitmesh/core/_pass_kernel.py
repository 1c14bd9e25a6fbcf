"""The compiled inner loop of the pass search (numba): elevations, events and their refinement.

:mod:`orbitmesh.core.passes` explains the method; this is its scan of one screened block, one
(station, satellite) pair at a time, so that no ``(pairs, times)`` temporaries are built beyond
the elevation table itself. It computes what the numpy version did, in the same order of
operations (Lagrange stencils as power series from the same basis matrices, Horner evaluation,
bisection in the sine of the elevation, golden-section search), so results agree to the last
bits in all but knife-edge comparisons.

Imported only when passes are first searched, so that processes which never search do not load
numba. Arrays: ``pos_km (S, T, 3)`` Earth-fixed samples of the block; ``pg, ps (P,)`` station
and satellite of each screened pair; the answers are flat event arrays.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
ScanResult = tuple[IntArray, FloatArray, BoolArray, FloatArray, IntArray, FloatArray, FloatArray,
                   FloatArray, BoolArray, BoolArray]

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0
_PEAK_MARGIN_DEG = 45.0  # local maxima further below the mask than this cannot become passes
_PEAK_SPEED_SAFETY = 1.25  # speed varies within a step (eccentric orbits); bound it loosely
_PEAK_SLACK_DEG = 0.5
_DEG_PER_RAD = 180.0 / math.pi


@njit(cache=True, nogil=True, inline="always")
def _sin_el(coef: FloatArray, n: int, x: float) -> tuple[float, float]:
    """Sine of the elevation and range (km) at ``x`` from power coefficients ``coef (n, 4)``."""
    v0, v1, v2, u = coef[n - 1, 0], coef[n - 1, 1], coef[n - 1, 2], coef[n - 1, 3]
    for m in range(n - 2, -1, -1):
        v0 = v0 * x + coef[m, 0]
        v1 = v1 * x + coef[m, 1]
        v2 = v2 * x + coef[m, 2]
        u = u * x + coef[m, 3]
    range_km = math.sqrt(v0 * v0 + v1 * v1 + v2 * v2)
    return u / range_km, range_km


@njit(cache=True, nogil=True, inline="always")
def _elevation_deg(sin_el: float) -> float:
    if math.isnan(sin_el):  # as numpy's clip and arcsin: NaN stays NaN
        return math.nan
    return math.asin(min(max(sin_el, -1.0), 1.0)) * _DEG_PER_RAD


@njit(cache=True, nogil=True, inline="always")
def _poly(coef: FloatArray, basis: FloatArray, pos_km: FloatArray, s: int, j0: int,
          sites: FloatArray, ups: FloatArray, g: int) -> None:
    """Fill ``coef (n, 4)``: station->satellite interpolant (xyz) and its component along up."""
    n = basis.shape[0]
    for m in range(n):
        for c in range(3):
            acc = 0.0
            for j in range(n):
                acc += basis[m, j] * pos_km[s, j0 + j, c]
            coef[m, c] = acc
    for c in range(3):
        coef[0, c] -= sites[g, c]
    for m in range(n):
        coef[m, 3] = coef[m, 0] * ups[g, 0] + coef[m, 1] * ups[g, 1] + coef[m, 2] * ups[g, 2]


@njit(cache=True, nogil=True, inline="always")
def _bisect(coef: FloatArray, n: int, lo: float, hi: float, rising: bool, sin_mask: float,
            iterations: int) -> tuple[float, float]:
    """Mask crossing in ``[lo, hi]`` (below->above if ``rising``): x and range."""
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if (_sin_el(coef, n, mid)[0] >= sin_mask) == rising:
            hi = mid
        else:
            lo = mid
    x = 0.5 * (lo + hi)
    return x, _sin_el(coef, n, x)[1]


@njit(cache=True, nogil=True, inline="always")
def _maximise(coef: FloatArray, n: int, iterations: int) -> tuple[float, float, float]:
    """Golden-section search of the elevation maximum in ``[-1, 1]``: x, elevation, range."""
    lo, hi = -1.0, 1.0
    c, d = hi - _INV_PHI * (hi - lo), lo + _INV_PHI * (hi - lo)
    fc, fd = _sin_el(coef, n, c)[0], _sin_el(coef, n, d)[0]
    for _ in range(iterations):
        if fc > fd:
            hi = d
            new_x = hi - _INV_PHI * (hi - lo)
            new_f = _sin_el(coef, n, new_x)[0]
            c, d, fc, fd = new_x, c, new_f, fc
        else:
            lo = c
            new_x = lo + _INV_PHI * (hi - lo)
            new_f = _sin_el(coef, n, new_x)[0]
            c, d, fc, fd = d, new_x, fd, new_f
    x = 0.5 * (lo + hi)
    sin_x, range_km = _sin_el(coef, n, x)
    return x, _elevation_deg(sin_x), range_km


@njit(cache=True, nogil=True)
def _sines(pos_km: FloatArray, sites: FloatArray, ups: FloatArray, pg: IntArray, ps: IntArray
           ) -> FloatArray:
    """Sine of the elevation of every pair at every sample; -2 where SGP4 failed.

    The search compares sines with the sine of the mask instead of angles with the mask (the
    sine is monotonic in the elevation): no arcsine per sample.
    """
    n_t = pos_km.shape[1]
    f = np.empty((len(pg), n_t))
    for p in range(len(pg)):
        g, s = pg[p], ps[p]
        for t in range(n_t):
            r0 = pos_km[s, t, 0] - sites[g, 0]
            r1 = pos_km[s, t, 1] - sites[g, 1]
            r2 = pos_km[s, t, 2] - sites[g, 2]
            sin_el = (r0 * ups[g, 0] + r1 * ups[g, 1] + r2 * ups[g, 2]) / math.sqrt(
                r0 * r0 + r1 * r1 + r2 * r2)
            f[p, t] = -2.0 if math.isnan(sin_el) else sin_el  # failed: below every mask
    return f


@njit(cache=True, nogil=True)
def _peak_floors(pos_km: FloatArray, sites: FloatArray, masks_deg: FloatArray, pg: IntArray,
                 ps: IntArray) -> FloatArray:
    """Per pair, the sine of elevation at or below which a sampled maximum cannot be a pass.

    A pass's top lies within half a step of a sample, and the line of sight turns at most
    ``speed / range`` radians a second, so the sample is at most ``speed * step / 2 / range``
    below the top. Speed is bounded by the largest chord between samples (times
    ``_PEAK_SPEED_SAFETY``), range by the satellite's least radius (less a chord, for the dip
    between samples) minus the site's radius; ``_PEAK_SLACK_DEG`` covers the interpolant the
    refinement uses. Never looser than ``_PEAK_MARGIN_DEG`` below the mask, as before.
    """
    n_sats, n_t = pos_km.shape[0], pos_km.shape[1]
    chord = np.zeros(n_sats)
    r_min = np.full(n_sats, np.inf)
    for s in range(n_sats):
        for t in range(n_t):
            x, y, z = pos_km[s, t, 0], pos_km[s, t, 1], pos_km[s, t, 2]
            r_min[s] = min(r_min[s], math.sqrt(x * x + y * y + z * z))
            if t > 0:
                dx, dy, dz = x - pos_km[s, t - 1, 0], y - pos_km[s, t - 1, 1], \
                    z - pos_km[s, t - 1, 2]
                chord[s] = max(chord[s], math.sqrt(dx * dx + dy * dy + dz * dz))
    floor = np.empty(len(pg))
    for p in range(len(pg)):
        g, s = pg[p], ps[p]
        margin_deg = _PEAK_MARGIN_DEG
        low_r = r_min[s] * r_min[s] - chord[s] * chord[s]
        site_r = math.sqrt(sites[g, 0] ** 2 + sites[g, 1] ** 2 + sites[g, 2] ** 2)
        if low_r > 0.0 and math.isfinite(low_r) and math.isfinite(chord[s]):
            range_km = math.sqrt(low_r) - site_r
            if range_km > 0.0:
                turn_deg = _PEAK_SPEED_SAFETY * 0.5 * chord[s] / range_km * _DEG_PER_RAD
                margin_deg = min(margin_deg, turn_deg + _PEAK_SLACK_DEG)
        low_deg = masks_deg[g] - margin_deg
        floor[p] = math.sin(math.radians(low_deg)) if low_deg > -90.0 else -1.5
    return floor


@njit(cache=True, nogil=True)
def scan_block(pos_km: FloatArray, sites: FloatArray, ups: FloatArray, masks_deg: FloatArray,
               sin_masks: FloatArray, pg: IntArray, ps: IntArray, grid_s: FloatArray,
               step_s: float, lo: int, a: int, b: int, n_cross: int, n_golden: int,
               cross_basis: FloatArray, peak_basis: FloatArray) -> ScanResult:
    """Events of pairs (``pg``, ``ps``) in samples ``lo..`` of ``pos_km``; owns [a, b).

    Returns ``(cross_key, cross_t, cross_rising, cross_range, peak_key, peak_t, peak_el,
    peak_range, up_first, up_last)``; keys are ``station * S + satellite``.
    """
    n_sats, n_t = pos_km.shape[0], pos_km.shape[1]
    f = _sines(pos_km, sites, ups, pg, ps)
    floor = _peak_floors(pos_km, sites, masks_deg, pg, ps)
    ja, jb = a - lo, b - lo
    jm = max(a, 2) - lo
    n_pairs = len(pg)
    n_cross_ev, n_peak_ev = 0, 0
    for p in range(n_pairs):
        g = pg[p]
        for j in range(ja, jb):
            if (f[p, j] >= sin_masks[g]) != (f[p, j + 1] >= sin_masks[g]):
                n_cross_ev += 1
        for j in range(jm, jb):
            if f[p, j] > f[p, j - 1] and f[p, j + 1] <= f[p, j] and f[p, j] > floor[p]:
                n_peak_ev += 1
    c_key = np.empty(n_cross_ev + 2 * n_peak_ev, np.int64)
    c_t = np.empty(n_cross_ev + 2 * n_peak_ev)
    c_rise = np.empty(n_cross_ev + 2 * n_peak_ev, np.bool_)
    c_rng = np.empty(n_cross_ev + 2 * n_peak_ev)
    p_key = np.empty(n_peak_ev, np.int64)
    p_t = np.empty(n_peak_ev)
    p_el = np.empty(n_peak_ev)
    p_rng = np.empty(n_peak_ev)
    up_first = np.empty(n_pairs, np.bool_)
    up_last = np.empty(n_pairs, np.bool_)
    j_first, j_last = max(0, 1 - lo), min(n_t - 1, len(grid_s) - 2 - lo)
    coef = np.empty((5, 4))
    nc, npk = 0, 0
    for p in range(n_pairs):
        g, s = pg[p], ps[p]
        key = g * n_sats + s
        sin_mask = sin_masks[g]
        up_first[p] = f[p, j_first] >= sin_mask
        up_last[p] = f[p, j_last] >= sin_mask
        for j in range(ja, jb):
            above_0, above_1 = f[p, j] >= sin_mask, f[p, j + 1] >= sin_mask
            if above_0 == above_1:
                continue
            _poly(coef, cross_basis, pos_km, s, j - 1, sites, ups, g)
            x, rng = _bisect(coef, 4, 0.0, 1.0, above_1, sin_mask, n_cross)
            c_key[nc], c_t[nc], c_rise[nc], c_rng[nc] = key, grid_s[j + lo] + x * step_s, \
                above_1, rng
            nc += 1
        for j in range(jm, jb):
            centre = f[p, j]
            if not (centre > f[p, j - 1] and f[p, j + 1] <= centre and centre > floor[p]):
                continue
            _poly(coef, peak_basis, pos_km, s, j - 2, sites, ups, g)
            x, el, rng = _maximise(coef, 5, n_golden)
            sin_0, rng_0 = _sin_el(coef, 5, 0.0)
            el_0 = _elevation_deg(sin_0)
            if not el >= el_0:  # never report less than the sample itself
                x, el, rng = 0.0, el_0, rng_0
            if not el >= masks_deg[g]:  # a maximum below the mask is in no pass
                continue
            t0 = grid_s[j + lo]
            p_key[npk], p_t[npk], p_el[npk], p_rng[npk] = key, t0 + x * step_s, el, rng
            npk += 1
            if centre < sin_mask:  # above the mask between samples below it: a pass inside 2 steps
                xr, rr = _bisect(coef, 5, -1.0, x, True, sin_mask, n_cross + 1)
                xs, rs = _bisect(coef, 5, x, 1.0, False, sin_mask, n_cross + 1)
                c_key[nc], c_t[nc], c_rise[nc], c_rng[nc] = key, t0 + xr * step_s, True, rr
                c_key[nc + 1], c_t[nc + 1], c_rise[nc + 1], c_rng[nc + 1] = \
                    key, t0 + xs * step_s, False, rs
                nc += 2
    return (c_key[:nc], c_t[:nc], c_rise[:nc], c_rng[:nc], p_key[:npk], p_t[:npk], p_el[:npk],
            p_rng[:npk], up_first, up_last)




@njit(cache=True, nogil=True)
def screen_block(pos_km: FloatArray, site_km: FloatArray, site_unit: FloatArray,
                 masks_deg: FloatArray, half_span: int, rate_safety: float,
                 margin_rad: float) -> tuple[IntArray, IntArray]:
    """:func:`orbitmesh.core._pass_screen.candidate_pairs`, compiled (same rule, one pass)."""
    n_sats, n_t = pos_km.shape[0], pos_km.shape[1]
    n_gs = len(site_km)
    checks = list(range(min(half_span, n_t - 1), n_t, 2 * half_span + 1))
    if checks[-1] + half_span < n_t - 1:
        checks.append(n_t - 1)
    n_c = len(checks)
    unit = np.zeros((n_sats, n_c, 3))  # NaN samples count as the zero vector, as nan_to_num
    rate = np.zeros(n_sats)
    r_max = np.zeros(n_sats)
    broken = np.zeros(n_sats, np.bool_)
    for s in range(n_sats):
        prev0 = prev1 = prev2 = 0.0
        # arccos is decreasing: the largest step angle is the arccos of the smallest cosine,
        # so one arccos a satellite, not one a sample.
        cos_min = 2.0
        for t in range(n_t):
            x, y, z = pos_km[s, t, 0], pos_km[s, t, 1], pos_km[s, t, 2]
            r = math.sqrt(x * x + y * y + z * z)
            if not math.isfinite(r):
                broken[s] = True
                continue
            r_max[s] = max(r_max[s], r)
            u0, u1, u2 = x / r, y / r, z / r
            if t > 0 and math.isfinite(prev0):
                cos_min = min(cos_min, max(u0 * prev0 + u1 * prev1 + u2 * prev2, -1.0), 1.0)
            prev0, prev1, prev2 = u0, u1, u2
            for c in range(n_c):
                if checks[c] == t:
                    unit[s, c, 0], unit[s, c, 1], unit[s, c, 2] = u0, u1, u2
        if cos_min <= 1.0:
            rate[s] = math.acos(cos_min)
    # The loosest reach of any satellite: a pair farther than that from every check sample is
    # out without its own arccos and cosine (most pairs are; the kept set is the same).
    r_top, rate_top = 0.0, 0.0
    for s in range(n_sats):
        r_top = max(r_top, r_max[s])
        rate_top = max(rate_top, rate[s])
    g_out = np.empty(n_gs * n_sats, np.int64)
    s_out = np.empty(n_gs * n_sats, np.int64)
    n = 0
    for g in range(n_gs):
        e = math.radians(masks_deg[g] - 0.2)
        cos_e = math.cos(e)
        cos_loose = -1.0
        if r_top > 0.0 and site_km[g] * cos_e / r_top < 1.0:
            loose = math.acos(max(site_km[g] * cos_e / r_top, -1.0)) - e + rate_safety * (
                rate_top * (half_span + 1)) + margin_rad
            # A hair looser than the exact rule computes it, so rounding cannot drop a pair.
            cos_loose = math.cos(min(loose + 1e-9, math.pi)) if loose > 0.0 else 2.0
        for s in range(n_sats):
            keep = broken[s]
            if not keep and r_max[s] > 0.0:
                near = False
                for c in range(n_c):
                    if (site_unit[g, 0] * unit[s, c, 0] + site_unit[g, 1] * unit[s, c, 1]
                            + site_unit[g, 2] * unit[s, c, 2]) >= cos_loose:
                        near = True
                        break
                ratio = site_km[g] * cos_e / r_max[s]
                if near and ratio < 1.0:
                    reach = math.acos(max(ratio, -1.0)) - e + rate_safety * rate[s] * (
                        half_span + 1) + margin_rad
                    if reach > 0.0:
                        cos_reach = math.cos(min(reach, math.pi))
                        for c in range(n_c):
                            if (site_unit[g, 0] * unit[s, c, 0] + site_unit[g, 1] * unit[s, c, 1]
                                    + site_unit[g, 2] * unit[s, c, 2]) >= cos_reach:
                                keep = True
                                break
            if keep:
                g_out[n], s_out[n] = g, s
                n += 1
    return g_out[:n], s_out[:n]


def warm_up(cross_basis: FloatArray, peak_basis: FloatArray) -> None:
    """Load (or compile) :func:`scan_block` for the argument types the search passes."""
    pos = np.zeros((1, 6, 3))
    pos[0, :, 0] = 7000.0
    one = np.zeros((1, 3))
    pair = np.zeros(1, np.int64)
    scan_block(pos, one, one, np.zeros(1), np.zeros(1), pair, pair, np.arange(6.0), 30.0, 0,
               2, 4, 1, 1, cross_basis, peak_basis)
    screen_block(pos, np.ones(1), one, np.zeros(1), 6, 1.25, 0.01)
