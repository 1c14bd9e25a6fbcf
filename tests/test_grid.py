"""+Grid of imported shells: slot columns by phase and the Walker seam, not nearest-angle ties.

The reference is the scenario model's own Walker shell: the same i:T/P/F written out as TLE lines
(with checksums) and loaded as a ``tle`` constellation must get exactly its +Grid and its routes.
The shell has its odd planes half a slot off (F = P/2), where both cross-plane neighbours of a
satellite are equally near in argument of latitude.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from orbitmesh.core.describe import describe
from orbitmesh.core.elements import load_tle_file, tle_checksum
from orbitmesh.core.geometry import Propagator, julian_date, mean_motion_rad_min
from orbitmesh.core.planes import infer_planes, write_plane_mapping
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import Topology, build_topology
from orbitmesh.run.cli import main

EPOCH = datetime(2026, 9, 20, tzinfo=UTC)
PLANES, PER_PLANE, PHASING = 12, 20, 6  # 53:240/12/6 at 550 km: odd planes half a slot off
INCLINATION_DEG, ALTITUDE_KM = 53.0, 550.0
ONE_MICROSECOND_MS = 1e-3
THREE_MICROSECONDS_MS = 3e-3
"""TLE fields round angles to 1e-4 deg (about 12 m at this radius, 40 ns of light time per hop)."""


def _with_checksum(line: str) -> str:
    assert len(line) == 68, line
    return line + str(tle_checksum(line))


def tle_lines(catalog_number: int, *, raan_deg: float, mean_anomaly_deg: float,
              inclination_deg: float, rev_per_day: float, epoch: datetime) -> tuple[str, str]:
    """Two TLE lines of a circular orbit (BSTAR and drag terms zero), checksums included."""
    year_start = datetime(epoch.year, 1, 1, tzinfo=UTC)
    day = 1.0 + (epoch - year_start).total_seconds() / 86_400.0
    line1 = (f"1 {catalog_number:05d}U 26001A   {epoch.year % 100:02d}{day:012.8f} "
             f" .00000000  00000-0  00000-0 0  999")
    line2 = (f"2 {catalog_number:05d} {inclination_deg:8.4f} {raan_deg % 360.0:8.4f} 0000000 "
             f"{0.0:8.4f} {mean_anomaly_deg % 360.0:8.4f} {rev_per_day:11.8f}    1")
    return _with_checksum(line1), _with_checksum(line2)


def walker_tle(path: Path, *, planes: int, per_plane: int, phasing: int,
               star: bool = False) -> dict[int, str]:
    """Write a Walker shell as a TLE file (planes in shuffled order, like a catalogue).

    Returns the Walker node id (``w-<plane>-<slot>``) of every catalogue number.
    """
    total = planes * per_plane
    rev_per_day = mean_motion_rad_min(ALTITUDE_KM) * 1440.0 / (2.0 * np.pi)
    rng = np.random.default_rng(9)
    lines: list[str] = []
    walker_id: dict[int, str] = {}
    for k in rng.permutation(planes):
        for j in rng.permutation(per_plane):
            catnr = 1 + int(k) * per_plane + int(j)
            walker_id[catnr] = f"w-{k:02d}-{j:02d}"
            lines += [f"SAT-{catnr}", *tle_lines(
                catnr, raan_deg=k * (180.0 if star else 360.0) / planes,
                mean_anomaly_deg=j * 360.0 / per_plane + k * phasing * 360.0 / total,
                inclination_deg=INCLINATION_DEG, rev_per_day=rev_per_day, epoch=EPOCH)]
    path.write_text("\n".join(lines) + "\n")
    return walker_id


def scenario_file(path: Path, constellation: str) -> Path:
    """A scenario of one constellation ``w`` or ``imp`` (no ground segment: ISLs only)."""
    path.write_text(f"""\
name: grid-{path.stem}
epoch: {EPOCH:%Y-%m-%dT%H:%M:%SZ}
duration_s: 60
constellations:
  - {constellation}
