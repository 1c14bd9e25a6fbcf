"""Live links per tick: ISLs cut by range and Earth occlusion, GSLs assigned to antennas, fibre.

A :class:`LinkState` holds every live link of one instant as parallel arrays of length ``L``
(each undirected link once, ``a < b``, sorted by ``key = a * N + b``). :class:`LinkEngine` turns
scenario time into link states; :class:`LinkTracker` turns successive states into diffs (up, down,
delay changed beyond a threshold since it was last announced).

GSL assignment (per tick, vectorised in rounds): candidate pairs are satellites above a station's
mask, within its ``max_range_km`` (slant range) if it has one, that the station may track. With the
``sticky`` policy a station keeps every satellite it already tracks while that satellite stays
visible; free antennas then go to the highest candidates. ``best`` starts from scratch each tick. In
each round every station proposes its highest free candidates (one per free antenna) and every
satellite accepts its highest proposals up to its own GSL limit; rounds repeat until nothing more
can be placed. A handover is a new GSL at a station that already had a GSL in the previous tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from orbitmesh.core.geometry import (
    C_KM_S,
    EARTH_RADIUS_KM,
    FloatArray,
    Propagator,
    line_of_sight_clear,
    offsets_to_jd,
)
from orbitmesh.core.gsl_assign import HAVE_NUMBA, _compiled, assign_gsl
from orbitmesh.core.topology import GSL, ISL, TERRESTRIAL, IntArray, Topology

__all__ = ["HAVE_NUMBA", "LinkDiff", "LinkEngine", "LinkState", "LinkTracker", "assign_gsl",
           "make_state"]  # assign_gsl lives in gsl_assign; links hands it out too

if TYPE_CHECKING:
    from orbitmesh.core._gsl_near import NearLists

KindArray = NDArray[np.int8]

@dataclass(frozen=True)
class LinkState:
    """Every live link at scenario time ``t_s`` (parallel arrays, sorted by ``key``)."""

    t_s: float
    n_nodes: int
    a: IntArray
    b: IntArray
    kind: KindArray
    delay_s: FloatArray

    @property
    def key(self) -> IntArray:
        """Unique link key ``a * N + b`` (sorted)."""
        return self.a * self.n_nodes + self.b

    def __len__(self) -> int:
        return int(self.a.shape[0])

    def count(self, kind: int) -> int:
        """Number of live links of one class."""
        return int(np.count_nonzero(self.kind == kind))

    def delay_of(self, a: int, b: int) -> float | None:
        """Delay of link a-b in seconds, or None when it is down."""
        lo, hi = (a, b) if a < b else (b, a)
        key = self.key
        i = int(np.searchsorted(key, lo * self.n_nodes + hi))
        if i < len(key) and key[i] == lo * self.n_nodes + hi:
            return float(self.delay_s[i])
        return None


def make_state(t_s: float, n_nodes: int, a: IntArray, b: IntArray, kind: KindArray,
               delay_s: FloatArray) -> LinkState:
    """Normalise (a < b) and sort raw link arrays into a :class:`LinkState`."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if HAVE_NUMBA and lo.size and int(lo.min()) >= 0 and int(hi.max()) < n_nodes:
        from orbitmesh.core._csr_kernel import key_order

        order = key_order(lo.astype(np.int64, copy=False), hi.astype(np.int64, copy=False),
                          n_nodes)  # the argsort's permutation, by counting sorts
    else:
        order = np.argsort(lo * n_nodes + hi, kind="stable")
    return LinkState(t_s, n_nodes, lo[order], hi[order], kind[order].astype(np.int8),
                     delay_s[order])


@dataclass(frozen=True)
class LinkDiff:
    """What changed between two announced link states."""

    t_s: float
    up: IntArray  # indices into the new state
    down_a: IntArray
    down_b: IntArray
    down_kind: KindArray
    delay_changed: IntArray  # indices into the new state

    @property
    def empty(self) -> bool:
        """True when nothing changed."""
        return not (len(self.up) or len(self.down_a) or len(self.delay_changed))


