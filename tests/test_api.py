"""The notebook API (orbitmesh.load / open_trace): it answers what the CLI answers, its rows
agree with the core geometry, and every code block of docs/python-api.md runs."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import orbitmesh
from orbitmesh.core.geometry import C_KM_S, Propagator, elevation_deg, offsets_to_jd
from orbitmesh.core.links import LinkEngine
from orbitmesh.errors import RunError, ScenarioError
from orbitmesh.run.cli import main
from tests.test_run_report import hand_trace

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scenarios" / "demo.yaml"
PASS = ROOT / "tests" / "data" / "live" / "pass.yaml"
ONE_MICROSECOND_MS = 1e-3
HUNDREDTH_DEG = 0.01


@pytest.fixture(scope="module")
def demo() -> orbitmesh.ScenarioHandle:
    return orbitmesh.load(DEMO)


def _cli_json(argv: list[str]) -> object:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def test_path_is_what_the_cli_prints(demo: orbitmesh.ScenarioHandle) -> None:
    rows = demo.path("tokyo", "brussels", start=0, end=300, step_s=60)
    cli = _cli_json(["path", str(DEMO), "tokyo", "brussels", "--start", "2026-01-01T00:00:00Z",
                     "--end", "2026-01-01T00:05:00Z", "--step", "60", "--format", "json"])
    assert rows == cli
    assert len(rows) == 6


def test_path_delays_are_the_links_light_time(demo: orbitmesh.ScenarioHandle) -> None:
    row = demo.path("tokyo", "brussels", at=120)[0]
    assert row["path"][0] == "tokyo" and row["path"][-1] == "brussels"
    topo = demo.topology
    pos = LinkEngine(topo).positions_ecef_km(120.0)
    ground = topo.stations.positions_ecef_km

    def where(node: str) -> np.ndarray:
        i = topo.index[node]
        return pos[i] if i < topo.n_satellites else ground[i - topo.n_satellites]
    # Tokyo to Brussels goes by radio only (no fibre hop): light time over the straight line.
    for (a, b), delay_ms in zip(zip(row["path"], row["path"][1:], strict=False),
                                row["hop_delays_ms"], strict=True):
        km = float(np.linalg.norm(where(a) - where(b)))
        assert delay_ms == pytest.approx(km / C_KM_S * 1000.0, abs=ONE_MICROSECOND_MS)
    assert row["rtt_ms"] == pytest.approx(2 * row["one_way_ms"])


def test_links_columns(demo: orbitmesh.ScenarioHandle) -> None:
    links = demo.links(at=60)
    n = len(links["a"])
    assert n > 0 and all(len(v) == n for v in links.values())
    assert set(links["class"]) <= {"isl", "gsl", "terrestrial"}
    engine = LinkEngine(demo.topology)
    for t in range(60):  # a run's GSL history: sticky handover keeps earlier choices
        engine.state_at(float(t))
    state = engine.state_at(60.0)
    assert n == len(state)
    assert np.allclose(np.sort(links["delay_ms"]), np.sort(state.delay_s * 1000.0))
    with pytest.raises(ScenarioError):
        demo.links(at=-5)


def test_contacts_are_passes_above_the_mask() -> None:
    sc = orbitmesh.load(PASS)
    passes = sc.contacts(0, 3 * 3600)
    assert passes, "pass.yaml's satellite sees its station within minutes"
    topo = sc.topology
    mask = sc.scenario.stations[0].min_elevation_deg
    prop = Propagator(topo.satrecs)
    for p in passes:
        t = [(p[k] - sc.scenario.epoch).total_seconds() for k in ("aos", "tca", "los")]
        jd, fr = offsets_to_jd(sc.scenario.epoch, t)
        el = elevation_deg(topo.stations, prop.ecef_km(jd, fr))[0, 0]
        assert el[0] == pytest.approx(mask, abs=HUNDREDTH_DEG)
        assert el[2] == pytest.approx(mask, abs=HUNDREDTH_DEG)
        assert el[1] == pytest.approx(p["max_elevation_deg"], abs=HUNDREDTH_DEG)
        assert p["duration_s"] == pytest.approx(t[2] - t[0])
    with pytest.raises(ScenarioError, match="unknown station"):
        sc.contacts(0, 600, stations=["nowhere"])


def test_bad_input_names_the_problem(demo: orbitmesh.ScenarioHandle, tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="unknown node"):
        demo.path("tokyo", "atlantis")
    with pytest.raises(ScenarioError, match="either at= or start="):
        demo.path("tokyo", "brussels", at=0, start=0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO.read_text().replace("duration_s: 60", "duration_s: -1"))
    with pytest.raises(ScenarioError, match="duration_s"):
        orbitmesh.load(bad)


def test_open_trace_rows_and_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrote = hand_trace(tmp_path / "runs" / "hand-2")
    monkeypatch.chdir(tmp_path)
    tr = orbitmesh.open_trace("hand-2")  # a bare run id, as `status`/`down` take
    ok = wrote["fate"] == "deliver"
    d = tr.deliveries()
    assert len(d["t_s"]) == int(ok.sum()) and set(d["flow"]) == {"tokyo-brussels"}
    assert np.allclose(np.sort(d["latency_ms"]), np.sort(wrote["latency"][ok]))
    events = tr.events()
    assert len(events) == 2 * len(ok)  # one offer and one outcome per frame
    assert [e["t_s"] for e in events] == sorted(e["t_s"] for e in events)
    drops = tr.events(kinds=["drop"])
    assert sorted(e["reason"] for e in drops) == sorted(wrote["fate"][~ok].tolist())
    assert [r["event"] for r in tr.links()] == ["up", "up", "up", "down"]
    with pytest.raises(RunError, match=r"no summary\.json"):
        _ = tr.summary


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page, flags=re.S)


def test_docs_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = (ROOT / "docs" / "python-api.md").read_text()
    blocks = _blocks(page)
    assert len(blocks) >= 8
    hand_trace(tmp_path / "runs" / "demo")
    (tmp_path / "runs" / "demo" / "summary.json").write_text(json.dumps(
        {"version": "1.1", "flows": [{"name": "tokyo-brussels", "delivery_ratio": 0.8,
                                      "latency_ms": {"p50": 65.0}}]}))
    (tmp_path / "scenarios").symlink_to(ROOT / "scenarios")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, "docs/python-api.md", "exec"), namespace)
    printed = out.getvalue()
    assert "<orbitmesh scenario 'demo': 64 satellites" in printed
    assert "tokyo-brussels 0.8 65.0" in printed
    assert not math.isnan(float(re.search(r"p50 ([0-9.]+) ms", printed).group(1)))  # type: ignore[union-attr]
