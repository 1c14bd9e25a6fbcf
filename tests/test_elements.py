"""Element loading (TLE, OMM), staleness warnings, plane/slot inference and plane mapping files."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skyfield.iokit import parse_tle_file

from orbitmesh.core.elements import (
    ElementRecord,
    load_omm_file,
    load_tle_file,
    stale_epochs,
    tle_checksum,
)
from orbitmesh.core.geometry import walker_satrecs
from orbitmesh.core.planes import (
    PlaneAssignment,
    infer_planes,
    load_plane_mapping,
    planes_from_mapping,
    write_plane_mapping,
)
from orbitmesh.errors import GeometryError, ScenarioError

DATA = Path(__file__).parent / "data"
SCENARIO_DATA = Path(__file__).parent.parent / "scenarios" / "data"
ONE_MICROSECOND = timedelta(microseconds=1)
ONE_CENTIMETRE_KM = 1e-5

ISS = ("ISS (ZARYA)",
       "1 25544U 98067A   18135.61844383  .00002728  00000-0  48567-4 0  9998",
       "2 25544  51.6402 181.0633 0004018  88.8954  22.2246 15.54059185113452")
STARLINK = ("STARLINK-37821",
            "1 A0404U 26192A   26263.38590896  .00031477  00000+0  57128-3 0  9992",
            "2 A0404  53.1597 307.1840 0001009  61.6382 298.4729 15.49331404  5885")


def with_checksum(line: str) -> str:
    """The line with its checksum digit recomputed, so that only the intended fault remains."""
    return line[:68] + str(tle_checksum(line))


def write(tmp_path: Path, *lines: str, name: str = "sats.tle") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def problems_of(path: Path, loader: Callable[[Path], object] = load_tle_file) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        loader(path)
    assert str(path) in str(info.value).splitlines()[0]
    return info.value.problems


# ------------------------------------------------------------------------------------ TLE

def test_checksum_of_published_lines() -> None:
    for line in (*ISS[1:], *STARLINK[1:]):
        assert tle_checksum(line) == int(line[-1])


def test_mixed_two_and_three_line_file() -> None:
    records = load_tle_file(DATA / "mixed.tle")
    assert [(r.name, r.catalog_number) for r in records] == [
        ("ISS (ZARYA)", 25544), ("STARLINK-37821", 100404), ("SAT-29273", 29273)]
    assert [r.source for r in records] == [f"{DATA / 'mixed.tle'}:{n}" for n in (1, 5, 8)]
    # skyfield's own TLE reader is an independent parser of the same file
    with (DATA / "mixed.tle").open("rb") as stream:
        theirs = [(s.name, s.model.satnum) for s in parse_tle_file(stream)]
    assert [(r.name, r.catalog_number) for r in records] == [
        (name or f"SAT-{n}", n) for name, n in theirs]


def test_epoch_is_aware_utc_from_year_and_day() -> None:
    iss = load_tle_file(DATA / "mixed.tle")[0]
    expected = datetime(2018, 1, 1, tzinfo=UTC) + timedelta(days=135.61844383 - 1)
    assert iss.epoch.tzinfo is not None
    assert abs(iss.epoch - expected) <= ONE_MICROSECOND


def test_alpha5_catalogue_numbers(tmp_path: Path) -> None:
    # A = 10 in Alpha-5 (I and O skipped), so A0404 is 100404; Z9999 is the last: 339999.
    z = [with_checksum(line[:2] + "Z9999" + line[7:]) for line in STARLINK[1:]]
    records = load_tle_file(write(tmp_path, *STARLINK, *z))
    assert [r.catalog_number for r in records] == [100404, 339999]
    assert [r.name for r in records] == ["STARLINK-37821", "SAT-339999"]


def test_crlf_blank_lines_and_zero_prefixed_names(tmp_path: Path) -> None:
    path = tmp_path / "crlf.tle"
    path.write_bytes(("\r\n\r\n0 ISS (ZARYA)\r\n" + "\r\n".join(ISS[1:]) + "\r\n\r\n").encode())
    (record,) = load_tle_file(path)
    assert record.name == "ISS (ZARYA)"
    assert record.source == f"{path}:3"


def test_bad_checksum_names_file_line_and_expected_digit(tmp_path: Path) -> None:
    bad = ISS[1][:68] + str((int(ISS[1][68]) + 3) % 10)
    path = write(tmp_path, ISS[0], bad, ISS[2])
    assert problems_of(path) == [f"{path}:2: checksum is 1, expected 8 (last digit of line 1)"]


def test_wrong_line_length(tmp_path: Path) -> None:
    short = ISS[2][:20] + ISS[2][21:]
    path = write(tmp_path, ISS[0], ISS[1], short)
    assert problems_of(path) == [f"{path}:3: line 2 is 68 characters long, expected 69"]


def test_mismatched_catalogue_numbers(tmp_path: Path) -> None:
    other = with_checksum(ISS[2][:2] + "25545" + ISS[2][7:])
    path = write(tmp_path, ISS[1], other)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2: catalogue number 25545 on line 2 does not match 25544")


def test_garbage_line_between_records(tmp_path: Path) -> None:
    path = write(tmp_path, *ISS, "this is not a TLE", "neither is this", *STARLINK)
    problems = problems_of(path)
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:4: name line 'this is not a TLE' must be followed")


def test_truncated_file(tmp_path: Path) -> None:
    path = write(tmp_path, *ISS, *STARLINK[:2])
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:5: line 1 must be followed by line 2")
    assert "end of the file" in problem


def test_name_line_at_end_of_file(tmp_path: Path) -> None:
    path = write(tmp_path, *ISS, "STARLINK-37821")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:4: name line 'STARLINK-37821'")


def test_line_2_without_line_1(tmp_path: Path) -> None:
    path = write(tmp_path, ISS[2], *STARLINK)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:1: line 2 of a TLE without its line 1")


def test_every_problem_is_collected(tmp_path: Path) -> None:
    bad_sum = ISS[1][:68] + "0"
    bad_epoch = with_checksum(STARLINK[1][:22] + "x" + STARLINK[1][23:])
    path = write(tmp_path, ISS[0], bad_sum, ISS[2], STARLINK[0], bad_epoch, STARLINK[2],
                 "junk")
    problems = problems_of(path)
    assert len(problems) == 3
    assert [p.split(": ")[0] for p in problems] == [f"{path}:{n}" for n in (2, 5, 7)]
    assert "epoch day (columns 21-32 of line 1) is '26x.38590896'" in problems[1]
    with pytest.raises(ScenarioError, match=r"3 problem\(s\) in TLE file"):
        load_tle_file(path)


def test_elements_sgp4_cannot_use(tmp_path: Path) -> None:
    raan_407 = with_checksum(ISS[2][:17] + "407.0633" + ISS[2][25:])
    no_motion = with_checksum(STARLINK[2][:52] + "00.00000000" + STARLINK[2][63:])
    path = write(tmp_path, ISS[1], raan_407, STARLINK[1], no_motion)
    problems = problems_of(path)
    assert problems[0].startswith(f"{path}:1: elements out of range: nodeo = 7.10")
    assert problems[1].startswith(f"{path}:3: SGP4 rejects these elements")


def test_duplicate_catalogue_number(tmp_path: Path) -> None:
    path = write(tmp_path, *ISS, *ISS[1:])
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:4: catalogue number 25544 already loaded from {path}:1")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = write(tmp_path, "", "   ")
    assert problems_of(empty) == [f"{empty}:1: no TLEs found (expected lines starting '1 ' "
                                  "and '2 ')"]
    with pytest.raises(ScenarioError, match="cannot read TLE file"):
        load_tle_file(tmp_path / "absent.tle")


# ------------------------------------------------------------------------------------ OMM

@pytest.mark.parametrize("ext", ["csv", "json", "xml"])
def test_omm_formats_agree_with_the_tle(ext: str) -> None:
    records = load_omm_file(DATA / f"gp-sample.{ext}")
    assert [(r.name, r.catalog_number) for r in records] == [
        ("ISS (ZARYA)", 25544), ("STARLINK-37821", 100404), ("STARLINK-37829", 100405)]
    assert records[0].epoch == datetime(2026, 9, 20, 12, 42, 37, 141056, tzinfo=UTC)
    assert np.degrees(records[0].satrec.inclo) == pytest.approx(51.6308, abs=1e-9)
    # The Starlink rows carry the TLE's own numbers: same orbit for a day, to a centimetre.
    tle = load_tle_file(SCENARIO_DATA / "starlink-sample.tle")[0]
    assert records[1].epoch == tle.epoch
    for days in (0.0, 0.5, 1.0):
        _, r_omm, _ = records[1].satrec.sgp4(tle.satrec.jdsatepoch, tle.satrec.jdsatepochF + days)
        _, r_tle, _ = tle.satrec.sgp4(tle.satrec.jdsatepoch, tle.satrec.jdsatepochF + days)
        assert np.linalg.norm(np.subtract(r_omm, r_tle)) < ONE_CENTIMETRE_KM


def test_omm_sources_name_line_or_record() -> None:
    assert load_omm_file(DATA / "gp-sample.csv")[2].source == f"{DATA / 'gp-sample.csv'}:4"
    assert load_omm_file(DATA / "gp-sample.json")[2].source == f"{DATA / 'gp-sample.json'}[2]"


def test_omm_json_missing_field_and_bad_value(tmp_path: Path) -> None:
    data = json.loads((DATA / "gp-sample.json").read_text())
    del data[1]["MEAN_MOTION"]
    data[2]["INCLINATION"] = "fifty-three"
    path = tmp_path / "gp.json"
    path.write_text(json.dumps(data))
    assert problems_of(path, load_omm_file) == [
        f"{path}[1]: field MEAN_MOTION is missing or empty",
        f"{path}[2]: field INCLINATION is 'fifty-three', expected a number"]


def test_omm_csv_bad_value_names_line(tmp_path: Path) -> None:
    lines = (DATA / "gp-sample.csv").read_text().splitlines()
    lines[2] = lines[2].replace("2026-09-20T09:15:42.534144", "yesterday")
    path = write(tmp_path, *lines, name="gp.csv")
    (problem,) = problems_of(path, load_omm_file)
    assert problem.startswith(f"{path}:3: field EPOCH is 'yesterday', expected UTC ISO 8601")


def test_omm_csv_header_lacks_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "OBJECT_NAME,NORAD_CAT_ID", "X,1", name="gp.csv")
    (problem,) = problems_of(path, load_omm_file)
    assert problem.startswith(f"{path}:1: CSV header lacks column(s) EPOCH, MEAN_MOTION")


def test_omm_xml_missing_element_and_malformed(tmp_path: Path) -> None:
    text = (DATA / "gp-sample.xml").read_text()
    path = write(tmp_path, text.replace("<BSTAR>0.57128E-3</BSTAR>", ""), name="gp.xml")
    assert problems_of(path, load_omm_file) == [f"{path}[1]: field BSTAR is missing or empty"]
    broken = write(tmp_path, text.replace("</ndm>", ""), name="broken.xml")
    (problem,) = problems_of(broken, load_omm_file)
    assert problem.startswith(f"{broken}:")
    assert "not valid XML" in problem


def test_omm_unknown_extension_and_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"unsupported OMM file extension '\.kvn'"):
        load_omm_file(write(tmp_path, "CCSDS_OMM_VERS = 2.0", name="gp.kvn"))
    path = write(tmp_path, '{"OBJECT_NAME": "ISS"}', name="one.json")
    (problem,) = problems_of(path, load_omm_file)
    assert "expected a JSON list of OMM objects" in problem


# ------------------------------------------------------------------------------ staleness

def test_stale_epochs_two_weeks_either_side() -> None:
    records = load_tle_file(SCENARIO_DATA / "starlink-sample.tle")
    newest = max(r.epoch for r in records)
    assert stale_epochs(records, newest) == []
    at = datetime(2026, 9, 26, tzinfo=UTC)
    expected = sum(at - r.epoch > timedelta(days=14) for r in records)
    assert 0 < expected < len(records)
    warnings = stale_epochs(records, at)
    assert len(warnings) == expected
    assert "1-3 km per day" in warnings[0]
    assert len(stale_epochs(records, datetime(2026, 8, 1, tzinfo=UTC))) == len(records)


# ------------------------------------------------------------------------------------ planes

def walker_records(epoch: datetime, **shell: Any) -> list[ElementRecord]:
    sats = walker_satrecs(epoch=epoch, **shell)
    return [ElementRecord(f"W-{s.satnum}", s.satnum, s, epoch, f"walker:{i}")
            for i, s in enumerate(sats)]


def assert_same_shell(found: PlaneAssignment, planes: int, per_plane: int) -> None:
    """Recovered planes/slots equal the generating ones up to relabelling and cyclic shift."""
    true_plane = np.arange(planes * per_plane) // per_plane
    true_slot = np.arange(planes * per_plane) % per_plane
    assert found.planes == planes
    # same partition: each recovered plane holds exactly one generating plane
    pairs = {(int(a), int(b)) for a, b in zip(found.plane, true_plane, strict=True)}
    assert len(pairs) == planes
    relabel = np.array([b for _, b in sorted(pairs)])
    assert np.array_equal((relabel - relabel[0]) % planes, np.arange(planes))
    for p in range(planes):
        members = np.flatnonzero(found.plane == p)
        assert sorted(found.slot[members]) == list(range(per_plane))
        in_order = true_slot[members[np.argsort(found.slot[members])]]
        assert np.array_equal((in_order - in_order[0]) % per_plane, np.arange(per_plane))


def test_walker_delta_72x22_recovered_also_across_raan_zero() -> None:
    epoch = datetime(2026, 9, 20, tzinfo=UTC)
    records = walker_records(epoch, total=1584, planes=72, phasing=17, inclination_deg=53.0,
                             altitude_km=550.0)
    # At the epoch plane 0 straddles RAAN 0/360 (short-period J2 scatter), later it does not.
    for at in (epoch, epoch + timedelta(hours=5)):
        found = infer_planes(records, at)
        assert_same_shell(found, 72, 22)
        assert np.all(np.abs(found.inclination_deg - 53.0) < 0.1)


def test_walker_star_6x11_with_phasing() -> None:
    epoch = datetime(2026, 9, 20, tzinfo=UTC)
    records = walker_records(epoch, total=66, planes=6, phasing=2, inclination_deg=86.4,
                             altitude_km=780.0, pattern="star")
    found = infer_planes(records, epoch + timedelta(hours=1))
    assert_same_shell(found, 6, 11)
    # star pattern: RAANs span 150 deg; numbering starts after the 210 deg gap and increases
    plane_raan_deg = np.array([found.raan_deg[found.plane == p][0] for p in range(6)])
    from_first_deg = (plane_raan_deg - plane_raan_deg[0]) % 360.0
    assert np.all(np.diff(from_first_deg) > 0)
    assert from_first_deg[-1] == pytest.approx(150.0, abs=0.5)


def test_two_shells_are_split_by_inclination() -> None:
    epoch = datetime(2026, 9, 20, tzinfo=UTC)
    low = walker_records(epoch, total=24, planes=4, phasing=1, inclination_deg=53.0,
                         altitude_km=550.0)
    high = walker_records(epoch, total=24, planes=4, phasing=1, inclination_deg=70.0,
                          altitude_km=570.0, first_satnum=1000)
    found = infer_planes(low + high, epoch)
    assert found.planes == 8
    assert set(found.plane[:24]) == {0, 1, 2, 3}
    assert set(found.plane[24:]) == {4, 5, 6, 7}


def test_real_starlink_sample_groups_by_launch() -> None:
    records = load_tle_file(SCENARIO_DATA / "starlink-sample.tle")
    assert 150 <= len(records) <= 200
    found = infer_planes(records, datetime(2026, 9, 20, tzinfo=UTC))
    # each launch (international designator year+number) deploys its batch into one plane
    launches = [r.satrec.intldesg[:5] for r in records]
    assert found.planes == len(set(launches)) == 6
    pairs = {(int(p), launch) for p, launch in zip(found.plane, launches, strict=True)}
    assert len(pairs) == 6
    assert set(np.round(found.inclination_deg)) == {53.0, 70.0}


def test_propagation_failure_is_reported() -> None:
    records = load_tle_file(SCENARIO_DATA / "starlink-sample.tle")
    with pytest.raises(GeometryError, match="cannot be propagated"):
        infer_planes(records, datetime(2036, 9, 20, tzinfo=UTC))
    with pytest.raises(GeometryError, match="no satellites"):
        infer_planes([], datetime(2026, 9, 20, tzinfo=UTC))


# ------------------------------------------------------------------------------ mapping file

def test_mapping_round_trip(tmp_path: Path) -> None:
    epoch = datetime(2026, 9, 20, tzinfo=UTC)
    records = walker_records(epoch, total=66, planes=6, phasing=2, inclination_deg=86.4,
                             altitude_km=780.0, pattern="star")
    found = infer_planes(records, epoch)
    path = tmp_path / "planes.csv"
    write_plane_mapping(path, records, found)
    mapping = load_plane_mapping(path)
    assert mapping == {r.catalog_number: (int(p), int(s))
                       for r, p, s in zip(records, found.plane, found.slot, strict=True)}
    again = planes_from_mapping(records, epoch, mapping)
    assert np.array_equal(again.plane, found.plane)
    assert np.array_equal(again.slot, found.slot)
    assert again.planes == 6
    with pytest.raises(ScenarioError, match="has no plane in the mapping"):
        planes_from_mapping(records, epoch, {k: v for k, v in mapping.items() if k != 1})


def test_mapping_errors_name_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "catalog_number,plane,slot", "25544,0,0", "", "25544,1,0",
                 "100404,0,0", "100405,x,-1", "100406,1", name="planes.csv")
    assert problems_of(path, load_plane_mapping) == [
        f"{path}:4: catalogue number 25544 already mapped at line 2",
        f"{path}:5: plane 0 slot 0 already taken by line 2",
        f"{path}:6: plane 'x', slot '-1' is not a non-negative integer",
        f"{path}:7: 2 value(s), expected 3 (catalog_number,plane,slot)"]
    header = write(tmp_path, "norad,plane,slot", "25544,0,0", name="header.csv")
    assert problems_of(header, load_plane_mapping) == [
        f"{header}:1: header is 'norad,plane,slot', expected 'catalog_number,plane,slot'"]