@dataclass
class LinkTracker:
    """Diffs successive link states; a delay is re-announced once it drifts past the threshold."""

    threshold_s: float
    _announced: LinkState | None = None
    _announced_delay: FloatArray = field(default_factory=lambda: np.empty(0))

    def update(self, state: LinkState) -> LinkDiff:
        """Diff ``state`` against what was announced so far, and remember it."""
        empty = np.empty(0, dtype=np.int64)
        if self._announced is None:
            self._announced, self._announced_delay = state, state.delay_s.copy()
            return LinkDiff(state.t_s, np.arange(len(state)), empty, empty,
                            np.empty(0, dtype=np.int8), empty)
        prev, prev_key, cur_key = self._announced, self._announced.key, state.key
        if HAVE_NUMBA:  # one merge of the two sorted key arrays
            from orbitmesh.core._diff_kernel import diff_sorted

            done, up, down, changed, announced = diff_sorted(
                np.ascontiguousarray(prev_key, dtype=np.int64),
                np.ascontiguousarray(self._announced_delay, dtype=np.float64),
                np.ascontiguousarray(cur_key, dtype=np.int64),
                np.ascontiguousarray(state.delay_s, dtype=np.float64), float(self.threshold_s))
            if done:
                self._announced, self._announced_delay = state, announced
                return LinkDiff(state.t_s, up, prev.a[down], prev.b[down], prev.kind[down],
                                changed)
        # Both key arrays are sorted and unique: one binary search matches them (intersect1d
        # would concatenate and sort them again).
        at = np.minimum(np.searchsorted(prev_key, cur_key), max(len(prev_key) - 1, 0))
        kept = (prev_key[at] == cur_key) if len(prev_key) else np.zeros(len(cur_key), bool)
        ic, ip = np.flatnonzero(kept), at[kept]
        up = np.flatnonzero(~kept)
        gone = np.ones(len(prev), dtype=bool)
        gone[ip] = False
        down = np.flatnonzero(gone)
        drift = np.abs(state.delay_s[ic] - self._announced_delay[ip]) > self.threshold_s
        changed = ic[drift]
        announced = state.delay_s.copy()
        announced[ic[~drift]] = self._announced_delay[ip[~drift]]
        self._announced, self._announced_delay = state, announced
        return LinkDiff(state.t_s, up.astype(np.int64), prev.a[down], prev.b[down],
                        prev.kind[down], changed.astype(np.int64))


