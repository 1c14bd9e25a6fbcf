"""GSL candidates from per-station neighbour lists kept across ticks (numba).

Arrays as in :mod:`orbitmesh.core._gsl_kernel`: satellites ``pos (S, 3)`` km Earth-fixed; stations
``station_pos (G, 3)``, ``station_up (G, 3)``; a list set is ``seg (G+1,)`` and ``sats (K,)``:
station ``g``'s satellites are ``sats[seg[g]:seg[g + 1]]``, in index order.

Stations do not move in the Earth-fixed frame and a satellite moves a few km a tick, so the
satellites within ``radius_km`` of a station at one instant hold every satellite within
``reach_km`` of it at any later instant at which no satellite has moved more than
``radius_km - reach_km`` since (the triangle inequality; :func:`max_shift_km` measures the move
exactly, no speed is assumed). A tick then checks the ~30 satellites on each station's list
instead of the few hundred in 27 grid cubes, and the lists are rebuilt (by the cube grid) when
the bound no longer holds: every ~25 one-second ticks with a 200 km margin. This is the
neighbour-list ("Verlet list") scheme of molecular dynamics codes.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from orbitmesh.core._gsl_kernel import cube_grid

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@njit(cache=True, nogil=True)
def near_lists(pos: FloatArray, ok_sat: BoolArray, station_pos: FloatArray,
               radius_km: float) -> tuple[IntArray, IntArray]:
    """(seg, sats): each station's ``ok_sat`` satellites within ``radius_km``, in index order."""
    n_st = station_pos.shape[0]
    seg = np.zeros(n_st + 1, np.int64)
    lo, dims, start, members = cube_grid(pos, ok_sat, radius_km)
    if dims[0] == 0 or n_st == 0:
        return seg, np.empty(0, np.int64)
    side = radius_km  # a satellite within reach of a station is in one of the 27 cubes around it
    radius2 = radius_km * radius_km
    cap = max(1024, 64 * n_st)
    sats = np.empty(cap, np.int64)
    count = 0
    home = np.empty(3, np.int64)
    for g in range(n_st):
        first = count
        for k in range(3):
            home[k] = np.int64(np.floor((station_pos[g, k] - lo[k]) / side))
        for ix in range(max(home[0] - 1, 0), min(home[0] + 2, dims[0])):
            for iy in range(max(home[1] - 1, 0), min(home[1] + 2, dims[1])):
                for iz in range(max(home[2] - 1, 0), min(home[2] + 2, dims[2])):
                    c = (ix * dims[1] + iy) * dims[2] + iz
                    for m in range(start[c], start[c + 1]):
                        s = members[m]
                        dx = pos[s, 0] - station_pos[g, 0]
                        dy = pos[s, 1] - station_pos[g, 1]
                        dz = pos[s, 2] - station_pos[g, 2]
                        if dx * dx + dy * dy + dz * dz > radius2:
                            continue
                        if count == cap:
                            cap *= 2
                            grown = np.empty(cap, np.int64)
                            grown[:count] = sats[:count]
                            sats = grown
                        sats[count] = s
                        count += 1
        sats[first:count].sort()  # index order: the answer must not depend on the grid
        seg[g + 1] = count
    return seg, sats[:count].copy()


@njit(cache=True, nogil=True)
def max_shift_km(pos: FloatArray, ok_now: BoolArray, built_pos: FloatArray,
                 ok_built: BoolArray) -> float:
    """Farthest any satellite moved since the lists were built; inf if one is usable now that was
    not then (it is on no list)."""
    shift2 = 0.0
    for s in range(pos.shape[0]):
        if not ok_now[s]:
            continue
        if not ok_built[s]:
            return np.inf
        dx = pos[s, 0] - built_pos[s, 0]
        dy = pos[s, 1] - built_pos[s, 1]
        dz = pos[s, 2] - built_pos[s, 2]
        shift2 = max(shift2, dx * dx + dy * dy + dz * dz)
    return float(np.sqrt(shift2))


