"""Orbital planes and slots of imported shells: inferred from the elements, or given by a file.

Array conventions: every per-satellite array is ``(S,)`` in the order of the ``records`` it was
computed from; positions are TEME km with x/y/z on the last axis, as in
:mod:`orbitmesh.core.geometry`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sgp4.api import SGP4_ERRORS, SatrecArray

from orbitmesh.core.elements import ElementRecord, _as_utc, _read_text
from orbitmesh.core.geometry import julian_date
from orbitmesh.core.grid import GridLayout, align_slots, grid_layout
from orbitmesh.errors import GeometryError, ScenarioError

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class PlaneAssignment:
    """Orbital plane and in-plane slot of every satellite, with the angles they came from.

    Planes are numbered inclination group by inclination group (lowest inclination first) and,
    within a group, by increasing RAAN starting after the largest RAAN gap; slots by increasing
    argument of latitude, slot 0 of each plane chosen so that the planes of a group stand in
    Walker slot columns where they can (:mod:`orbitmesh.core.grid`). All arrays are ``(S,)`` in
    record order; ``grids`` holds one +Grid layout per inclination group.
    """

    plane: IntArray
    slot: IntArray
    raan_deg: FloatArray
    arg_latitude_deg: FloatArray
    inclination_deg: FloatArray
    planes: int
    grids: tuple[GridLayout, ...] = ()


def orbit_angles(records: Sequence[ElementRecord], at: datetime
                 ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Osculating RAAN, inclination and argument of latitude (deg, ``(S,)`` each) at ``at``."""
    if not records:
        raise GeometryError("no satellites to compute orbit planes for")
    jd, fr = julian_date(_as_utc(at))
    err, r, v = SatrecArray([rec.satrec for rec in records]).sgp4(np.array([jd]), np.array([fr]))
    failed = np.flatnonzero(err[:, 0])
    if failed.size:
        names = ", ".join(f"{records[i].name} ({SGP4_ERRORS.get(int(err[i, 0]), 'error')})"
                          for i in failed[:10])
        raise GeometryError(f"{failed.size} satellite(s) cannot be propagated to {at:%Y-%m-%d}: "
                            f"{names}; drop them or use elements closer to that date")
    r_km, v_km_s = r[:, 0, :], v[:, 0, :]
    h = np.cross(r_km, v_km_s)
    h_hat = h / np.linalg.norm(h, axis=-1, keepdims=True)
    raan = np.arctan2(h[:, 0], -h[:, 1])
    node = np.stack([np.cos(raan), np.sin(raan), np.zeros_like(raan)], axis=-1)
    u = np.arctan2(np.einsum("sk,sk->s", np.cross(node, r_km), h_hat),
                   np.einsum("sk,sk->s", node, r_km))
    inclination = np.degrees(np.arccos(np.clip(h_hat[:, 2], -1.0, 1.0)))
    return np.degrees(raan) % 360.0, inclination, np.degrees(u) % 360.0


def _linear_clusters(values: FloatArray, tolerance: float) -> IntArray:
    """Cluster labels (ascending with value) splitting the sorted values at gaps > tolerance."""
    order = np.argsort(values, kind="stable")
    labels_sorted = np.concatenate([[0], np.cumsum(np.diff(values[order]) > tolerance)])
    labels = np.empty(values.size, dtype=np.int64)
    labels[order] = labels_sorted
    return labels


def _circular_clusters(angles_deg: FloatArray, tolerance_deg: float) -> IntArray:
    """Cluster angles on the circle; labels increase with angle, starting after the largest gap.

    Gaps within ``tolerance_deg`` of the largest count as equal (an evenly spread Walker shell
    has P of them, told apart by noise only): of those, the cluster starting first at or after
    0 deg (less the tolerance) comes first, so that plane 0 sits where a Walker shell's would.
    """
    order = np.argsort(angles_deg, kind="stable")
    ordered = angles_deg[order]
    gaps = np.diff(np.concatenate([ordered, ordered[:1] + 360.0]))
    starts = (np.flatnonzero(gaps >= gaps.max() - tolerance_deg) + 1) % ordered.size
    start = int(starts[np.argmin((ordered[starts] + tolerance_deg) % 360.0)])
    unwrapped = (np.roll(ordered, -start) - ordered[start]) % 360.0
    labels = np.empty(angles_deg.size, dtype=np.int64)
    labels[np.roll(order, -start)] = np.concatenate(
        [[0], np.cumsum(np.diff(unwrapped) > tolerance_deg)])
    return labels


SLOT_ZERO_FROM_DEG = -1.0
"""Slot 0 of a plane is its first satellite at or after this argument of latitude: a satellite
placed at 0 deg whose osculating angle jitters to 359.9 deg still comes first."""


def _slots(plane: IntArray, arg_latitude_deg: FloatArray) -> IntArray:
    """Rank of each satellite by argument of latitude within its plane."""
    order = np.lexsort(((arg_latitude_deg - SLOT_ZERO_FROM_DEG) % 360.0, plane))
    first = np.searchsorted(plane[order], plane[order], side="left")
    slot = np.empty(plane.size, dtype=np.int64)
    slot[order] = np.arange(plane.size) - first
    return slot


