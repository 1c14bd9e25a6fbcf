"""Compiled GSL candidates and assignment rounds (numba); :mod:`orbitmesh.core.links` explains them.

Imported on the first GSL tick only when numba is installed (links fall back to numpy without it).
Arrays: satellites ``pos (S, 3)`` km Earth-fixed; stations ``station_pos (G, 3)``, ``station_up
(G, 3)``; candidates are parallel arrays ``cg`` (station), ``cs`` (satellite), ``sin_el``.

Candidates come from a grid of cubes whose side is the longest slant range any station can have:
a satellite within reach of a station lies in the station's cube or one of its 26 neighbours, so a
station checks the few hundred satellites there instead of all of them, and only pairs that pass
every visibility test leave the kernel (no k-d tree to build each tick, no candidate arrays that
are mostly thrown away). On second-by-second ticks the per-station lists of
:mod:`orbitmesh.core._gsl_near` stand in for the grid between their rebuilds.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@njit(cache=True, nogil=True, inline="always")
def cube_grid(pos: FloatArray, ok: BoolArray, side_km: float
              ) -> tuple[FloatArray, IntArray, IntArray, IntArray]:
    """(lo, dims, start, members): the ``ok`` satellites bucketed in cubes ``side_km`` wide from
    corner ``lo``; cube ``(ix * dims[1] + iy) * dims[2] + iz`` holds ``members[start[c]:start[c +
    1]]``, in index order. ``dims`` is all zero when no satellite is ``ok`` or the side is not
    positive. A satellite within ``side_km`` of a point lies in the point's cube or one of its 26
    neighbours."""
    n_sat = pos.shape[0]
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for s in range(n_sat):
        if ok[s]:
            for k in range(3):
                lo[k] = min(lo[k], pos[s, k])
                hi[k] = max(hi[k], pos[s, k])
    dims = np.zeros(3, np.int64)
    if not lo[0] <= hi[0] or not side_km > 0.0:
        return lo, dims, np.zeros(1, np.int64), np.empty(0, np.int64)
    for k in range(3):
        dims[k] = np.int64((hi[k] - lo[k]) / side_km) + 1
    n_cells = dims[0] * dims[1] * dims[2]
    cell_of = np.full(n_sat, -1, np.int64)
    start = np.zeros(n_cells + 1, np.int64)
    for s in range(n_sat):
        if ok[s]:
            c = ((np.int64((pos[s, 0] - lo[0]) / side_km) * dims[1]
                  + np.int64((pos[s, 1] - lo[1]) / side_km)) * dims[2]
                 + np.int64((pos[s, 2] - lo[2]) / side_km))
            cell_of[s] = c
            start[c + 1] += 1
    for c in range(n_cells):
        start[c + 1] += start[c]
    members = np.empty(start[n_cells], np.int64)
    fill = start[:-1].copy()
    for s in range(n_sat):  # satellites of a cell in index order
        c = cell_of[s]
        if c >= 0:
            members[fill[c]] = s
            fill[c] += 1
    return lo, dims, start, members


@njit(cache=True, nogil=True)
def visible_pairs(pos: FloatArray, eligible_sat: BoolArray, station_pos: FloatArray,
                  station_up: FloatArray, eligible_station: BoolArray, sin_mask: FloatArray,
                  max_range_km: FloatArray, reach_km: float, allows: BoolArray,
                  sat_group: IntArray, restricted: bool) -> tuple[IntArray, IntArray, FloatArray]:
    """(station, satellite, sin elevation) of every pair above the station's mask, within its
    range and allowed to it, stations in order; ``reach_km`` bounds every such slant range."""
    n_st = station_pos.shape[0]
    lo, dims, start, members = cube_grid(pos, eligible_sat, reach_km)
    if dims[0] == 0:
        empty_i = np.empty(0, np.int64)
        return empty_i, empty_i.copy(), np.empty(0, np.float64)
    side = reach_km
    px = np.empty(members.size, np.float64)  # positions in cell order: the scan runs along
    py = np.empty(members.size, np.float64)  # memory instead of jumping about ``pos``
    pz = np.empty(members.size, np.float64)
    for m in range(members.size):
        s = members[m]
        px[m], py[m], pz[m] = pos[s, 0], pos[s, 1], pos[s, 2]
    reach2 = reach_km * reach_km
    cap = max(1024, 64 * n_st)
    out_g = np.empty(cap, np.int64)
    out_s = np.empty(cap, np.int64)
    out_sin = np.empty(cap, np.float64)
    count = 0
    home = np.empty(3, np.int64)
    for g in range(n_st):
        if not eligible_station[g]:
            continue
        gx, gy, gz = station_pos[g, 0], station_pos[g, 1], station_pos[g, 2]
        ux, uy, uz = station_up[g, 0], station_up[g, 1], station_up[g, 2]
        for k in range(3):
            home[k] = np.int64(np.floor((station_pos[g, k] - lo[k]) / side))
        for ix in range(max(home[0] - 1, 0), min(home[0] + 2, dims[0])):
            for iy in range(max(home[1] - 1, 0), min(home[1] + 2, dims[1])):
                for iz in range(max(home[2] - 1, 0), min(home[2] + 2, dims[2])):
                    c = (ix * dims[1] + iy) * dims[2] + iz
                    for m in range(start[c], start[c + 1]):
                        dx = px[m] - gx
                        dy = py[m] - gy
                        dz = pz[m] - gz
                        r2 = dx * dx + dy * dy + dz * dz
                        if r2 > reach2:
                            continue
                        r = np.sqrt(r2)
                        sin_el = (dx * ux + dy * uy + dz * uz) / max(r, 1e-9)
                        if sin_el < sin_mask[g] or r > max_range_km[g]:
                            continue
                        s = members[m]
                        if restricted and not allows[g, sat_group[s]]:
                            continue
                        if count == cap:  # grow the output
                            cap *= 2
                            out_g = _grown_int(out_g, cap)
                            out_s = _grown_int(out_s, cap)
                            grown = np.empty(cap, np.float64)
                            grown[:count] = out_sin[:count]
                            out_sin = grown
                        out_g[count] = g
                        out_s[count] = s
                        out_sin[count] = sin_el
                        count += 1
    return out_g[:count].copy(), out_s[:count].copy(), out_sin[:count].copy()


@njit(cache=True, nogil=True)
def _grown_int(values: IntArray, cap: int) -> IntArray:
    grown = np.empty(cap, np.int64)
    grown[:values.size] = values
    return grown


@njit(cache=True, nogil=True)
def in_previous(g: IntArray, s: IntArray, prev_g: IntArray, prev_s: IntArray, n_g: int,
                n_s: int) -> BoolArray:
    """True where pair (``g``, ``s``) is one of the previous tick's (``prev_g``, ``prev_s``)."""
    seg = np.zeros(n_g + 1, np.int64)
    for i in range(prev_g.size):
        seg[prev_g[i] + 1] += 1
    for k in range(n_g):
        seg[k + 1] += seg[k]
    sats = np.empty(prev_g.size, np.int64)
    fill = seg[:-1].copy()
    for i in range(prev_g.size):
        sats[fill[prev_g[i]]] = prev_s[i]
        fill[prev_g[i]] += 1
    out = np.zeros(g.size, np.bool_)
    for i in range(g.size):
        for k in range(seg[g[i]], seg[g[i] + 1]):  # a station's few previous satellites
            if sats[k] == s[i]:
                out[i] = True
                break
    return out