class LinkEngine:
    """Computes the live links of a topology at any scenario time."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.propagator = Propagator(topology.satrecs)
        rules = topology.scenario.links.isl
        self._clearance_km = EARTH_RADIUS_KM + rules.grazing_margin_km
        self._max_isl_km = rules.max_range_km if rules.max_range_km is not None else np.inf
        self._isl_pairs = np.ascontiguousarray(topology.isl_pairs, dtype=np.int64).reshape(-1, 2)
        self._prev_gsl = np.empty((0, 2), dtype=np.int64)  # (station idx, sat idx)
        self.handovers_total = 0
        self.last_handovers = 0
        self._sin_mask = np.sin(np.radians(topology.station_mask_deg))
        self._restricted = not bool(np.all(topology.station_allows))
        self._gsl_capable = topology.sat_max_gsl > 0
        self._has_antenna = topology.station_antennas > 0
        self._lowest_mask_rad = float(np.radians(topology.station_mask_deg.min(initial=90.0)))
        stations = topology.scenario.stations
        self._max_range_km = np.array([np.inf if g.max_range_km is None else g.max_range_km
                                       for g in stations], dtype=np.float64)
        self._range_limited = bool(np.isfinite(self._max_range_km).any())
        self._station_tree = cKDTree(topology.stations.positions_ecef_km) if len(
            topology.stations) else None
        self._lowest_site_km = float(np.linalg.norm(topology.stations.positions_ecef_km,
                                                    axis=1).min(initial=np.inf))
        self._allows = np.ascontiguousarray(topology.station_allows, dtype=np.bool_)
        self._sat_group = np.ascontiguousarray(topology.sat_constellation, dtype=np.int64)
        first = topology.n_satellites
        self._station_nodes = np.arange(first, first + topology.n_stations, dtype=np.int64)
        self._near: NearLists | None = None  # per-station satellite lists, made on first use

    def positions_ecef_km(self, t_s: float) -> FloatArray:
        """Satellite positions ``(S, 3)`` at ``t_s`` seconds after the scenario epoch."""
        jd, fr = offsets_to_jd(self.topology.scenario.epoch, [t_s])
        return self.propagator.ecef_km(jd, fr)[:, 0, :]

    def isl(self, pos: FloatArray) -> tuple[IntArray, IntArray, FloatArray]:
        """Live ISLs: +Grid candidates within range and clear of Earth plus the margin."""
        pairs = self.topology.isl_pairs
        if not len(pairs):
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0)
        if _compiled() is not None:  # the same sums, without numpy's (K, 3) temporaries
            from orbitmesh.core._isl_kernel import live_isls

            live, range_km = live_isls(np.ascontiguousarray(pos, dtype=np.float64),
                                       self._isl_pairs, float(self._max_isl_km),
                                       self._clearance_km)
            return pairs[live, 0], pairs[live, 1], range_km[live] / C_KM_S
        pa, pb = pos[pairs[:, 0]], pos[pairs[:, 1]]
        range_km = np.linalg.norm(pb - pa, axis=1)
        live = (range_km <= self._max_isl_km) & line_of_sight_clear(pa, pb, self._clearance_km)
        live &= np.isfinite(range_km)
        return pairs[live, 0], pairs[live, 1], range_km[live] / C_KM_S

    def gsl(self, pos: FloatArray, failed: NDArray[np.bool_] | None = None
            ) -> tuple[IntArray, IntArray, FloatArray]:
        """Live GSLs after antenna/satellite limits and the handover policy; (station, sat, s)."""
        topo = self.topology
        if topo.n_stations == 0 or topo.n_satellites == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0)
        kernel = _compiled()
        if kernel is not None:
            cg, cs, sin_el = self._visible_compiled(kernel, pos, failed)
        else:
            cg, cs, sin_el = self._visible(pos, failed)
        cel = np.degrees(np.arcsin(np.clip(sin_el, -1.0, 1.0)))
        sticky = topo.scenario.links.gsl.handover == "sticky"
        keep = np.zeros(len(cg), dtype=bool)
        if sticky and len(self._prev_gsl):
            keep = self._in_previous(cg, cs)
        chosen = assign_gsl(cg, cs, cel, keep, topo.station_antennas, topo.sat_max_gsl)
        g, s = cg[chosen], cs[chosen]
        # Sticky: a chosen pair held a GSL last tick exactly when it was kept (every previous
        # pair still visible is), so the look-up need not run again.
        self._count_handovers(g, s, keep[chosen] if sticky and len(self._prev_gsl) else None)
        if kernel is not None:
            from orbitmesh.core._gsl_near import slant_km

            rng_km = slant_km(np.ascontiguousarray(pos, dtype=np.float64),
                              topo.stations.positions_ecef_km, g, s)
        else:
            rng_km = np.linalg.norm(pos[s] - topo.stations.positions_ecef_km[g], axis=1)
        return g, s, rng_km / C_KM_S

    def _visible(self, pos: FloatArray, failed: NDArray[np.bool_] | None
                 ) -> tuple[IntArray, IntArray, FloatArray]:
        """(station, satellite, sin elevation) of every pair that may hold a GSL now (numpy)."""
        topo = self.topology
        cg, cs, sin_el, range_km = self._candidates(pos)
        visible = sin_el >= self._sin_mask[cg]
        if self._range_limited:
            visible &= range_km <= self._max_range_km[cg]
        if self._restricted:
            visible &= topo.station_allows[cg, topo.sat_constellation[cs]]
        visible &= self._gsl_capable[cs] & self._has_antenna[cg]
        if failed is not None:
            visible &= ~failed[cs] & ~failed[topo.n_satellites + cg]
        return cg[visible], cs[visible], sin_el[visible]

    def _visible_compiled(self, kernel: ModuleType, pos: FloatArray,
                          failed: NDArray[np.bool_] | None
                          ) -> tuple[IntArray, IntArray, FloatArray]:
        """The same pairs as :meth:`_visible`, compiled (stations in order): from each station's
        neighbour list while the lists hold, else from the cube grid."""
        topo = self.topology
        finite = np.isfinite(pos).all(axis=1)
        usable = finite & self._gsl_capable
        sat_ok = usable.copy()
        station_ok = self._has_antenna.copy()
        if failed is not None:
            sat_ok &= ~failed[:topo.n_satellites]
            station_ok &= ~failed[topo.n_satellites:topo.n_satellites + topo.n_stations]
        if not sat_ok.any():
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0)
        stations = topo.stations
        pos = np.ascontiguousarray(pos, dtype=np.float64)
        reach_km = self._reach_km(pos if finite.all() else pos[finite]) + 1.0
        if self._near is None:
            from orbitmesh.core._gsl_near import NearLists

            self._near = NearLists(stations.positions_ecef_km)
        near = self._near.lists(pos, usable, reach_km)
        if near is not None:
            from orbitmesh.core._gsl_near import visible_near

            listed: tuple[IntArray, IntArray, FloatArray] = visible_near(
                pos, sat_ok, near[0], near[1], stations.positions_ecef_km, stations.up,
                station_ok, self._sin_mask, self._max_range_km, reach_km, self._allows,
                self._sat_group, self._restricted)
            return listed
        result: tuple[IntArray, IntArray, FloatArray] = kernel.visible_pairs(
            pos, sat_ok, stations.positions_ecef_km, stations.up, station_ok, self._sin_mask,
            self._max_range_km, reach_km, self._allows, self._sat_group, self._restricted)
        return result

    def _reach_km(self, pos: FloatArray) -> float:
        """Longest slant range any station can have to satellites at ``pos`` (finite rows)."""
        radius_km = float(np.sqrt(np.einsum("ij,ij->i", pos, pos).max()))
        site_km = self._lowest_site_km
        e = self._lowest_mask_rad
        reach_km = np.sqrt(radius_km**2 - (site_km * np.cos(e)) ** 2) - site_km * np.sin(e)
        return min(float(reach_km), float(self._max_range_km.max()))  # inf unless all limited

    def _candidates(self, pos: FloatArray) -> tuple[IntArray, IntArray, FloatArray, FloatArray]:
        """(station, satellite, sin elevation, slant range km) of every pair that might be live.

        A k-d tree over the satellites finds the pairs within the longest slant range any
        station can have (lowest mask, highest satellite, or the longest ``max_range_km`` when
        every station has one), so exact elevation is computed for a few thousand pairs instead
        of every station-satellite pair.
        """
        stations = self.topology.stations
        assert self._station_tree is not None  # gsl() returns early without stations
        finite = np.isfinite(pos).all(axis=1)
        if not finite.any():
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0), np.empty(0)
        sat_index = np.flatnonzero(finite)
        radius_km = float(np.linalg.norm(pos[sat_index], axis=1).max())
        site_km = float(np.linalg.norm(stations.positions_ecef_km, axis=1).min())
        e = self._lowest_mask_rad
        reach_km = np.sqrt(radius_km**2 - (site_km * np.cos(e)) ** 2) - site_km * np.sin(e)
        reach_km = min(reach_km, float(self._max_range_km.max()))  # inf unless all are limited
        tree = cKDTree(pos[sat_index])
        pairs = self._station_tree.sparse_distance_matrix(tree, reach_km + 1.0,
                                                          output_type="ndarray")
        cg = pairs["i"].astype(np.int64)
        cs = sat_index[pairs["j"]]
        rho = pos[cs] - stations.positions_ecef_km[cg]
        sin_el = np.einsum("ij,ij->i", rho, stations.up[cg]) / np.maximum(pairs["v"], 1e-9)
        return cg, cs, sin_el, pairs["v"]

    def _in_previous(self, g: IntArray, s: IntArray) -> NDArray[np.bool_]:
        """True where pair (station ``g``, satellite ``s``) held a GSL at the previous tick."""
        prev, kernel = self._prev_gsl, _compiled()
        if kernel is not None:
            found: NDArray[np.bool_] = kernel.in_previous(
                np.asarray(g, dtype=np.int64), np.asarray(s, dtype=np.int64), prev[:, 0].copy(),
                prev[:, 1].copy(), self.topology.n_stations, self.topology.n_satellites)
            return found
        n_s = self.topology.n_satellites
        return np.isin(g * n_s + s, prev[:, 0] * n_s + prev[:, 1])

    def _count_handovers(self, g: IntArray, s: IntArray,
                         held: NDArray[np.bool_] | None = None) -> None:
        prev = self._prev_gsl
        new = ~(self._in_previous(g, s) if held is None else held)
        had = np.bincount(prev[:, 0], minlength=self.topology.n_stations) > 0
        self.last_handovers = int(np.count_nonzero(new & had[g]))
        self.handovers_total += self.last_handovers
        self._prev_gsl = np.stack([g, s], axis=1)

    def state_at(self, t_s: float, positions_ecef_km: FloatArray | None = None,
                 failed: NDArray[np.bool_] | None = None) -> LinkState:
        """Live links at ``t_s``. Call in time order: sticky GSLs remember the previous call.

        ``failed`` nodes (a mask over all nodes) take part in no GSL assignment, so stations
        do not hold antennas on failed satellites and failed stations release theirs.
        """
        topo = self.topology
        pos = self.positions_ecef_km(t_s) if positions_ecef_km is None else positions_ecef_km
        ia, ib, idelay = self.isl(pos)
        gg, gs, gdelay = self.gsl(pos, failed)
        ta, tb, tdelay = topo.terrestrial
        a = np.concatenate([ia, gs, ta])
        b = np.concatenate([ib, self._station_nodes[gg], tb])
        kind = np.concatenate([np.full(len(ia), ISL), np.full(len(gs), GSL),
                               np.full(len(ta), TERRESTRIAL)]).astype(np.int8)
        return make_state(t_s, topo.n_nodes, a, b, kind, np.concatenate([idelay, gdelay, tdelay]))