def infer_planes(records: Sequence[ElementRecord], at: datetime, *,
                 raan_tolerance_deg: float = 2.0,
                 inclination_tolerance_deg: float = 1.0) -> PlaneAssignment:
    """Group satellites into orbital planes and number their slots, from geometry at ``at``."""
    raan, inclination, u = orbit_angles(records, at)
    group = _linear_clusters(inclination, inclination_tolerance_deg)
    plane = np.empty(len(records), dtype=np.int64)
    groups: list[range] = []
    offset = 0
    for g in range(int(group.max()) + 1):
        members = np.flatnonzero(group == g)
        labels = _circular_clusters(raan[members], raan_tolerance_deg)
        plane[members] = labels + offset
        groups.append(range(offset, offset + int(labels.max()) + 1))
        offset += int(labels.max()) + 1
    slot = _slots(plane, u)
    for planes in groups:
        slot = align_slots(plane, slot, u, planes)
    grids = tuple(grid_layout(plane, slot, raan, u, inclination, planes) for planes in groups)
    return PlaneAssignment(plane=plane, slot=slot, raan_deg=raan, arg_latitude_deg=u,
                           inclination_deg=inclination, planes=offset, grids=grids)


def planes_from_mapping(records: Sequence[ElementRecord], at: datetime,
                        mapping: Mapping[int, tuple[int, int]], *,
                        inclination_tolerance_deg: float = 1.0) -> PlaneAssignment:
    """Plane assignment taken from an explicit mapping (angles still computed at ``at``).

    Planes are grouped into shells by inclination and linked in the order of their numbers; the
    slots are used as given, and only the seam shift is inferred from the geometry.
    """
    missing = [f"{rec.source}: {rec.name} (catalogue number {rec.catalog_number}) has no plane "
               "in the mapping; add a row for it" for rec in records
               if rec.catalog_number not in mapping]
    if missing:
        raise ScenarioError(f"plane mapping lacks {len(missing)} satellite(s)", problems=missing)
    raan, inclination, u = orbit_angles(records, at)
    pairs = np.array([mapping[rec.catalog_number] for rec in records], dtype=np.int64)
    plane, slot = pairs[:, 0], pairs[:, 1]
    numbers = np.unique(plane)
    plane_inclination = np.array([inclination[plane == p].mean() for p in numbers])
    group = _linear_clusters(plane_inclination, inclination_tolerance_deg)
    grids = tuple(grid_layout(plane, slot, raan, u, inclination,
                              [int(p) for p in numbers[group == g]])
                  for g in range(int(group.max()) + 1))
    return PlaneAssignment(plane=plane, slot=slot, raan_deg=raan, arg_latitude_deg=u,
                           inclination_deg=inclination, planes=int(plane.max()) + 1, grids=grids)


# ------------------------------------------------------------------------------ plane mapping

MAPPING_HEADER = ("catalog_number", "plane", "slot")


def load_plane_mapping(path: Path) -> dict[int, tuple[int, int]]:
    """Read a ``catalog_number,plane,slot`` CSV into ``{catalog_number: (plane, slot)}``."""
    path = Path(path)
    rows = list(csv.reader(_read_text(path, "plane mapping").splitlines()))
    problems: list[str] = []
    mapping: dict[int, tuple[int, int]] = {}
    seen_line: dict[int, int] = {}
    slot_line: dict[tuple[int, int], int] = {}
    header = [cell.strip() for cell in rows[0]] if rows else []
    if tuple(header) != MAPPING_HEADER:
        problems.append(f"{path}:1: header is {','.join(header)!r}, expected "
                        f"{','.join(MAPPING_HEADER)!r}")
    for line, row in enumerate(rows[1:], 2):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if len(cells) != len(MAPPING_HEADER):
            problems.append(f"{path}:{line}: {len(cells)} value(s), expected 3 "
                            "(catalog_number,plane,slot)")
            continue
        bad = [f"{name} {cell!r}" for name, cell in zip(MAPPING_HEADER, cells, strict=True)
               if not cell.isdigit()]
        if bad:
            problems.append(f"{path}:{line}: {', '.join(bad)} is not a non-negative integer")
            continue
        catnr, plane, slot = (int(cell) for cell in cells)
        if catnr in seen_line:
            problems.append(f"{path}:{line}: catalogue number {catnr} already mapped at line "
                            f"{seen_line[catnr]}")
            continue
        if (plane, slot) in slot_line:
            problems.append(f"{path}:{line}: plane {plane} slot {slot} already taken by line "
                            f"{slot_line[(plane, slot)]}")
            continue
        seen_line[catnr], slot_line[(plane, slot)] = line, line
        mapping[catnr] = (plane, slot)
    if not mapping and not problems:
        problems.append(f"{path}:1: no rows; expected one catalog_number,plane,slot per satellite")
    if problems:
        raise ScenarioError(f"{path}: {len(problems)} problem(s) in plane mapping",
                            problems=problems)
    return mapping


def write_plane_mapping(path: Path, records: Sequence[ElementRecord],
                        assignment: PlaneAssignment) -> None:
    """Write an assignment as a ``catalog_number,plane,slot`` CSV (to review and edit by hand)."""
    lines = [",".join(MAPPING_HEADER)]
    lines += [f"{rec.catalog_number},{p},{s}"
              for rec, p, s in zip(records, assignment.plane, assignment.slot, strict=True)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
