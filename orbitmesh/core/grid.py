"""The +Grid layout of a shell: which planes neighbour, slot columns, phasing and the seam.

A shell's planes are linked in a ring: plane 0, 1, ..., P-1 and, across the **seam**, back to
plane 0. When every plane holds S evenly spaced satellites the grid runs in slot columns, as in a
Walker shell: slot j of plane p links slot j of plane p+1, and slot j of the last plane links slot
j + ``seam_shift`` of plane 0. Imported shells get their slots numbered into such columns by
phase: one Walker phasing F (in units of 360/T) steps the phase from each plane to the next, so
slot j of plane p+1 is the satellite F·360/T ahead of slot j of plane p (0 <= F < P, the Walker
convention). Never "the nearer of the two": on shells whose odd planes sit half a slot off, both
are equally near and numerical noise would pick.

Array conventions: per-satellite arrays are ``(S,)`` in record order, as in
:mod:`orbitmesh.core.planes`; per-plane tuples and arrays follow the grid's plane order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]

SEAM_OPEN_GAP_DEG = 180.0
"""First and last planes further apart than this in RAAN (star-like shells: all planes within half
a circle, so the two meet counter-rotating) get no seam links, like Walker-star shells."""
MAX_PHASE_ERROR_SLOTS = 0.25
"""A satellite further than this (in slots) from its column means the planes have no columns."""


@dataclass(frozen=True)
class GridLayout:
    """How the +Grid links the planes of one shell (one inclination group of a constellation)."""

    planes: tuple[int, ...]  # plane numbers in link order; the seam is last -> first
    raan_deg: tuple[float, ...]  # RAAN of each plane at the epoch, same order
    inclination_deg: float
    per_plane: int | None  # satellites per plane when they stand in slot columns, else None
    phasing: int | None  # Walker F between adjacent planes (None without columns)
    seam_shift: int  # slot j of the last plane links slot j + seam_shift of the first
    seam_linked: bool  # False: no seam links (star-like shell, or fewer than 3 planes)
    note: str = ""  # why there are no columns, or what else a reader should know

    @property
    def seam_gap_deg(self) -> float:
        """RAAN from the last plane forward to the first (the gap the seam crosses)."""
        if len(self.raan_deg) < 2:
            return 360.0
        return _seam_gap_deg(np.asarray(self.raan_deg))


def _circular_mean(angles: FloatArray, period: float, axis: int = -1) -> FloatArray:
    """Mean of angles on a circle of circumference ``period``, in ``[0, period)``."""
    z = np.exp(2j * np.pi * angles / period).mean(axis=axis)
    return np.asarray((np.angle(z) * period / (2 * np.pi)) % period, dtype=np.float64)


def _wrap(x: FloatArray, period: float) -> FloatArray:
    """``x`` wrapped into ``[-period/2, period/2)``."""
    return np.asarray((x + period / 2) % period - period / 2, dtype=np.float64)


def _seam_gap_deg(raan_deg: FloatArray) -> float:
    # Planes may be numbered with RAAN increasing or decreasing: measure the seam the same way.
    steps = _wrap(np.diff(raan_deg), 360.0)
    direction = 1.0 if np.median(steps) >= 0 else -1.0
    return float(((raan_deg[0] - raan_deg[-1]) * direction) % 360.0)


def plane_members(plane: IntArray, slot: IntArray, planes: Sequence[int]) -> list[IntArray]:
    """Satellite indices of each of ``planes``, ordered by slot."""
    return [np.flatnonzero(plane == p)[np.argsort(slot[plane == p], kind="stable")]
            for p in planes]


def _columns(members: list[IntArray], u_deg: FloatArray) -> tuple[FloatArray, int] | str:
    """Phase of slot 0 of every plane (deg) and S, or why the planes have no slot columns."""
    sizes = sorted({len(m) for m in members})
    if len(sizes) != 1 or sizes[0] == 0:
        return (f"planes of {sizes[0]}-{sizes[-1]} satellites: no slot columns, each satellite "
                "links the nearest argument of latitude in the next plane")
    per_plane = sizes[0]
    slot_deg = 360.0 / per_plane
    offsets = u_deg[np.stack(members)] - np.arange(per_plane) * slot_deg  # (P, S)
    phase = _circular_mean(offsets, 360.0)
    error_slots = float(np.abs(_wrap(offsets - phase[:, np.newaxis], 360.0)).max()) / slot_deg
    if error_slots > MAX_PHASE_ERROR_SLOTS:
        return (f"satellites up to {error_slots:.2f} slots off even spacing: no slot columns, "
                "each satellite links the nearest argument of latitude in the next plane")
    return phase, per_plane


def _phasing(phase: FloatArray, per_plane: int) -> int | str:
    """Walker F of the steps between adjacent planes (the seam step left out), or why none."""
    n_planes = phase.size
    if n_planes < 2:
        return 0
    slot_deg = 360.0 / per_plane
    steps = (phase[1:] - phase[:-1]) % 360.0
    step = float(_circular_mean(steps, slot_deg))
    phasing = round(step * n_planes / slot_deg) % n_planes
    error_slots = float(np.abs(_wrap(steps - phasing * slot_deg / n_planes, slot_deg)).max()
                        ) / slot_deg
    if error_slots > MAX_PHASE_ERROR_SLOTS:
        return (f"plane phases step unevenly (up to {error_slots:.2f} slots off one Walker "
                "phasing): no slot columns, each satellite links the nearest argument of "
                "latitude in the next plane")
    return phasing


def _offset_slots(a_phase: float, b_phase: float, step_deg: float, per_plane: int) -> int:
    """k such that slot j of plane a links slot j + k of plane b (b's slot 0 at ``b_phase``)."""
    slot_deg = 360.0 / per_plane
    return round(((a_phase + step_deg - b_phase) % 360.0) / slot_deg) % per_plane


def align_slots(plane: IntArray, slot: IntArray, u_deg: FloatArray,
                planes: Sequence[int]) -> IntArray:
    """Slots renumbered (cyclically, plane by plane) so that the planes stand in slot columns.

    Plane ``planes[0]`` keeps its numbering; each next plane is turned so that its slot j is the
    satellite one phasing step ahead of slot j of the plane before. Planes without columns keep
    their slots.
    """
    members = plane_members(plane, slot, planes)
    columns = _columns(members, u_deg)
    if isinstance(columns, str):
        return slot
    phase, per_plane = columns
    phasing = _phasing(phase, per_plane)
    if isinstance(phasing, str):
        return slot
    step_deg = phasing * 360.0 / per_plane / len(planes)
    aligned = slot.copy()
    ranks = np.arange(per_plane)
    for i in range(1, len(planes)):
        k = _offset_slots(phase[i - 1], phase[i], step_deg, per_plane)
        aligned[members[i]] = (ranks - k) % per_plane
        phase[i] = (phase[i] + k * 360.0 / per_plane) % 360.0
    return aligned


def grid_layout(plane: IntArray, slot: IntArray, raan_deg: FloatArray, u_deg: FloatArray,
                inclination_deg: FloatArray, planes: Sequence[int]) -> GridLayout:
    """The +Grid of ``planes`` (in link order) as their slots stand, with the seam inferred."""
    members = plane_members(plane, slot, planes)
    plane_raan = np.array([_circular_mean(raan_deg[m], 360.0) for m in members])
    inclination = float(np.mean(inclination_deg[np.concatenate(members)]))
    seam_linked = len(planes) >= 3 and _seam_gap_deg(plane_raan) <= SEAM_OPEN_GAP_DEG
    per_plane: int | None = None
    phasing: int | None = None
    seam_shift, note = 0, ""
    columns = _columns(members, u_deg)
    found = columns if isinstance(columns, str) else _phasing(*columns)
    if isinstance(found, str):
        note = found
    elif not isinstance(columns, str):
        (phase, per_plane), phasing = columns, found
        step_deg = phasing * 360.0 / per_plane / len(planes)
        crooked = [f"{planes[i]}->{planes[i + 1]}" for i in range(len(planes) - 1)
                   if _offset_slots(phase[i], phase[i + 1], step_deg, per_plane)]
        if crooked:
            note = (f"slot j of plane p is not beside slot j of plane p+1 at "
                    f"{', '.join(crooked[:5])}{' ...' if len(crooked) > 5 else ''}: links there "
                    "cross diagonally (check the plane mapping's slots)")
        if seam_linked:
            seam_shift = _offset_slots(phase[-1], phase[0], step_deg, per_plane)
    return GridLayout(planes=tuple(int(p) for p in planes),
                      raan_deg=tuple(float(r) for r in plane_raan),
                      inclination_deg=inclination, per_plane=per_plane, phasing=phasing,
                      seam_shift=seam_shift, seam_linked=seam_linked, note=note)


def walker_grid(*, planes: int, per_plane: int, phasing: int, seam_shift: int, star: bool,
                raan_offset_deg: float, inclination_deg: float) -> GridLayout:
    """The +Grid of a generated Walker shell (no inference: the parameters say it all)."""
    spread_deg = 180.0 if star else 360.0
    return GridLayout(
        planes=tuple(range(planes)),
        raan_deg=tuple((raan_offset_deg + k * spread_deg / planes) % 360.0 for k in range(planes)),
        inclination_deg=inclination_deg, per_plane=per_plane, phasing=phasing,
        seam_shift=seam_shift, seam_linked=not star and planes >= 3)