""")
    return path


@pytest.fixture(scope="module")
def shells(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[int, str]]:
    """(Walker scenario, the same shell as a TLE scenario, catalogue number -> Walker id)."""
    root = tmp_path_factory.mktemp("grid")
    walker_id = walker_tle(root / "shell.tle", planes=PLANES, per_plane=PER_PLANE,
                           phasing=PHASING)
    walker = scenario_file(root / "walker.yaml",
                           walker_yaml(planes=PLANES, per_plane=PER_PLANE, phasing=PHASING))
    imported = scenario_file(root / "imported.yaml", "{name: imp, operator: op, tle: shell.tle}")
    return walker, imported, walker_id


def walker_yaml(*, planes: int, per_plane: int, phasing: int, star: bool = False) -> str:
    """The constellation ``w`` as the scenario model's own Walker shell."""
    return (f"{{name: w, operator: op, walker: {{pattern: {'star' if star else 'delta'}, "
            f"inclination_deg: {INCLINATION_DEG}, satellites: {planes * per_plane}, planes: "
            f"{planes}, phasing: {phasing}, altitude_km: {ALTITUDE_KM}}}}}")


def pair_ids(topology: Topology, rename: dict[str, str] | None = None) -> set[tuple[str, str]]:
    """ISL candidates as sorted pairs of node ids (renamed, when given)."""
    ids = [(rename or {}).get(n, n) for n in topology.node_ids]
    return {tuple(sorted((ids[a], ids[b]))) for a, b in topology.isl_pairs}


def test_generated_tles_are_the_walker_shell(shells: tuple[Path, Path, dict[int, str]]) -> None:
    """Guard on the fixture: TLE satellites sit where the Walker generator puts them."""
    walker, imported, walker_id = shells
    w = build_topology(load_scenario(walker))
    t = build_topology(load_scenario(imported))
    order = [w.index[walker_id[int(n.split("-")[1])]] for n in t.node_ids]
    jd, fr = julian_date(EPOCH)
    ours = Propagator(t.satrecs).ecef_km(jd, fr)[:, 0]
    theirs = Propagator(w.satrecs).ecef_km(jd, fr)[order, 0]
    assert np.abs(ours - theirs).max() < 0.05  # 50 m: TLE rounding of the angles


def test_imported_shell_gets_exactly_the_walker_grid(
        shells: tuple[Path, Path, dict[int, str]]) -> None:
    walker, imported, walker_id = shells
    w = build_topology(load_scenario(walker))
    t = build_topology(load_scenario(imported))
    rename = {f"imp-{catnr}": wid for catnr, wid in walker_id.items()}
    expected = pair_ids(w)
    assert len(expected) == 2 * PLANES * PER_PLANE
    got = pair_ids(t, rename)
    assert len(got - expected) == 0, sorted(got - expected)[:5]
    assert got == expected
    (grid,) = t.shells[0].grids
    assert (grid.per_plane, grid.phasing, grid.seam_shift, grid.seam_linked) == (
        PER_PLANE, PHASING, PHASING, True)
    # plane 0 is the one at RAAN 0 and slot 0 the one at 0 deg, as in the Walker shell
    inferred = [f"w-{p:02d}-{j:02d}" for p, j in zip(t.shells[0].plane, t.shells[0].slot,
                                                      strict=True)]
    assert inferred == [rename[n] for n in t.node_ids]


def test_isl_shift_overrides_the_inferred_seam(tmp_path: Path,
                                               shells: tuple[Path, Path, dict[int, str]]) -> None:
    _walker, imported, _ids = shells
    tilted = scenario_file(tmp_path / "tilted.yaml",
                           f"{{name: imp, operator: op, tle: {imported.parent / 'shell.tle'}, "
                           "isl_shift: 0}")
    default = build_topology(load_scenario(imported))
    zero = build_topology(load_scenario(tilted))
    assert zero.shells[0].grids[0].seam_shift == 0
    # only the seam links move: each slot of the last plane loses one and gains another
    diff = pair_ids(default) ^ pair_ids(zero)
    assert len(diff) == 2 * PER_PLANE


