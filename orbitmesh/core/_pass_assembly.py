"""Turning the pass search's refined events into passes, while the search is still running.

The search (:mod:`orbitmesh.core.passes`) walks the time grid chunk by chunk. After each chunk
every rise and set up to the chunk's end is known, so the passes that have set are final: they
are paired, clipped, given their TCA and filed. A pass is written out once no pass still to be
found can sort before it: every later pass rises after the chunk's last-but-one sample (a pass
hidden between two samples rises at most one step before its peak sample), and the passes still
in progress rose when they rose. So the output streams in the whole-window order, with the same
values, whatever the chunking.

Array axes: flat event arrays ``(E,)``; keys are ``station * S + satellite``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from orbitmesh.core.pass_table import PassTable
from orbitmesh.errors import GeometryError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


def _cat(parts: list[NDArray], dtype: type) -> NDArray:
    return np.concatenate([np.zeros(0, dtype), *parts]).astype(dtype, copy=False)


@dataclass
class Assembler:
    """Pairs events into passes as chunks of the grid complete; emits them in output order."""

    ref: datetime
    grid_s: FloatArray
    t_start: float
    t_end: float
    masks_deg: FloatArray  # (G,)
    edge_el: FloatArray  # (G, S, 2) elevation at t_start, t_end (direct SGP4)
    edge_rng: FloatArray  # (G, S, 2)
    station_ids: Sequence[str]
    satellite_ids: Sequence[str]
    _cross: list[tuple[IntArray, FloatArray, BoolArray, FloatArray]] = field(default_factory=list)
    _peaks: list[tuple[IntArray, FloatArray, FloatArray, FloatArray]] = field(default_factory=list)
    _held: PassTable | None = None

    def __post_init__(self) -> None:
        self._station_rank = np.argsort(np.argsort(np.asarray(self.station_ids, dtype=object)))
        self._satellite_rank = np.argsort(np.argsort(np.asarray(self.satellite_ids,
                                                                dtype=object)))
        self._held = PassTable.empty(self.ref, self.station_ids, self.satellite_ids)

    def add_cross(self, key: IntArray, t: FloatArray, rising: BoolArray, rng: FloatArray) -> None:
        """Rises (``rising``) and sets of the mask found so far."""
        self._cross.append((key, t, rising, rng))

    def add_peaks(self, key: IntArray, t: FloatArray, el: FloatArray, rng: FloatArray) -> None:
        """Refined elevation maxima above the mask found so far."""
        self._peaks.append((key, t, el, rng))

    def close(self, done: int, final: bool) -> PassTable:
        """Passes that can be written now that samples before ``done`` are searched."""
        grid_s, n_sats = self.grid_s, len(self.satellite_ids)
        key = _cat([c[0] for c in self._cross], np.int64)
        t = _cat([c[1] for c in self._cross], np.float64)
        rising = _cat([c[2] for c in self._cross], np.bool_)
        rng = _cat([c[3] for c in self._cross], np.float64)
        order = np.lexsort((t, key))
        key, t, rising, rng = key[order], t[order], rising[order], rng[order]
        last = np.ones(len(key), dtype=bool)
        last[:-1] = key[1:] != key[:-1]
        open_ = last & rising  # risen, not yet set: wait for the chunks to come
        if final and np.any(open_):
            raise GeometryError("pass search left a pass without a set; "
                                "try a smaller coarse_step_s")
        self._cross = [(key[open_], t[open_], rising[open_], rng[open_])]
        shut = ~open_
        key, t, rising, rng = key[shut], t[shut], rising[shut], rng[shut]
        if len(key) % 2 or not (np.all(rising[0::2]) and not np.any(rising[1::2])
                                and np.array_equal(key[0::2], key[1::2])):
            raise GeometryError("pass search found rises and sets that do not alternate; "
                                "try a smaller coarse_step_s")
        pk = _cat([p[0] for p in self._peaks], np.int64)
        pt, pel, prng = (_cat([p[i] for p in self._peaks], np.float64) for i in (1, 2, 3))
        # A peak can still belong only to a pass in progress (a later pass rises after it).
        open_keys = self._cross[0][0]
        carry = np.isin(pk, open_keys) | (pt >= grid_s[max(done - 1, 0)])
        self._peaks = [(pk[carry], pt[carry], pel[carry], prng[carry])]
        new = self._passes(key, t, rng, pk, pt, pel, prng, n_sats)
        held = self._held
        assert held is not None
        table = PassTable.concat([held, new]) if len(new) else held
        aos_us = np.rint(table.aos_s * 1e6)
        order = np.lexsort((self._satellite_rank[table.satellite],
                            self._station_rank[table.station], aos_us))
        table = table.select(order)
        if final:
            self._held = PassTable.empty(self.ref, self.station_ids, self.satellite_ids)
            return table
        limit = grid_s[max(done - 1, 0)]
        if len(open_keys):
            limit = min(limit, max(float(self._cross[0][1].min()), self.t_start))
        ready = aos_us[order] < np.rint(limit * 1e6)
        self._held = table.select(~ready)
        return table.select(ready)

    def _passes(self, key: IntArray, t: FloatArray, rng: FloatArray, pk: IntArray,
                pt: FloatArray, pel: FloatArray, prng: FloatArray, n_sats: int) -> PassTable:
        """Pair rises with sets, clip to the window, pick TCA (unsorted)."""
        grid_s, t_start, t_end, masks = self.grid_s, self.t_start, self.t_end, self.masks_deg
        p_key, rise_t, set_t = key[0::2], t[0::2], t[1::2]
        aos, los = np.maximum(rise_t, t_start), np.minimum(set_t, t_end)
        ok = aos < los
        p_key, rise_t, aos, los = p_key[ok], rise_t[ok], aos[ok], los[ok]
        aos_rng, los_rng = rng[0::2][ok], rng[1::2][ok]
        set_t = set_t[ok]
        g_idx, s_idx = p_key // n_sats, p_key % n_sats
        if len(p_key) == 0:
            return PassTable.empty(self.ref, self.station_ids, self.satellite_ids)
        # Unclipped ends sit on the mask; clipped ends are measured at start/end by direct SGP4.
        aos_clip, los_clip = aos > rise_t, los < set_t
        aos_el = np.where(aos_clip, self.edge_el[g_idx, s_idx, 0], masks[g_idx])
        los_el = np.where(los_clip, self.edge_el[g_idx, s_idx, 1], masks[g_idx])
        aos_rng = np.where(aos_clip, self.edge_rng[g_idx, s_idx, 0], aos_rng)
        los_rng = np.where(los_clip, self.edge_rng[g_idx, s_idx, 1], los_rng)
        use_los = los_el > aos_el
        tca = np.where(use_los, los, aos)
        best_el = np.where(use_los, los_el, aos_el)
        tca_rng = np.where(use_los, los_rng, aos_rng)

        # Give every refined maximum to the pass that contains it; the highest one wins.
        span_us = math.ceil((grid_s[-1] - grid_s[0]) * 1e6) + 2

        def composite(k: IntArray, times: FloatArray) -> IntArray:
            return k * span_us + np.rint((times - grid_s[0]) * 1e6).astype(np.int64)

        idx = np.maximum(np.searchsorted(composite(p_key, aos), composite(pk, pt), "right") - 1,
                         0)
        inside = (p_key[idx] == pk) & (pt >= aos[idx]) & (pt <= los[idx])
        idx, pel, pt, prng = idx[inside], pel[inside], pt[inside], prng[inside]
        order = np.lexsort((pel, idx))
        idx, pel, pt, prng = idx[order], pel[order], pt[order], prng[order]
        top = np.ones(len(idx), dtype=bool)
        top[:-1] = idx[1:] != idx[:-1]
        idx, pel, pt, prng = idx[top], pel[top], pt[top], prng[top]
        better = pel > best_el[idx]
        idx = idx[better]
        best_el[idx], tca[idx], tca_rng[idx] = pel[better], pt[better], prng[better]
        return PassTable(self.ref, tuple(self.station_ids), tuple(self.satellite_ids), g_idx,
                         s_idx, aos, tca, los, best_el, tca_rng, np.maximum(aos_rng, los_rng))
