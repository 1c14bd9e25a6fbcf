"""Compiled ISL cut (numba): range and Earth occlusion of every +Grid candidate in one pass.

The same arithmetic as :meth:`orbitmesh.core.links.LinkEngine.isl` and
:func:`orbitmesh.core.geometry.line_of_sight_clear` (sums in the same order, no fused
multiply-add), without the dozen (K, 3) temporaries numpy makes. Arrays: ``pos (S, 3)`` km,
``pairs (K, 2)`` satellite indices; answers ``live (K,)`` and ``range_km (K,)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@njit(cache=True, nogil=True)
def live_isls(pos: FloatArray, pairs: IntArray, max_range_km: float,
              clearance_km: float) -> tuple[NDArray[np.bool_], FloatArray]:
    """(live, range_km) per candidate: within range, finite, and clear of the sphere."""
    k = pairs.shape[0]
    live = np.empty(k, np.bool_)
    range_km = np.empty(k, np.float64)
    r2 = clearance_km ** 2
    for i in range(k):
        a, b = pairs[i, 0], pairs[i, 1]
        ax, ay, az = pos[a, 0], pos[a, 1], pos[a, 2]
        dx, dy, dz = pos[b, 0] - ax, pos[b, 1] - ay, pos[b, 2] - az
        dd = dx * dx + dy * dy + dz * dz
        rng = np.sqrt(dd)
        range_km[i] = rng
        t = -(ax * dx + ay * dy + az * dz) / (dd if dd > 0 else 1.0)
        t = min(max(t, 0.0), 1.0)
        cx, cy, cz = ax + t * dx, ay + t * dy, az + t * dz
        clear = cx * cx + cy * cy + cz * cz >= r2
        live[i] = rng <= max_range_km and clear and np.isfinite(rng)
    return live, range_km
