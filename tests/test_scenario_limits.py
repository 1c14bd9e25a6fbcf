"""Scenario limits: hostile or absurd files are refused cheaply, as file:line: field: expected."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orbitmesh.core import limits
from orbitmesh.core import scenario as scenario_module
from orbitmesh.core.limits import run_clock
from orbitmesh.core.scenario import load_scenario, parse_scenario
from orbitmesh.errors import ScenarioError

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
"""


def refused(tmp_path: Path, text: str | bytes) -> str:
    """The one-line problems of a file that must not load, joined."""
    path = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return "\n".join(info.value.problems)


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        name, prev = chr(97 + i), chr(96 + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_before_it_expands(tmp_path: Path) -> None:
    text = billion_laughs()
    assert len(text) < 500  # the 470-byte file of the issue expands to 9**9 = 387 million strings
    problem = refused(tmp_path, text)  # the node budget is charged per alias as it is composed
    assert f"grows past {limits.MAX_NODES:,} YAML nodes" in problem
    assert problem.startswith(f"{tmp_path / 'bad.yaml'}:")


def test_aliases_within_the_limit_still_work(tmp_path: Path) -> None:
    text = GOOD.replace("  - {name: gs1,", "  - &gs {name: gs1,") + "ops_centres: []\n"
    text = text.replace("ops_centres: []", "ops_centres:\n  - {name: occ, operator: a, "
                        "lat_deg: 11, lon_deg: 21}\nx_unused: *gs")
    # The alias resolves (no limit fires): the only problem is the unknown key that uses it.
    problem = refused(tmp_path, text)
    assert "x_unused: unknown key" in problem


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    problem = refused(tmp_path, GOOD + "description: &d [1, *d]\n")
    assert "bad.yaml:10: description[1]: alias *d refers to a node that contains it" in problem


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting_is_refused(tmp_path: Path, style: str) -> None:
    depth = limits.MAX_DEPTH + 5
    nested = ("[" * depth + "]" * depth if style == "flow"
              else "".join(f"\n{'  ' * i}k:" for i in range(depth)) + " 1")
    problem = refused(tmp_path, GOOD + f"description: {nested}\n")
    assert "nested more than" in problem or "maximum nesting depth" in problem


def test_very_deep_nesting_never_reaches_a_recursion_error(tmp_path: Path) -> None:
    problem = refused(tmp_path, GOOD + "description: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "bad.yaml:10:" in problem


def test_non_utf8_names_the_line_and_the_byte(tmp_path: Path) -> None:
    text = GOOD.encode().replace(b"operator: a\n", b"operator: caf\xe9\n", 1)
    problem = refused(tmp_path, text)
    assert "bad.yaml:6: not UTF-8 (byte 0xe9" in problem


def test_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(*_: object) -> None:
        raise AssertionError("an oversized file reached the YAML parser")

    monkeypatch.setattr(scenario_module, "load_yaml", parse)
    text = GOOD + "# " + "x" * limits.MAX_FILE_BYTES + "\n"
    problem = refused(tmp_path, text)
    assert f"larger than {limits.MAX_FILE_BYTES:,} bytes" in problem


def test_duplicate_key_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    problem = refused(tmp_path, GOOD + "duration_s: 90\n")
    assert "bad.yaml:10: duration_s: duplicate key (first given on line 3)" in problem


@pytest.mark.parametrize(("old", "new", "field", "expect"), [
    ("epoch: 2026-01-01T00:00:00Z", "epoch: 1000000000", "epoch", "not read as seconds since"),
    ("epoch: 2026-01-01T00:00:00Z", 'epoch: "1000000000"', "epoch", "expected an ISO-8601"),
    ("epoch: 2026-01-01T00:00:00Z", "epoch: 2026-13-01T00:00:00Z", "epoch", "month must be"),
    ("duration_s: 60", "duration_s: .inf", "duration_s", "finite number"),
    ("duration_s: 60", "duration_s: .nan", "duration_s", "finite number"),
    ("duration_s: 60", "duration_s: 1" + "0" * 5000, "duration_s", "cannot read int"),
    ("duration_s: 60", "duration_s: 2592001", "duration_s", "less than or equal to 2592000"),
    ("duration_s: 60", "duration_s: 60\nspeed: .inf", "speed", "finite number"),
    ("duration_s: 60", "duration_s: 60\nspeed: 0", "speed", "greater than or equal to 0.001"),
    ("duration_s: 60", "duration_s: 60\ntick_s: 1.0e-300", "tick_s", "greater than or equal"),
    ("duration_s: 60", "duration_s: 60\nseed: -1", "seed", "greater than or equal to 0"),
    ("satellites: 24", "satellites: 400000", "constellations[0].walker.satellites",
     "less than or equal to 50000"),
    ("constellations:\n  - name: shell", "constellations: -1\nx:\n  - name: shell",
     "constellations", "valid tuple"),
    ("lon_deg: 20}", "lon_deg: 20, antennas: 1.0e+30}", "stations[0].antennas", "1e+30"),
    ("lon_deg: 20}", "lon_deg: 20}\nlinks: {gsl: {loss: 1.5}}", "links.gsl.loss",
     "less than or equal to 1"),
    ("lon_deg: 20}", "lon_deg: 20}\nlinks: {isl: {rate_bps: 1.0e+300}}", "links.isl.rate_bps",
     "less than or equal to"),
    ("altitude_km: 550", "altitude_km: 550, raan_offset_deg: .nan", "raan_offset_deg",
     "finite number"),
])
def test_values_that_cannot_run_are_named(tmp_path: Path, old: str, new: str, field: str,
                                          expect: str) -> None:
    assert old in GOOD
    problem = refused(tmp_path, GOOD.replace(old, new, 1))
    assert f": {field}: " in problem or f".{field}: " in problem, problem
    assert expect in problem, problem


def test_tick_too_short_for_the_speed_is_refused(tmp_path: Path) -> None:
    # Each bound alone is fine; together a tick would last 0.1 ms of wall time.
    problem = refused(tmp_path, GOOD + "tick_s: 0.1\nspeed: 1000\n")
    assert "bad.yaml:11: speed: a tick of 0.1 s at speed 1000 lasts 0.1 ms" in problem


def test_yaml_timestamp_and_iso_string_give_the_same_epoch(tmp_path: Path) -> None:
    quoted = GOOD.replace("epoch: 2026-01-01T00:00:00Z", 'epoch: "2026-01-01T00:00:00Z"')
    a = parse_scenario(GOOD, tmp_path / "a.yaml").epoch
    b = parse_scenario(quoted, tmp_path / "b.yaml").epoch
    assert a == b and a.year == 2026 and a.utcoffset() is not None and not a.utcoffset()


@pytest.mark.parametrize(("duration", "speed", "expect"), [
    (float("inf"), None, "--duration: expected a finite number"),
    (0.0, None, "--duration: expected > 0"),
    (-5.0, None, "--duration: expected > 0"),
    (None, 0.0, "--speed: expected from 0.001"),
    (None, float("nan"), "--speed: expected a finite number"),
    (None, 5000.0, "--speed: expected from 0.001 to 1000, got 5000"),
    (None, 200.0, "--speed: a tick of 1 s at speed 200 lasts 5 ms"),
])
def test_run_overrides_are_checked_like_the_file(tmp_path: Path, duration: float | None,
                                                 speed: float | None, expect: str) -> None:
    scenario = parse_scenario(GOOD, tmp_path / "s.yaml")
    with pytest.raises(ScenarioError, match=expect.replace("+", r"\+")):
        run_clock(scenario, duration, speed)


def test_run_overrides_in_bounds_are_used(tmp_path: Path) -> None:
    scenario = parse_scenario(GOOD, tmp_path / "s.yaml")
    assert run_clock(scenario) == (60.0, 1.0)
    assert run_clock(scenario, 12.5, 4.0) == (12.5, 4.0)


@pytest.mark.slow
def test_biggest_allowed_scenario_loads_in_seconds(tmp_path: Path) -> None:
    shells = "\n".join(
        f"  - name: s{k}\n    operator: a\n    walker: {{inclination_deg: 53, satellites: 5000, "
        f"planes: 50, phasing: 1, altitude_km: {550 + k}}}" for k in range(10))
    stations = "\n".join(f"  - {{name: gs{i}, operator: a, lat_deg: {i % 180 - 90}, "
                         f"lon_deg: {i % 360 - 180}, min_elevation_deg: 10, antennas: 2}}"
                         for i in range(limits.MAX_STATIONS))
    text = (GOOD.split("constellations:", maxsplit=1)[0] + "constellations:\n" + shells
            + "\nstations:\n" + stations + "\n")
    path = tmp_path / "big.yaml"
    path.write_text(text, encoding="utf-8")
    started = time.perf_counter()
    scenario = load_scenario(path)
    elapsed_s = time.perf_counter() - started
    assert len(scenario.stations) == limits.MAX_STATIONS
    assert sum(c.walker.satellites for c in scenario.constellations if c.walker) == 50_000
    print(f"biggest allowed scenario: loaded in {elapsed_s:.2f} s")  # timed in no assertion


@pytest.mark.slow
def test_one_more_station_than_allowed_is_refused(tmp_path: Path) -> None:
    stations = "\n".join(f"  - {{name: gs{i}, operator: a, lat_deg: 0, lon_deg: 0}}"
                         for i in range(limits.MAX_STATIONS + 1))
    text = GOOD.split("stations:", maxsplit=1)[0] + "stations:\n" + stations + "\n"
    most = limits.MAX_STATIONS
    assert f"stations: {most + 1:,} items; expected at most {most:,}" in refused(tmp_path, text)
