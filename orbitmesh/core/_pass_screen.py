"""Screening for the pass search: which (station, satellite) pairs can see each other at all.

Over a short block of samples most pairs are on opposite sides of the Earth. A satellite at
radius ``r`` is above elevation ``e`` of a station at geocentric radius ``R`` only while the
geocentric angle between them is at most ``lambda = arccos(R cos(e) / r) - e`` (the horizon cap).
The angle is measured at a few check samples; between them it changes by at most the
satellite's angular rate times the distance to the nearest check sample. A pair whose angle
stays beyond ``lambda`` plus that motion plus a margin (geodetic up is up to 0.2 deg from the
geocentric radial) cannot reach its mask anywhere in the block, so the search skips it. The
screen only removes pairs that have no events: results are the same as with every pair. The
search runs the compiled statement of this rule (:func:`orbitmesh.core._pass_kernel.screen_block`);
the numpy one below is its reference.

Array axes: ``(G, S, T)`` = stations, satellites, times, as in :mod:`orbitmesh.core.geometry`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from orbitmesh.core.geometry import FloatArray, Stations

IntArray = NDArray[np.int64]

BLOCK_SAMPLES = 32
"""Samples per screened block: short enough that few pairs survive, long enough to amortise."""
_CHECK_HALF_SPAN = 6  # a check sample every 2 * 6 + 1 samples
_RATE_SAFETY = 1.25  # angular rate varies within a step (eccentric orbits); bound it loosely
_MARGIN_RAD = np.radians(0.5)


def candidate_pairs(pos_km: FloatArray, stations: Stations, masks_deg: FloatArray, *,
                    compiled: bool = True) -> tuple[IntArray, IntArray]:
    """(station, satellite) index pairs that may be above the mask somewhere in ``pos_km``.

    ``pos_km`` is ``(S, T, 3)`` Earth-fixed; NaN samples (failed propagation) keep the pair.
    ``compiled=False`` runs the numpy statement of the rule (the reference the tests use).
    """
    if compiled:
        from orbitmesh.core._pass_kernel import screen_block

        site_km = np.linalg.norm(stations.positions_ecef_km, axis=1)
        return screen_block(np.ascontiguousarray(pos_km), site_km,
                            np.ascontiguousarray(stations.positions_ecef_km / site_km[:, None]),
                            np.ascontiguousarray(masks_deg, dtype=np.float64), _CHECK_HALF_SPAN,
                            _RATE_SAFETY, float(_MARGIN_RAD))
    n_sats, n_t = pos_km.shape[0], pos_km.shape[1]
    n_gs = len(stations)
    radius_km = np.linalg.norm(pos_km, axis=-1)  # (S, T)
    unit = pos_km / radius_km[..., None]
    broken = ~np.isfinite(radius_km).all(axis=1)  # (S,)
    if n_t > 1:
        cos_step = np.einsum("stk,stk->st", unit[:, 1:], unit[:, :-1])
        rate_rad = np.arccos(np.clip(np.nan_to_num(cos_step, nan=1.0), -1.0, 1.0)).max(axis=1)
    else:
        rate_rad = np.zeros(n_sats)
    r_max = np.nan_to_num(radius_km, nan=0.0).max(axis=1)  # (S,)
    site_km = np.linalg.norm(stations.positions_ecef_km, axis=1)  # (G,)
    site_unit = stations.positions_ecef_km / site_km[:, None]
    e = np.radians(masks_deg - 0.2)[:, None]  # (G, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = site_km[:, None] * np.cos(e) / r_max[None, :]
    cap = np.where(ratio < 1.0, np.arccos(np.clip(ratio, -1.0, 1.0)) - e, -np.inf)  # (G, S)
    reach = cap + _RATE_SAFETY * rate_rad[None, :] * (_CHECK_HALF_SPAN + 1) + _MARGIN_RAD
    cos_reach = np.cos(np.clip(reach, 0.0, np.pi))
    keep = np.zeros((n_gs, n_sats), dtype=bool)
    checks = list(range(min(_CHECK_HALF_SPAN, n_t - 1), n_t, 2 * _CHECK_HALF_SPAN + 1))
    if checks[-1] + _CHECK_HALF_SPAN < n_t - 1:
        checks.append(n_t - 1)
    for c in checks:
        cos_angle = site_unit @ np.nan_to_num(unit[:, c]).T  # (G, S)
        keep |= cos_angle >= cos_reach
    keep &= reach > 0.0
    keep |= broken[None, :]
    g, s = np.nonzero(keep)
    return g.astype(np.int64), s.astype(np.int64)
