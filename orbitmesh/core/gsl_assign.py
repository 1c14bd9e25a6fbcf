"""GSL assignment: which visible station-satellite pairs hold a link this tick.

In each round every station proposes its highest free candidates (one per free antenna) and every
satellite accepts its highest proposals up to its own GSL limit; rounds repeat until nothing more
can be placed (:mod:`orbitmesh.core.links` describes the policy around it). The rounds run in the
compiled kernel :mod:`orbitmesh.core._gsl_kernel` when numba is installed, else in numpy; both
pick the same pairs. Candidates are parallel arrays: ``cg`` (station), ``cs`` (satellite), ``cel``
(elevation, deg).
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np
from numpy.typing import NDArray

from orbitmesh.core.geometry import FloatArray
from orbitmesh.core.topology import IntArray

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
"""Whether the compiled GSL kernel can be used (numpy does the same work without it)."""


def _compiled() -> ModuleType | None:
    """The compiled GSL kernel, imported on first use (numba loads then), or None."""
    if not HAVE_NUMBA:
        return None
    from orbitmesh.core import _gsl_kernel

    return _gsl_kernel


def _rank_within(groups: IntArray, order: IntArray) -> IntArray:
    """Rank of each element within its group, following ``order`` (a permutation)."""
    g_sorted = groups[order]
    idx = np.arange(len(order))
    starts = np.r_[0, np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = idx - first
    return rank


def _compiled_rounds(kernel: ModuleType, cg: IntArray, cs: IntArray, cel: FloatArray,
                     chosen: NDArray[np.bool_], antennas: IntArray, sat_limit: IntArray,
                     used_g: IntArray, used_s: IntArray) -> None:
    """The rounds of :func:`assign_gsl` by the compiled kernel (sorting stays in numpy)."""
    cg, cs = np.asarray(cg, dtype=np.int64), np.asarray(cs, dtype=np.int64)
    cel = np.asarray(cel, dtype=np.float64)
    antennas, sat_limit = np.asarray(antennas, np.int64), np.asarray(sat_limit, np.int64)
    grouped = not np.any(cg[1:] < cg[:-1])  # the compiled candidates come grouped already
    by_station = np.arange(len(cg)) if grouped else np.argsort(cg, kind="stable")
    if not grouped:
        cg, cs, cel, chosen_view = cg[by_station], cs[by_station], cel[by_station], \
            chosen[by_station]
    else:
        chosen_view = chosen
    seg = np.zeros(len(antennas) + 1, dtype=np.int64)
    np.cumsum(np.bincount(cg, minlength=len(antennas)), out=seg[1:])
    proposals = np.empty(len(cg), dtype=np.int64)
    while True:
        free_s = sat_limit - used_s
        count = kernel.propose(cg, cs, cel, chosen_view, seg, antennas, used_g, free_s, proposals)
        if count == 0:
            break
        prop = proposals[:count]
        # candidate order (the caller's), then highest elevation first
        prop = prop[np.argsort(prop if grouped else by_station[prop], kind="stable")]
        ranked = prop[np.argsort(-cel[prop], kind="stable")]
        if kernel.accept(cg, cs, ranked, chosen_view, free_s, used_g, used_s) == 0:
            break
    if not grouped:
        chosen[by_station] = chosen_view


def assign_gsl(cg: IntArray, cs: IntArray, cel: FloatArray, keep: NDArray[np.bool_],
               antennas: IntArray, sat_limit: IntArray,
               compiled: bool | None = None) -> NDArray[np.bool_]:
    """Choose candidate pairs (station ``cg``, satellite ``cs``, elevation ``cel``).

    ``keep`` marks pairs that stay (sticky). Returns a mask over the candidates such that no
    station exceeds ``antennas`` and no satellite exceeds ``sat_limit``, preferring high elevation.
    The rounds run compiled when numba is installed (``compiled``: force one or the other); both
    pick the same pairs, equal elevations going to the earlier candidate.
    """
    chosen = keep.copy()
    used_g = np.bincount(cg[chosen], minlength=len(antennas))
    used_s = np.bincount(cs[chosen], minlength=len(sat_limit))
    # Kept pairs can exceed a limit only if the scenario changed; trim them by elevation.
    while np.any(used_g > antennas) or np.any(used_s > sat_limit):
        over = chosen & ((used_g[cg] > antennas[cg]) | (used_s[cs] > sat_limit[cs]))
        worst = np.flatnonzero(over)[np.argmin(cel[over])]
        chosen[worst] = False
        used_g[cg[worst]] -= 1
        used_s[cs[worst]] -= 1
    kernel = _compiled() if compiled is None or compiled else None
    if compiled and kernel is None:
        raise ImportError("the compiled GSL assignment needs numba")
    if kernel is not None:
        # A sticky tick often has every antenna held already: then no round can place a pair.
        if len(cg) and np.any(used_g < antennas) and np.any(used_s < sat_limit):
            _compiled_rounds(kernel, cg, cs, cel, chosen, antennas, sat_limit, used_g, used_s)
        return chosen
    while True:
        free_g, free_s = antennas - used_g, sat_limit - used_s
        active = np.flatnonzero(~chosen & (free_g[cg] > 0) & (free_s[cs] > 0))
        if not len(active):
            break
        g, el = cg[active], cel[active]
        by_station = np.lexsort((-el, g))
        proposed = _rank_within(g, by_station) < free_g[g]
        prop = active[proposed]
        if not len(prop):
            break
        ps, pel = cs[prop], cel[prop]
        accepted = prop[_rank_within(ps, np.lexsort((-pel, ps))) < free_s[ps]]
        if not len(accepted):
            break
        chosen[accepted] = True
        used_g += np.bincount(cg[accepted], minlength=len(antennas))
        used_s += np.bincount(cs[accepted], minlength=len(sat_limit))
    return chosen