@njit(cache=True, nogil=True)
def propose(cg: IntArray, cs: IntArray, cel: FloatArray, chosen: BoolArray, seg: IntArray,
            antennas: IntArray, used_g: IntArray, free_s: IntArray,
            proposals: IntArray) -> int:
    """One round's proposals of :func:`~orbitmesh.core.links.assign_gsl` into ``proposals``
    (their count is returned): each station's best free candidates, one per free antenna.

    ``seg`` (G+1,) bounds each station's run of candidates (candidates come grouped by
    station). A station scans its few dozen candidates once per free antenna, and most have no
    free antenna on a sticky tick, so nothing is sorted here; ties go to the earlier candidate.
    """
    n_prop = 0
    for g in range(antennas.size):
        first = n_prop
        for _ in range(antennas[g] - used_g[g]):
            best = -1
            for c in range(seg[g], seg[g + 1]):
                if chosen[c] or free_s[cs[c]] <= 0:
                    continue
                taken = False
                for k in range(first, n_prop):
                    taken = taken or proposals[k] == c
                if not taken and (best < 0 or cel[c] > cel[best]):
                    best = c
            if best < 0:
                break
            proposals[n_prop] = best
            n_prop += 1
    return n_prop


@njit(cache=True, nogil=True)
def accept(cg: IntArray, cs: IntArray, ranked: IntArray, chosen: BoolArray,
           free_s: IntArray, used_g: IntArray, used_s: IntArray) -> int:
    """Each satellite takes its best proposals (``ranked``: highest elevation first, ties in
    candidate order) up to its free GSLs; returns how many were accepted."""
    accepted = 0
    for i in range(ranked.size):
        c = ranked[i]
        s = cs[c]
        if free_s[s] > 0:
            free_s[s] -= 1
            chosen[c] = True
            used_g[cg[c]] += 1
            used_s[s] += 1
            accepted += 1
    return accepted
