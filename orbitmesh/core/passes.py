"""Pass prediction: AOS / TCA / LOS of satellites over stations with per-station elevation masks.

Method
------
1. **Coarse scan.** All satellites are propagated together (one ``SatrecArray`` call per time
   chunk, via :class:`Propagator`) on a grid of ``coarse_step_s`` that starts two steps before
   ``start`` and ends two steps after ``end``; samples where SGP4 reports an error (e.g. 6,
   decayed) are dropped. By default SGP4's own value is computed only at the samples a pass can
   use (near a station; about half of them for Starlink shell 1 and 68 stations), the others
   interpolated between SGP4 knots 8 minutes apart (:mod:`orbitmesh.core._pass_sparse`; the
   passes are the same bits). With ``sgp4_step_s`` (off by default) SGP4 runs only every few
   samples and :mod:`orbitmesh.core._pass_hermite` interpolates the rest (0.34 m at 60 s at
   LEO; times move in the last millisecond digit).
   The search runs over blocks of 32 samples; in each block
   :func:`orbitmesh.core._pass_screen.candidate_pairs` keeps only the (station, satellite) pairs
   that can reach the mask there (a few per cent of them in a LEO shell; the others have no
   events, so results are unchanged), the sparse propagation's near test drops those of them
   that come within reach of the mask at no sample of the block (no events there either), and
   elevations are computed for the pairs left only, by the
   compiled loop of :mod:`orbitmesh.core._pass_kernel` (numba), which compares the sine of the
   elevation with the sine of the mask (no arcsine per sample). Rises and sets are the sign
   changes of ``elevation - mask`` between samples. Passes too short to contain a sample are
   caught from the discrete local maxima of the elevation: each one that can reach the mask is
   refined (a sample sits at most ``speed * step / 2 / range`` radians below the top it is
   nearest, bounded per pair and block), and one that tops the mask between two samples that
   are both below it adds a rise and a set.
2. **Refinement.** Between samples, positions come from the SGP4 samples by Lagrange
   interpolation in the Earth-fixed frame (4 points around a crossing, 5 around a maximum). At
   LEO that is good to 0.2 m over a 30 s grid (3 m at 60 s, 50 m at 120 s), so crossings are
   bisected and maxima golden-section searched to 1 ms, event by event in the compiled loop,
   with no further SGP4 calls. Checked against direct SGP4 at the refined
   times: elevation at AOS/LOS is within 0.0003 deg of the mask for 30-60 s grids (0.003 deg at
   120 s, 0.1 deg at 300 s, the largest step accepted).
3. **Pairing.** Rises and sets alternate per (station, satellite); each pass takes the highest
   refined maximum inside it as TCA. The grid is searched in chunks (each one depends only on
   its own samples, so a caller may scan them in other processes) and
   :mod:`orbitmesh.core._pass_assembly` pairs them as they come, so passes stream out in the
   final order, with the values of a whole-window search, while the search goes on. TCA is the
   time of **maximum elevation** (what operators and skyfield call culmination), not strictly
   the time of minimum range.

Accuracy against skyfield's ``find_events`` (323 passes of 7 real TLEs, 4 sites, masks 0/10/25
deg): AOS/LOS within 0.23 s (skyfield itself resolves 0.5 s), maximum elevation within 0.012 deg.
What remains is the frame model of :mod:`orbitmesh.core.geometry` (UT1 taken as UTC, no polar
motion, ~0.001 deg here), so a pass that tops its mask by less than that may appear in one tool
and not the other.

Window edges: a pass already in progress at ``start`` gets ``aos = start``; one still in progress
at ``end`` gets ``los = end``. For such a clipped pass TCA and maximum elevation describe the
part inside the window (TCA may equal ``start`` or ``end``).

DTN contact plans are not built from passes (a pass ignores antenna limits and ISLs); see
:mod:`orbitmesh.core.contact_plans`, which samples the emulator's own link states.

Array axes: ``(G, S, T)`` = stations, satellites, times, as in :mod:`orbitmesh.core.geometry`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from orbitmesh.core._pass_assembly import Assembler
from orbitmesh.core._pass_hermite import hermite_ecef_km
from orbitmesh.core._pass_screen import BLOCK_SAMPLES, candidate_pairs
from orbitmesh.core.geometry import (
    FloatArray,
    Propagator,
    Stations,
    look_angles,
    offsets_to_jd,
    teme_to_ecef,
)
from orbitmesh.core.pass_table import Pass, PassTable
from orbitmesh.errors import GeometryError

IntArray = NDArray[np.int64]

_MEMORY_BUDGET_BYTES = 150e6
_TIME_CHUNK = 256
_REFINE_TOLERANCE_S = 1e-3
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0
# Column j of each holds the power coefficients of the j-th Lagrange basis polynomial on the
# stencil's nodes (offsets in steps): 4 points around a crossing, 5 around a maximum.
_CROSS_BASIS = np.ascontiguousarray(np.linalg.inv(np.vander([-1.0, 0.0, 1.0, 2.0],
                                                            increasing=True)))
_PEAK_BASIS = np.ascontiguousarray(np.linalg.inv(np.vander([-2.0, -1.0, 0.0, 1.0, 2.0],
                                                           increasing=True)))


@dataclass(frozen=True)
class _Grid:
    """The coarse time grid: offsets in seconds after ``ref``, two steps beyond each end."""

    ref: datetime
    grid_s: FloatArray  # (T,)
    step_s: float
    t_start: float
    t_end: float
    sgp4_every: int = 1  # SGP4 at every k-th sample, cubic Hermite between (_pass_hermite)
    sparse: bool = True  # SGP4 only where a pass can use it (_pass_sparse; the same bits)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _scan_block(grid: _Grid, pos_km: FloatArray, stations: Stations, masks_deg: FloatArray,
                *, lo: int, a: int, b: int, pairs: tuple[IntArray, IntArray] | None = None
                ) -> tuple[IntArray, IntArray, tuple[IntArray, FloatArray, NDArray[np.bool_],
                                                     FloatArray],
                           tuple[IntArray, FloatArray, FloatArray, FloatArray],
                           NDArray[np.bool_], NDArray[np.bool_]]:
    """Screen (unless ``pairs`` are given), find and refine the events in samples ``lo..`` of
    ``pos_km``; owns [a, b).

    Returns the screened pairs, the crossings, the maxima, and whether each pair is above its
    mask at the grid's second and second-to-last samples (where those fall in the block).
    """
    from orbitmesh.core._pass_kernel import scan_block

    step_s = grid.step_s
    pg, ps = candidate_pairs(pos_km, stations, masks_deg) if pairs is None else pairs
    n_cross = max(1, math.ceil(math.log2(step_s / _REFINE_TOLERANCE_S)))
    n_golden = max(1, math.ceil(math.log(2 * step_s / _REFINE_TOLERANCE_S) / -math.log(_INV_PHI)))
    (c_key, c_t, c_rise, c_rng, p_key, p_t, p_el, p_rng, first, last) = scan_block(
        np.ascontiguousarray(pos_km), np.ascontiguousarray(stations.positions_ecef_km),
        np.ascontiguousarray(stations.up), np.ascontiguousarray(masks_deg),
        np.sin(np.radians(masks_deg)), pg, ps, np.ascontiguousarray(grid.grid_s), step_s, lo, a,
        b, n_cross, n_golden, _CROSS_BASIS, _PEAK_BASIS)
    return pg, ps, (c_key, c_t, c_rise, c_rng), (p_key, p_t, p_el, p_rng), first, last


ChunkRunner = Callable[[Callable[[int], "ChunkEvents"], int], Iterator["ChunkEvents"]]
"""Runs ``scan(k)`` for chunks ``k = 0 .. n-1`` of the search and yields the results in order.
The default, :func:`run_here`, calls them one after the other in this process; a caller may run
them elsewhere (e.g. forked processes, as ``orbitmesh contacts`` does): a chunk's scan depends
on nothing but its own samples, so the results are the same."""


@dataclass(frozen=True)
class ChunkEvents:
    """What the scan of one chunk of the grid found: refined events, flat, keyed by pair."""

    cross: tuple[IntArray, FloatArray, NDArray[np.bool_], FloatArray]  # key, t, rising, range
    peaks: tuple[IntArray, FloatArray, FloatArray, FloatArray]  # key, t, elevation, range
    first_keys: IntArray  # pairs above the mask at the grid's first sample (in the first chunk)
    last_keys: IntArray  # pairs above the mask at the grid's last sample (in the last chunk)


def run_here(scan: Callable[[int], ChunkEvents], count: int) -> Iterator[ChunkEvents]:
    """The chunks scanned in this process, one after the other."""
    return (scan(k) for k in range(count))


def load_kernel() -> None:
    """Load the compiled scan now (e.g. in a worker process, before its first chunk)."""
    import sys

    # numba's first compiled call sets up its CPU target, and that imports scipy.linalg only to
    # learn whether np.dot may use BLAS (numba.np.arraymath._check_blas): a third of numba's
    # start, for nothing the scan uses. Told "no BLAS", numba only lowers np.convolve and
    # np.correlate of this process without it; a later np.dot or np.linalg kernel still
    # imports scipy.linalg when it compiles, as the entry is gone by then.
    blocked = "scipy.linalg.cython_blas" not in sys.modules
    if blocked:
        sys.modules["scipy.linalg.cython_blas"] = None  # type: ignore[assignment]
    try:
        from orbitmesh.core._pass_kernel import warm_up

        warm_up(_CROSS_BASIS, _PEAK_BASIS)
    finally:
        if blocked and sys.modules.get("scipy.linalg.cython_blas", 0) is None:
            del sys.modules["scipy.linalg.cython_blas"]


def ecef_valid_km(propagator: Propagator, ref: datetime, offsets_s: FloatArray) -> FloatArray:
    """Earth-fixed positions ``(S, T, 3)``; NaN where SGP4 reports an error (e.g. 6 = decayed)."""
    jd, fr = offsets_to_jd(ref, offsets_s)
    r_teme, err = propagator.teme_km(jd, fr)
    pos_km = teme_to_ecef(r_teme, jd, fr)
    pos_km[err != 0] = np.nan
    return pos_km


def find_passes(propagator: Propagator, satellite_ids: Sequence[str], stations: Stations,
                station_ids: Sequence[str], masks_deg: Sequence[float] | FloatArray,
                start: datetime, end: datetime, *, epoch: datetime | None = None,
                coarse_step_s: float = 30.0, sgp4_step_s: float | None = None) -> list[Pass]:
    """All passes of every satellite over every station between ``start`` and ``end``."""
    return search_passes(propagator, satellite_ids, stations, station_ids, masks_deg, start,
                         end, epoch=epoch, coarse_step_s=coarse_step_s,
                         sgp4_step_s=sgp4_step_s).passes()


def search_passes(propagator: Propagator, satellite_ids: Sequence[str], stations: Stations,
                  station_ids: Sequence[str], masks_deg: Sequence[float] | FloatArray,
                  start: datetime, end: datetime, *, epoch: datetime | None = None,
                  coarse_step_s: float = 30.0, sgp4_step_s: float | None = None,
                  sgp4_everywhere: bool = False) -> PassTable:
    """:func:`find_passes` as a :class:`PassTable` (times in seconds after ``epoch``/start)."""
    return PassTable.concat(list(iter_pass_tables(
        propagator, satellite_ids, stations, station_ids, masks_deg, start, end, epoch=epoch,
        coarse_step_s=coarse_step_s, sgp4_step_s=sgp4_step_s,
        sgp4_everywhere=sgp4_everywhere)))


def search_chunks(start: datetime, end: datetime, n_satellites: int, *,
                  coarse_step_s: float = 30.0, chunk_samples: int | None = None) -> int:
    """How many tables :func:`iter_pass_tables` yields for this window (for progress bars)."""
    n_samples = math.ceil((_utc(end) - _utc(start)).total_seconds() / coarse_step_s) + 5
    return len(range(1, n_samples - 2, _chunk(n_satellites, chunk_samples)))


def _chunk(n_sats: int, chunk_samples: int | None) -> int:
    if chunk_samples is not None:
        # Whole screening blocks: the blocks, and so the screened pairs, stay as they were.
        return max(1, round(chunk_samples / BLOCK_SAMPLES)) * BLOCK_SAMPLES
    return int(max(BLOCK_SAMPLES, min(_TIME_CHUNK, _MEMORY_BUDGET_BYTES // (48 * n_sats))))


def iter_pass_tables(propagator: Propagator, satellite_ids: Sequence[str], stations: Stations,
                     station_ids: Sequence[str], masks_deg: Sequence[float] | FloatArray,
                     start: datetime, end: datetime, *, epoch: datetime | None = None,
                     coarse_step_s: float = 30.0, runner: ChunkRunner | None = None,
                     chunk_samples: int | None = None, sgp4_step_s: float | None = None,
                     sgp4_everywhere: bool = False) -> Iterator[PassTable]:
    """The passes of :func:`search_passes`, in its order, as the search finds them.

    One table (maybe empty) per chunk of ``chunk_samples`` grid samples, so that output can be
    written while the search goes on; together they are exactly the whole-window table.
    ``sgp4_step_s`` (a multiple of ``coarse_step_s``, at most 60 s; default: the grid step)
    runs SGP4 that often and interpolates the samples between (:mod:`._pass_hermite`: about
    a third of the search's time at 60 s on a 30 s grid, AOS/LOS within a millisecond or so).
    Without it, SGP4 runs only at the samples a pass can use (:mod:`._pass_sparse`, the same
    bits); ``sgp4_everywhere`` runs it at every sample (the reference that is tested against).
    """
    n_sats, n_gs = propagator.count, len(stations)
    masks = np.asarray(masks_deg, dtype=np.float64).reshape(-1)
    problems = []
    if len(satellite_ids) != n_sats:
        problems.append(f"{len(satellite_ids)} satellite ids for {n_sats} propagated satellites")
    if len(station_ids) != n_gs or len(masks) != n_gs:
        problems.append(f"{len(station_ids)} station ids and {len(masks)} masks "
                        f"for {n_gs} stations")
    if len(set(satellite_ids)) != len(satellite_ids) or len(set(station_ids)) != len(station_ids):
        problems.append("satellite and station ids must be unique")
    if not 0.0 < coarse_step_s <= 300.0:
        problems.append(f"coarse_step_s={coarse_step_s} is outside (0, 300] s; 30 s suits LEO")
    every = 1
    if sgp4_step_s is not None:
        every = round(sgp4_step_s / coarse_step_s) if coarse_step_s > 0 else 0
        # 120 s was tried on shell 1 over a day: one grazing pass lost, AOS/LOS 0.27 s off.
        if not (1 <= every <= 4 and abs(every * coarse_step_s - sgp4_step_s) < 1e-9
                and sgp4_step_s <= 60.0):
            problems.append(f"sgp4_step_s={sgp4_step_s} must be 1 to 4 times coarse_step_s="
                            f"{coarse_step_s} and at most 60 s")
    start, end = _utc(start), _utc(end)
    if end <= start:
        problems.append(f"end {end.isoformat()} is not after start {start.isoformat()}")
    if problems:
        raise GeometryError("cannot predict passes: " + "; ".join(problems))
    return _search(propagator, satellite_ids, stations, station_ids, masks, start, end,
                   _utc(epoch) if epoch is not None else start, coarse_step_s,
                   runner or run_here, _chunk(n_sats, chunk_samples), every,
                   not sgp4_everywhere)


def _search(propagator: Propagator, satellite_ids: Sequence[str], stations: Stations,
            station_ids: Sequence[str], masks: FloatArray, start: datetime, end: datetime,
            ref: datetime, step_s: float, runner: ChunkRunner, chunk: int, every: int = 1,
            sparse: bool = True) -> Iterator[PassTable]:
    t_start, t_end = (start - ref).total_seconds(), (end - ref).total_seconds()
    n_samples = math.ceil((t_end - t_start) / step_s) + 5
    grid_s = np.asarray(t_start + (np.arange(n_samples) - 2.0) * step_s, dtype=np.float64)
    grid = _Grid(ref, grid_s, step_s, t_start, t_end, every, sparse)
    edge_el, _az, edge_rng = look_angles(stations, ecef_valid_km(propagator, ref,
                                                                 np.array([t_start, t_end])))
    asm = Assembler(ref, grid_s, t_start, t_end, masks, edge_el, edge_rng, station_ids,
                    satellite_ids)
    # Chunk k in [1, n_samples - 2) (intervals k..k+1, maxima at k); a chunk needs k-2 .. k+2.
    spans = [(a, min(a + chunk, n_samples - 2)) for a in range(1, n_samples - 2, chunk)]

    def scan(k: int) -> ChunkEvents:
        return _scan_chunk(propagator, grid, stations, masks, *spans[k])

    for (_a, b), ev in zip(spans, runner(scan, len(spans)), strict=True):
        asm.add_cross(*ev.cross)
        asm.add_peaks(*ev.peaks)
        for keys, t, rising in ((ev.first_keys, grid_s[0], True),
                                (ev.last_keys, grid_s[-1], False)):
            asm.add_cross(keys, np.full(len(keys), t), np.full(len(keys), rising),
                          np.full(len(keys), np.nan))
        yield asm.close(b, final=b == n_samples - 2)


def _scan_chunk(propagator: Propagator, grid: _Grid, stations: Stations, masks: FloatArray,
                a: int, b: int) -> ChunkEvents:
    """Propagate samples ``a-2 .. b+1`` and find the events of intervals and maxima in [a, b)."""
    n_sats, grid_s = propagator.count, grid.grid_s
    n_samples = len(grid_s)
    lo = max(a - 2, 0)
    blocks = [(a2, min(a2 + BLOCK_SAMPLES, b)) for a2 in range(a, b, BLOCK_SAMPLES)]
    pairs: list[tuple[IntArray, IntArray] | None] = [None] * len(blocks)
    # Propagation runs in long chunks (few SGP4 calls); the search in short screened blocks.
    if grid.sgp4_every > 1:
        pos_km = hermite_ecef_km(propagator, grid.ref, grid_s, lo, b + 2, grid.sgp4_every)
    elif not grid.sparse:
        pos_km = ecef_valid_km(propagator, grid.ref, grid_s[lo:b + 2])
    else:
        from orbitmesh.core._pass_sparse import SparseChunk

        chunk = SparseChunk(propagator, grid.ref, grid_s, lo, b + 2)
        site_km = np.linalg.norm(stations.positions_ecef_km, axis=1)
        site_unit = np.ascontiguousarray(stations.positions_ecef_km / site_km[:, None])
        for i, (a2, b2) in enumerate(blocks):
            lo2, hi2 = max(a2 - 2, 0), b2 + 2
            pg, ps = candidate_pairs(chunk.pos[:, lo2 - lo:hi2 - lo], stations, masks)
            pairs[i] = chunk.mark(pg, ps, lo2 - lo, hi2 - lo, site_unit, site_km, masks)
        pos_km = chunk.refine()
    cross: list[tuple[IntArray, FloatArray, NDArray[np.bool_], FloatArray]] = []
    peaks: list[tuple[IntArray, FloatArray, FloatArray, FloatArray]] = []
    first_keys = last_keys = np.zeros(0, np.int64)
    for (a2, b2), block_pairs in zip(blocks, pairs, strict=True):
        lo2, hi2 = max(a2 - 2, 0), b2 + 2
        pg, ps, c, p, first, last = _scan_block(grid, pos_km[:, lo2 - lo:hi2 - lo], stations,
                                                masks, lo=lo2, a=a2, b=b2, pairs=block_pairs)
        cross.append(c)
        peaks.append(p)
        if a2 == 1:  # in progress at the start: risen at the grid's first sample
            first_keys = pg[first] * n_sats + ps[first]
        if b2 == n_samples - 2:  # in progress at the end: set at the last sample
            last_keys = pg[last] * n_sats + ps[last]
    return ChunkEvents(
        (np.concatenate([x[0] for x in cross]), np.concatenate([x[1] for x in cross]),
         np.concatenate([x[2] for x in cross]), np.concatenate([x[3] for x in cross])),
        (np.concatenate([x[0] for x in peaks]), np.concatenate([x[1] for x in peaks]),
         np.concatenate([x[2] for x in peaks]), np.concatenate([x[3] for x in peaks])),
        first_keys, last_keys)