@pytest.mark.parametrize(("src", "dst"), [
    # Across a half-slot offset: one direct cross-plane link. (Near the equator, where this
    # one is, the nearest-angle rule tied and picked slot j - 1.)
    ("w-00-02", "w-01-02"),
    ("w-00-00", "w-04-02"),  # a staircase through four planes
    ("w-11-15", "w-00-01"),  # the seam: slot j of plane 11 sits beside slot j + 6 of plane 0
    ("w-10-14", "w-01-02"),  # a staircase over the seam
])
def test_path_equals_the_walker_path(shells: tuple[Path, Path, dict[int, str]],
                                     capsys: pytest.CaptureFixture[str], src: str,
                                     dst: str) -> None:
    walker, imported, walker_id = shells
    catnr = {wid: c for c, wid in walker_id.items()}

    def path(scenario: Path, a: str, b: str) -> dict[str, object]:
        assert main(["path", str(scenario), a, b, "--format", "json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        return row

    theirs = path(walker, src, dst)
    ours = path(imported, f"imp-{catnr[src]}", f"imp-{catnr[dst]}")
    assert theirs["path"], "the Walker shell itself has no route; pick other satellites"
    renamed = [walker_id[int(str(n).split("-")[1])] for n in ours["path"]]  # type: ignore[attr-defined]
    assert renamed == theirs["path"]
    assert ours["one_way_ms"] == pytest.approx(theirs["one_way_ms"], abs=THREE_MICROSECONDS_MS)


def test_star_shell_has_no_seam_links(tmp_path: Path) -> None:
    """6 planes over 180 deg of RAAN, F=2 (Iridium-like): the Walker-star grid, seam open."""
    walker_id = walker_tle(tmp_path / "shell.tle", planes=6, per_plane=11, phasing=2, star=True)
    walker = scenario_file(tmp_path / "walker.yaml",
                           walker_yaml(planes=6, per_plane=11, phasing=2, star=True))
    imported = scenario_file(tmp_path / "imported.yaml",
                             "{name: imp, operator: op, tle: shell.tle}")
    expected = pair_ids(build_topology(load_scenario(walker)))
    t = build_topology(load_scenario(imported))
    assert pair_ids(t, {f"imp-{c}": w for c, w in walker_id.items()}) == expected
    assert len(expected) == 66 + 5 * 11  # rings, and 5 plane steps (none across the seam)
    assert not t.shells[0].grids[0].seam_linked


def _mapping_scenario(tmp_path: Path, imported: Path, rotate_plane: int | None) -> Path:
    """The imported shell with its inferred planes written to a mapping file (one plane's slots
    optionally turned by one)."""
    records = load_tle_file(imported.parent / "shell.tle")
    found = infer_planes(records, EPOCH)
    slot = found.slot.copy()
    if rotate_plane is not None:
        turned = found.plane == rotate_plane
        slot[turned] = (slot[turned] + 1) % PER_PLANE
    mapping = tmp_path / "planes.csv"
    write_plane_mapping(mapping, records, replace(found, slot=slot))
    return scenario_file(tmp_path / "mapped.yaml",
                         f"{{name: imp, operator: op, tle: {imported.parent / 'shell.tle'}, "
                         f"plane_mapping: {mapping}}}")


def test_plane_mapping_keeps_the_grid_and_says_when_slots_cross(
        tmp_path: Path, shells: tuple[Path, Path, dict[int, str]]) -> None:
    _walker, imported, _ids = shells
    inferred = build_topology(load_scenario(imported))
    mapped = build_topology(load_scenario(_mapping_scenario(tmp_path, imported, None)))
    assert pair_ids(mapped) == pair_ids(inferred)
    assert mapped.shells[0].grids[0].note == ""

    crooked = build_topology(load_scenario(_mapping_scenario(tmp_path, imported, 3)))
    # slot j -> slot j is taken from the file as it stands: plane 3's links on both sides move
    assert len(pair_ids(crooked) ^ pair_ids(inferred)) == 2 * 2 * PER_PLANE
    note = crooked.shells[0].grids[0].note
    assert "2->3, 3->4" in note and "cross diagonally" in note


def test_validate_says_where_plane_0_and_the_seam_are(
        shells: tuple[Path, Path, dict[int, str]], capsys: pytest.CaptureFixture[str]) -> None:
    _walker, imported, _ids = shells
    t = build_topology(load_scenario(imported))
    (grid,) = t.shells[0].grids
    text = describe(t, sample_links=False)
    assert f"plane 0 at RAAN {grid.raan_deg[0]:.1f} deg" in text
    assert f"Walker phasing F={PHASING} (inferred)" in text
    assert (f"seam between plane {PLANES - 1} (RAAN {grid.raan_deg[-1]:.1f} deg) -> plane 0, "
            f"{360.0 / PLANES:.1f} deg of RAAN: slot j -> slot j+{PHASING} (inferred)") in text
    assert main(["validate", str(imported)]) == 0
    printed = capsys.readouterr().out
    assert all(line in printed for line in text.splitlines() if "seam" in line)
