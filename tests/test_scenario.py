"""Scenario loading: every bad input names the file, the line, the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from orbitmesh.core.scenario import load_scenario, parse_scenario
from orbitmesh.errors import ScenarioError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))

GOOD = """\
name: t
epoch: 2026-01-01T00:00:00Z
duration_s: 60
constellations:
  - name: shell
    operator: a
    walker: {inclination_deg: 53, satellites: 24, planes: 4, phasing: 1, altitude_km: 550}
stations:
  - {name: gs1, operator: a, lat_deg: 10, lon_deg: 20}
ops_centres:
  - {name: occ, operator: a, lat_deg: 11, lon_deg: 21, constellations: [shell]}
"""


def problems_of(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return info.value.problems


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_scenarios_validate(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.constellations


def test_good_scenario_resolves_defaults(tmp_path: Path) -> None:
    s = parse_scenario(GOOD, tmp_path / "s.yaml")
    assert s.epoch.tzinfo is not None
    assert s.constellations[0].seam_shift == 1
    assert s.operators == ("a",)


def test_unknown_key_names_file_line_and_field(tmp_path: Path) -> None:
    text = GOOD.replace("    operator: a\n", "    operator: a\n    colour: red\n", 1)
    (problem,) = problems_of(text, tmp_path)
    assert problem.startswith(f"{tmp_path / 'bad.yaml'}:7: constellations[0].colour: unknown key")


@pytest.mark.parametrize(("old", "new", "line", "field", "expect"), [
    ("altitude_km: 550", "altitude_km: -5", 7, "constellations[0].walker.altitude_km",
     "greater than 100"),
    ("phasing: 1", "phasing: 4", 7, "constellations[0].walker",
     "phasing F must be in 0..planes-1 (0..3), got 4"),
    ("satellites: 24", "satellites: 25", 7, "constellations[0].walker", "multiple of planes"),
    ("lon_deg: 20}", "lon_deg: 20, min_elevation_deg: 95}", 9, "stations[0].min_elevation_deg",
     "less than or equal to 90"),
    ("duration_s: 60", "duration_s: soon", 3, "duration_s", "valid number"),
])
def test_impossible_values_are_named(tmp_path: Path, old: str, new: str, line: int, field: str,
                                     expect: str) -> None:
    (problem,) = problems_of(GOOD.replace(old, new), tmp_path)
    assert f"bad.yaml:{line}: {field}: " in problem
    assert expect in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("altitude_km: 550", "altitude_km: -5").replace("lat_deg: 10", "lat_deg: 99")
    assert len(problems_of(text, tmp_path)) == 2


def test_cross_references_are_checked(tmp_path: Path) -> None:
    text = GOOD.replace("constellations: [shell]", "constellations: [nope], stations: [gsX]")
    problems = problems_of(text, tmp_path)
    assert any("ops_centres[0].constellations: unknown constellation 'nope'" in p for p in problems)
    assert any("ops_centres[0].stations: unknown station 'gsX'" in p for p in problems)
    assert all(":11:" in p for p in problems)


def test_duplicate_node_names(tmp_path: Path) -> None:
    text = GOOD.replace("name: occ", "name: gs1")
    (problem,) = problems_of(text, tmp_path)
    assert "ops_centres[0].name: name 'gs1' is already used at stations[0].name" in problem


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    text = GOOD.replace("walker: {inclination_deg: 53, satellites: 24, planes: 4, phasing: 1, "
                        "altitude_km: 550}", "tle: data/missing.tle")
    (problem,) = problems_of(text, tmp_path)
    assert ":7: constellations[0].tle: file not found" in problem
    (problem,) = problems_of("name: [unclosed\n", tmp_path)
    assert "bad.yaml:2: not valid YAML" in problem


def test_topic_unsafe_names_are_rejected(tmp_path: Path) -> None:
    (problem,) = problems_of(GOOD.replace("name: gs1", "name: 'gs/1'"), tmp_path)
    assert "stations[0].name" in problem and "pattern" in problem


def test_missing_required_key(tmp_path: Path) -> None:
    (problem,) = problems_of(GOOD.replace("duration_s: 60\n", ""), tmp_path)
    assert problem.endswith("duration_s: required key is missing")
