"""`orbitmesh export-geometry` and `trace export --format links-csv`.

CZML is checked for the packet structure Cesium reads, GeoJSON by the RFC 7946 structure, and
both against the core geometry: positions turned back into Earth-fixed vectors must land on
the SGP4 positions, and the links available at a sample time must be the link engine's.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitmesh.core.engine import TickEngine
from orbitmesh.core.geometry import Propagator, geodetic_to_ecef, offsets_to_jd
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import LINK_CLASSES, build_topology
from orbitmesh.run.cli import main
from orbitmesh.run.geometry_export import ecef_to_geodetic, sample_geometry, to_czml, to_geojson
from tests.test_run_report import hand_trace

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scenarios" / "demo.yaml"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
TEN_METRES_KM = 0.01
STEP_S = 30.0
SPAN_S = 600.0


@pytest.fixture(scope="module")
def geo() -> Any:
    topology = build_topology(load_scenario(DEMO))
    return sample_geometry(topology, EPOCH, EPOCH + timedelta(seconds=SPAN_S), STEP_S)


def _parse(when: str) -> datetime:
    return datetime.fromisoformat(when.replace("Z", "+00:00"))


def test_czml_packets(geo: Any) -> None:
    doc = json.loads(json.dumps(to_czml(geo)))  # what a file holds
    topo = geo.topology
    assert doc[0]["id"] == "document" and doc[0]["version"] == "1.0"
    start, end = (_parse(x) for x in doc[0]["clock"]["interval"].split("/"))
    assert (start, end) == (EPOCH, EPOCH + timedelta(seconds=SPAN_S))
    by_id = {p["id"]: p for p in doc[1:]}
    assert len(by_id) == len(doc) - 1  # ids are unique
    samples = int(SPAN_S // STEP_S) + 1
    for s in range(topo.n_satellites):
        values = by_id[topo.node_ids[s]]["position"]["cartographicDegrees"]
        assert len(values) == 4 * samples
        assert values[0::4] == [i * STEP_S for i in range(samples)]
    for node in topo.node_ids[topo.n_satellites:]:
        assert len(by_id[node]["position"]["cartographicDegrees"]) == 3
    links = [p for p in doc if p.get("properties", {}).get("kind") == "link"]
    assert links
    for p in links:
        refs = p["polyline"]["positions"]["references"]
        assert all(r.removesuffix("#position") in by_id for r in refs)
        a, b = (_parse(x) for x in p["availability"].split("/"))
        assert start <= a <= b <= end  # a link first seen at the last sample: a <= b


def test_positions_land_on_the_sgp4_positions(geo: Any) -> None:
    topo = geo.topology
    jd, fr = offsets_to_jd(topo.scenario.epoch, geo.t_s)
    truth = Propagator(topo.satrecs).ecef_km(jd, fr)  # (S, T, 3)
    back = geodetic_to_ecef(geo.lat_deg.ravel(), geo.lon_deg.ravel(), geo.alt_km.ravel())
    assert np.abs(back.reshape(truth.shape) - truth).max() < TEN_METRES_KM
    # The CZML rounding (6 decimals of a degree, ~0.1 m) keeps that.
    sat = json.loads(json.dumps(to_czml(geo)))[1]
    lon, lat, h_m = (np.array(sat["position"]["cartographicDegrees"][k::4]) for k in (1, 2, 3))
    again = geodetic_to_ecef(lat, lon, h_m / 1000.0)
    assert np.abs(again - truth[0]).max() < TEN_METRES_KM


def test_geodetic_round_trip_near_the_poles() -> None:
    lat = np.array([89.9999, -89.99, 0.0, 45.0, 90.0])
    lon = np.array([10.0, -170.0, 179.9, -45.0, 0.0])
    alt = np.array([550.0, 1200.0, 0.0, 35786.0, 400.0])
    got_lat, got_lon, got_alt = ecef_to_geodetic(geodetic_to_ecef(lat, lon, alt))
    assert np.allclose(got_lat, lat, atol=1e-7)
    assert np.allclose(got_alt, alt, atol=1e-5)
    assert np.allclose(got_lon[:4], lon[:4], atol=1e-7)  # longitude is undefined at the pole


def test_links_available_at_a_sample_are_the_engines(geo: Any) -> None:
    topo = geo.topology
    engine = TickEngine(topo, destinations=[], policies=[])
    lk = geo.links
    # [start, end) intervals; at the last sample (= the end of the span) "ends there" and
    # "lasts to the end" look alike, so it is left out.
    for t in geo.t_s[:-1]:
        state = engine.links.state_at(float(t))  # same order of calls as the export
        live = (lk.start_s <= t + 1e-9) & (lk.end_s > t + 1e-9)
        assert sorted(zip(lk.a[live].tolist(), lk.b[live].tolist(), lk.kind[live].tolist(),
                          strict=True)) == sorted(zip(state.a.tolist(), state.b.tolist(),
                                                      state.kind.tolist(), strict=True))


def test_geojson_structure(geo: Any) -> None:
    doc = json.loads(json.dumps(to_geojson(geo)))
    assert doc["type"] == "FeatureCollection"
    kinds: dict[str, int] = {}
    for f in doc["features"]:
        assert f["type"] == "Feature" and isinstance(f["properties"], dict)
        g = f["geometry"]
        kinds[f["properties"]["kind"]] = kinds.get(f["properties"]["kind"], 0) + 1
        lines = {"Point": [[g["coordinates"]]], "LineString": [g["coordinates"]],
                 "MultiLineString": g["coordinates"]}[g["type"]]
        for line in lines:
            assert g["type"] == "Point" or len(line) >= 2
            for lon, lat in line:
                assert -180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0
            jumps = np.abs(np.diff([p[0] for p in line]))
            if f["properties"]["kind"] == "satellite":
                assert (jumps < 180.0).all()  # split at the antimeridian
        if f["properties"]["kind"] == "link":
            assert f["properties"]["class"] in LINK_CLASSES
    topo = geo.topology
    assert kinds["satellite"] == topo.n_satellites
    assert kinds["station"] == topo.n_stations
    assert kinds["link"] == len(geo.links.a)


def test_cli_formats_and_bad_input(tmp_path: Path) -> None:
    for fmt in ("czml", "geojson", "csv"):
        out = tmp_path / f"g.{fmt}"
        assert main(["export-geometry", str(DEMO), "--format", fmt, "--step", "60",
                     "-o", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "g.csv").read_text())))
    topo = build_topology(load_scenario(DEMO))
    samples = int(load_scenario(DEMO).duration_s // 60) + 1
    assert len(rows) == topo.n_nodes - topo.n_satellites + topo.n_satellites * samples
    assert main(["export-geometry", str(DEMO), "--format", "czml", "--step", "0"]) == 2
    assert main(["export-geometry", str(DEMO), "--format", "czml",
                 "--start", "2025-01-01T00:00:00Z"]) == 2


def test_links_csv_of_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hand_trace(tmp_path / "run")
    out = tmp_path / "links.csv"
    assert main(["trace", "export", str(tmp_path / "run"), "--format", "links-csv",
                 "-o", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["t_s"], r["event"], r["a"], r["b"], r["class"]) for r in rows] == [
        ("0.0", "up", "sat-a", "sat-b", "isl"), ("0.0", "up", "tokyo", "sat-a", "gsl"),
        ("0.0", "up", "sat-b", "brussels", "gsl"), ("25.0", "down", "sat-a", "sat-b", "isl")]
    assert rows[0]["time"] == "2026-01-01T00:00:00.000Z" and rows[0]["delay_ms"] == "10.0"
    assert rows[3]["delay_ms"] == ""
    # A damaged timeline is bad input (exit 2), as for every trace reader.
    links = tmp_path / "run" / "links.msgpack"
    links.write_bytes(links.read_bytes()[:-7])
    assert main(["trace", "export", str(tmp_path / "run"), "--format", "links-csv"]) == 2
    capsys.readouterr()
    assert main(["trace", "export", str(tmp_path / "run"), "--format", "links-csv",
                 "--salvage"]) == 0
    assert "warning" in capsys.readouterr().err
