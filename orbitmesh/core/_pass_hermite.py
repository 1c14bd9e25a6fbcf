"""Grid positions for the pass search from fewer SGP4 calls: cubic Hermite between SGP4 knots.

SGP4 is most of the pass search's time. With ``sgp4_step_s`` a multiple ``k`` of the grid step,
SGP4 runs only at every ``k``-th grid sample (the *knots*, counted from the grid's first sample,
plus its last, so that any chunking of the grid sees the same knots) and returns position and
velocity there; the samples between are the cubic Hermite curve through the two neighbouring
knots' positions and velocities, in TEME (where the motion is a smooth orbit), then rotated to
the Earth-fixed frame at their own time like any sample.

Error: cubic Hermite is off by at most ``h**4 / 384 * max|r''''|``; on a near-circular orbit
``|r''''| = r n**4`` (``n`` the mean motion), so at LEO (550 km, n = 1.1e-3 rad/s) that is
0.34 m for ``h = 60 s`` and 5.4 m for 120 s (tested against direct SGP4 below 1 m and 10 m).
That moves AOS/LOS by well under a millisecond at 60 s (0.3 m in ~1,000 km of range is 2e-5
deg of elevation), so passes are the same ones and their times differ from an all-SGP4 search in
the last millisecond digit at most (shell 1 over a day: 16 % of rows; 20 ms on passes that barely
clear the mask, whose AOS moves far for a tiny change of elevation), far inside the 0.23 s the
search keeps against skyfield. At 120 s the same day lost one such pass and moved others by
0.27 s, so the search accepts at most 60 s.

Array axes: ``(S, T, 3)`` satellites, times, xyz, as in :mod:`orbitmesh.core.geometry`.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from orbitmesh.core.geometry import FloatArray, Propagator, offsets_to_jd, teme_to_ecef


def knots(n_samples: int, every: int, lo: int, hi: int) -> list[int]:
    """Indices of the SGP4 knots that bracket grid samples ``lo .. hi - 1``."""
    first = (lo // every) * every
    last = min(-(-(hi - 1) // every) * every, n_samples - 1)
    out = list(range(first, last + 1, every))
    if out[-1] != last:
        out.append(last)
    return out


def _hermite(tau: float, h_s: float, r0: FloatArray, v0: FloatArray, r1: FloatArray,
             v1: FloatArray) -> FloatArray:
    """The cubic Hermite curve at ``tau`` in [0, 1] of a segment ``h_s`` seconds long."""
    tau2, tau3 = tau * tau, tau * tau * tau
    return ((2.0 * tau3 - 3.0 * tau2 + 1.0) * r0 + ((tau3 - 2.0 * tau2 + tau) * h_s) * v0
            + (-2.0 * tau3 + 3.0 * tau2) * r1 + ((tau3 - tau2) * h_s) * v1)


def hermite_ecef_km(propagator: Propagator, ref: datetime, grid_s: FloatArray, lo: int, hi: int,
                    every: int) -> FloatArray:
    """Earth-fixed positions ``(S, hi - lo, 3)`` of grid samples ``lo .. hi - 1``; NaN where SGP4
    failed at a sample's knot or at either knot around it."""
    idx = np.asarray(knots(len(grid_s), every, lo, hi))
    first = int(idx[0])
    r, v, err = propagator.teme_state_km(*offsets_to_jd(ref, grid_s[idx]))
    bad = err != 0
    teme = np.empty((r.shape[0], int(idx[-1]) - first + 1, 3))
    failed = np.empty((r.shape[0], teme.shape[1]), dtype=bool)
    # Segment lengths from the grid's step, not from differences of its times, so that every
    # chunking of the grid interpolates with the same bits.
    step_s = float(grid_s[1] - grid_s[0]) if len(grid_s) > 1 else 0.0
    lengths = np.diff(idx)
    full = len(lengths) if len(lengths) and lengths[-1] == every else len(lengths) - 1
    on_knots = slice(0, every * full + 1, every)
    teme[:, on_knots], failed[:, on_knots] = r[:, :full + 1], bad[:, :full + 1]  # SGP4's bits
    teme[:, -1], failed[:, -1] = r[:, -1], bad[:, -1]
    # Full segments: each offset into them is one strided slice of the output, and the
    # segments' ends are views of the knots.
    for j in range(1, every if full > 0 else 1):
        cols = slice(j, j + every * full, every)
        teme[:, cols] = _hermite(j / every, every * step_s, r[:, :full], v[:, :full],
                                 r[:, 1:full + 1], v[:, 1:full + 1])
        failed[:, cols] = bad[:, :full] | bad[:, 1:full + 1]
    if full < len(lengths):  # the short segment to the grid's last sample
        length = int(lengths[-1])
        for j in range(1, length):
            col = int(idx[-2]) - first + j
            teme[:, col] = _hermite(j / length, length * step_s, r[:, -2], v[:, -2], r[:, -1],
                                    v[:, -1])
            failed[:, col] = bad[:, -2] | bad[:, -1]
    part = slice(lo - first, hi - first)
    jd, fr = offsets_to_jd(ref, grid_s[lo:hi])
    out = teme_to_ecef(teme[:, part], jd, fr)
    out[failed[:, part]] = np.nan
    return out