@njit(cache=True, nogil=True)
def visible_near(pos: FloatArray, eligible_sat: BoolArray, seg: IntArray, sats: IntArray,
                 station_pos: FloatArray, station_up: FloatArray, eligible_station: BoolArray,
                 sin_mask: FloatArray, max_range_km: FloatArray, reach_km: float,
                 allows: BoolArray, sat_group: IntArray,
                 restricted: bool) -> tuple[IntArray, IntArray, FloatArray]:
    """(station, satellite, sin elevation) of every listed pair above the station's mask, within
    its range and allowed to it: :func:`~orbitmesh.core._gsl_kernel.visible_pairs`' tests and
    arithmetic, stations in order, each station's satellites in index order."""
    k = sats.size
    out_g = np.empty(k, np.int64)
    out_s = np.empty(k, np.int64)
    out_sin = np.empty(k, np.float64)
    reach2 = reach_km * reach_km
    count = 0
    for g in range(station_pos.shape[0]):
        if not eligible_station[g]:
            continue
        gx, gy, gz = station_pos[g, 0], station_pos[g, 1], station_pos[g, 2]
        ux, uy, uz = station_up[g, 0], station_up[g, 1], station_up[g, 2]
        mask_g, range_g = sin_mask[g], max_range_km[g]
        for m in range(seg[g], seg[g + 1]):
            # Every pair is written and only a passing one kept (count advances by the test):
            # about half pass, so branches on the tests would be mispredicted half the time.
            s = sats[m]
            dx = pos[s, 0] - gx
            dy = pos[s, 1] - gy
            dz = pos[s, 2] - gz
            r2 = dx * dx + dy * dy + dz * dz
            r = np.sqrt(r2)
            sin_el = (dx * ux + dy * uy + dz * uz) / max(r, 1e-9)
            ok = eligible_sat[s] & (r2 <= reach2) & (sin_el >= mask_g) & (r <= range_g)
            if restricted:
                ok = ok & allows[g, sat_group[s]]
            out_g[count] = g
            out_s[count] = s
            out_sin[count] = sin_el
            count += 1 if ok else 0
    return out_g[:count].copy(), out_s[:count].copy(), out_sin[:count].copy()


MARGIN_KM = 200.0
"""How far past the reach the lists look: at ~7.5 km/s they last ~25 one-second ticks, and each
holds ~1.4x the satellites a station can see."""

MIN_SERVED = 4
"""Lists that served fewer calls than this before they went stale (ticks far apart, or
positions out of time order) are not rebuilt for the next :data:`PAUSE_CALLS` calls: the cube
grid alone is cheaper then."""

PAUSE_CALLS = 16


class NearLists:
    """Each station's satellites within reach plus a margin, kept until some satellite moved more
    than the margin allows (see the module docstring)."""

    def __init__(self, station_pos: FloatArray, margin_km: float = MARGIN_KM) -> None:
        self.station_pos = np.ascontiguousarray(station_pos, dtype=np.float64)
        self.margin_km = float(margin_km)
        self.built_pos: FloatArray | None = None
        self.ok_built = np.empty(0, np.bool_)
        self.radius_km = 0.0
        self.seg = np.zeros(1, np.int64)
        self.sats = np.empty(0, np.int64)
        self.served = 0
        self.paused = 0
        self.rebuilds = 0

    def lists(self, pos: FloatArray, usable: BoolArray,
              reach_km: float) -> tuple[IntArray, IntArray] | None:
        """(seg, sats) holding every ``usable`` satellite within ``reach_km`` of each station at
        ``pos``, or None when lists do not pay now (use the cube grid)."""
        if self.built_pos is not None:
            shift_km = max_shift_km(pos, usable, self.built_pos, self.ok_built)
            if reach_km + shift_km + 1e-6 <= self.radius_km:  # 1e-6 km: rounding
                self.served += 1
                return self.seg, self.sats
            self.built_pos = None
            if self.served < MIN_SERVED:
                self.paused = PAUSE_CALLS
        if self.paused > 0:
            self.paused -= 1
            return None
        self.radius_km = reach_km + self.margin_km
        self.seg, self.sats = near_lists(pos, usable, self.station_pos, self.radius_km)
        self.built_pos, self.ok_built = pos.copy(), usable.copy()
        self.served = 1
        self.rebuilds += 1
        return self.seg, self.sats


@njit(cache=True, nogil=True)
def slant_km(pos: FloatArray, station_pos: FloatArray, g: IntArray, s: IntArray) -> FloatArray:
    """Station ``g[i]`` to satellite ``s[i]`` distances, summed as ``np.linalg.norm(pos[s] -
    station_pos[g], axis=1)`` sums them (x, y, z in turn), without its (K, 3) temporaries."""
    out = np.empty(g.size, np.float64)
    for i in range(g.size):
        dx = pos[s[i], 0] - station_pos[g[i], 0]
        dy = pos[s[i], 1] - station_pos[g[i], 1]
        dz = pos[s[i], 2] - station_pos[g[i], 2]
        out[i] = np.sqrt(dx * dx + dy * dy + dz * dz)
    return out
