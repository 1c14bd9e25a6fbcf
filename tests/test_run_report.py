"""`orbitmesh report` and `compare --html`: every figure is on the page, the page names no URL,
the PNGs open, and the numbers behind the plots are the trace's own.

A hand-made trace (seeded random events in the documented record format) checks what is read
against what was written; one real run (pass.yaml, 20 s) checks the command end to end.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import matplotlib.image
import msgpack
import numpy as np
import pytest

from orbitmesh.run.cli import main
from orbitmesh.run.report_data import delivered_by_offer_time, read_run, tc_round_trips
from orbitmesh.run.report_figures import FIGURES, coastline_arcs

ROOT = Path(__file__).resolve().parent.parent
PASS = ROOT / "tests" / "data" / "live" / "pass.yaml"
FIGURE_IDS = [f[0] for f in FIGURES]
T0_WALL, SPEED = 5000.0, 4.0
URL = re.compile(rb"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|https?:")


def hand_trace(run_dir: Path, seed: int = 7, frames: int = 400) -> dict[str, Any]:
    """A finished trace of ``frames`` offers of flow 0; returns what was written, for checks."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    nodes = ["tokyo", "sat-a", "sat-b", "brussels"]
    manifest = {"format": "orbitmesh-trace", "version": "1.0", "run_id": "hand",
                "scenario": "hand", "epoch": "2026-01-01T00:00:00Z", "speed": SPEED,
                "duration_s": 60.0, "tick_s": 1.0, "seed": seed, "t0_wall": T0_WALL,
                "node_ids": nodes,
                "flows": [{"index": 0, "name": "tokyo-brussels", "source": "tokyo",
                           "destination": "brussels", "policy": None}],
                "builtin_flows": {"-1": "telemetry", "-2": "telecommands", "-3": "acks"},
                "faults": [{"id": "cut", "kind": "link_down", "start_s": 20.0, "end_s": 30.0,
                            "target": {"a": "tokyo", "b": "sat-a"}, "origin": "scheduled"}],
                "complete": True, "interrupted": False}
    (run_dir / "trace.json").write_text(json.dumps(manifest))
    offer_s = np.sort(rng.uniform(0, 60, frames))
    fate = rng.choice(["deliver", "queue", "link_down"], frames, p=[0.8, 0.1, 0.1])
    latency = rng.uniform(40, 90, frames)
    late = rng.exponential(0.5, frames)
    records: list[list[Any]] = []
    for i in range(frames):
        wall = T0_WALL + offer_s[i] / SPEED
        records.append(["offer", wall, i, 0, 0, 0, 3, 500])
        if fate[i] == "deliver":
            records.append(["deliver", wall + latency[i] / 1000 / SPEED, i, 0, 3, 2,
                            float(latency[i]), float(late[i]), float(latency[i]) - 1, 0.0])
        else:
            records.append(["drop", wall + 0.001, i, 0, 1, str(fate[i]), None])
    body = b"".join(msgpack.packb(r) for r in records)
    (run_dir / "events-w0.msgpack").write_bytes(body)
    delivered = fate == "deliver"
    stats = {"worker": 0, "final": True, "flows": {"0": {
        "offered": frames, "delivered": int(delivered.sum()),
        "dropped": {r: int((fate == r).sum()) for r in ("queue", "link_down")},
        "suppressed": {}}}, "telecommand_rtt_ms": {"samples": [120.0, 130.0]}}
    (run_dir / "stats-w0.json").write_text(json.dumps(stats))
    # Two ISLs and a GSL come up; one ISL goes down at 25 s; route changes at 10 and 25 s.
    links = []
    for t in range(61):
        up = [["sat-a", "sat-b", 0, 0.01], ["tokyo", "sat-a", 1, 0.004],
              ["sat-b", "brussels", 1, 0.004]] if t == 0 else []
        down = [["sat-a", "sat-b", 0]] if t == 25 else []
        links.append({"t_s": float(t), "up": up, "changed": [], "down": down,
                      "handovers": 1 if t == 40 else 0,
                      "route_changes": 1 if t in (10, 25) else 0})
    (run_dir / "links.msgpack").write_bytes(b"".join(msgpack.packb(r) for r in links))
    return {"offer_s": offer_s, "fate": fate, "latency": latency, "late": late,
            "deliver_s": offer_s + latency / 1000}


def _pngs(html: bytes) -> dict[str, bytes]:
    found = re.findall(rb'<figure id="fig-([a-z]+)">.*?base64,([A-Za-z0-9+/=]+)"', html)
    return {k.decode(): base64.b64decode(v) for k, v in found}


def test_read_run_keeps_the_traces_numbers(tmp_path: Path) -> None:
    wrote = hand_trace(tmp_path / "run")
    data = read_run(tmp_path / "run")
    ok = wrote["fate"] == "deliver"
    one_microsecond = 1e-6
    assert np.allclose(data.offer_t_s, wrote["offer_s"], atol=one_microsecond)
    assert np.allclose(np.sort(data.deliver_t_s), np.sort(wrote["deliver_s"][ok]),
                       atol=one_microsecond)
    assert np.allclose(data.deliver_latency_ms, wrote["latency"][ok])
    assert np.allclose(data.deliver_late_ms, wrote["late"][ok])
    drops = {r: int(np.count_nonzero(data.drop_reason == k)) for k, r in enumerate(data.reasons)}
    assert drops == {r: int((wrote["fate"] == r).sum()) for r in ("queue", "link_down")}
    # Link counts are rebuilt from the diffs: one ISL until it goes down at 25 s.
    assert data.links_up["isl"][:25].tolist() == [1] * 25
    assert data.links_up["isl"][25:].tolist() == [0] * 36
    assert data.links_up["gsl"].tolist() == [2] * 61
    assert np.flatnonzero(data.route_changes).tolist() == [10, 25]
    assert data.tc_rtt_ms.tolist() == [120.0, 130.0]
    edges = np.arange(0.0, 61.0, 10.0)
    offered, delivered = delivered_by_offer_time(data, 0, edges)
    bins = np.digitize(wrote["offer_s"], edges) - 1
    assert offered.tolist() == np.bincount(bins, minlength=6)[:6].tolist()
    assert delivered.tolist() == np.bincount(bins[ok], minlength=6)[:6].tolist()


def test_telecommand_round_trips_pair_each_ack_with_its_telecommand(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hand_trace(run)
    rng = np.random.default_rng(3)
    sent_s = np.sort(rng.uniform(0, 50, 12))
    rtt_ms = rng.uniform(100, 300, 12)
    extra: list[list[Any]] = []
    for i, (t, rtt) in enumerate(zip(sent_s, rtt_ms, strict=True)):
        tc, ack, wall = 10_000 + i, 20_000 + i, T0_WALL + t / SPEED
        extra += [["offer", wall, tc, -2, 1, 0, 1, 64],
                  ["deliver", wall + rtt / 2000 / SPEED, tc, -2, 1, 1, rtt / 2, 0.0, 1.0, 0.0],
                  ["offer", wall + rtt / 2000 / SPEED, ack, -3, 2, 1, 0, 16, tc],
                  ["deliver", wall + rtt / 1000 / SPEED, ack, -3, 0, 1, rtt / 2, 0.0, 1.0, 0.0]]
    stream = run / "events-w0.msgpack"
    stream.write_bytes(stream.read_bytes() + b"".join(msgpack.packb(r) for r in extra))
    stats = json.loads((run / "stats-w0.json").read_text())
    for flow in ("-2", "-3"):
        stats["flows"][flow] = {"offered": 12, "delivered": 12, "dropped": {}, "suppressed": {}}
    (run / "stats-w0.json").write_text(json.dumps(stats))
    got_sent, got_rtt = tc_round_trips(read_run(run))
    one_microsecond_ms = 1e-3
    assert np.allclose(got_sent, sent_s, atol=1e-6)
    assert np.allclose(got_rtt, rtt_ms, atol=one_microsecond_ms)


def test_coastlines_are_the_vendored_natural_earth_outline() -> None:
    arcs = coastline_arcs()
    points = np.concatenate(arcs)
    assert points[:, 0].min() >= -180.0 and points[:, 0].max() <= 180.0
    assert all((np.abs(np.diff(a[:, 0])) <= 180.0).all() for a in arcs)
    # The Cape of Good Hope (18.47 E, 34.36 S) is on the outline, within half a degree.
    cape = np.hypot(points[:, 0] - 18.47, points[:, 1] + 34.36).min()
    assert cape < 0.5


def test_report_page_has_every_figure_and_no_url(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    hand_trace(tmp_path / "run")
    out, png_dir = tmp_path / "r.html", tmp_path / "png"
    assert main(["report", str(tmp_path / "run"), "-o", str(out), "--png", str(png_dir)]) == 0
    html = out.read_bytes()
    assert URL.search(html) is None, URL.search(html)
    pngs = _pngs(html)
    assert sorted(pngs) == sorted(FIGURE_IDS)
    for fig_id in FIGURE_IDS:
        image = matplotlib.image.imread(png_dir / f"{fig_id}.png")
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert (png_dir / f"{fig_id}.png").read_bytes() == pngs[fig_id]
        assert image.std() > 0.01  # not a blank canvas
    err = capsys.readouterr().err
    # The hand trace has no scenario.yaml: the map says so instead of drawing nothing silently.
    assert "map: cannot load" in err
    assert f"{int(np.count_nonzero(read_run(tmp_path / 'run').deliver_flow == 0))} deliveries" \
        in err


def test_report_of_a_missing_or_damaged_trace_exits_2(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.html")]) == 2
    hand_trace(tmp_path / "run")
    stream = tmp_path / "run" / "events-w0.msgpack"
    body = bytearray(stream.read_bytes())
    body[40:48] = b"\xc1" * 8  # 0xc1 is never valid msgpack
    stream.write_bytes(bytes(body))
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "y.html")]) == 2
    assert not (tmp_path / "y.html").exists()
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "y.html"),
                 "--salvage"]) == 0


def test_report_takes_a_bare_run_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hand_trace(tmp_path / "runs" / "hand-1")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "hand-1"]) == 0
    assert (tmp_path / "runs" / "hand-1" / "report.html").is_file()


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real 20 s run of pass.yaml (embedded mosquitto), shared by the tests below."""
    from tests.conftest import require_mosquitto

    require_mosquitto()
    run = tmp_path_factory.mktemp("report") / "run"
    assert main(["run", str(PASS), "--duration", "20", "--speed", "5", "--out", str(run),
                 "--quiet"]) == 0
    return run


@pytest.mark.broker
@pytest.mark.slow
def test_report_of_a_real_run(live_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(live_run), "-o", str(out), "--png", str(tmp_path / "png")]) == 0
    html = out.read_bytes()
    assert URL.search(html) is None
    assert sorted(_pngs(html)) == sorted(FIGURE_IDS)
    for fig_id in FIGURE_IDS:
        assert matplotlib.image.imread(tmp_path / "png" / f"{fig_id}.png").std() > 0.01
    summary = json.loads((live_run / "summary.json").read_text())
    data = read_run(live_run)
    # What the plots count is what the summary counted.
    assert int(np.count_nonzero(data.offer_flow == -1)) == summary["telemetry"]["generated"]
    assert len(data.tick_t_s) == summary["links"]["ticks"]
    assert data.warnings == []  # the map found scenario.yaml and the link timeline


@pytest.mark.broker
@pytest.mark.slow
def test_compare_html_puts_runs_side_by_side(live_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "side.html"
    assert main(["compare", str(live_run), str(live_run), "--html", str(out)]) == 0
    html = out.read_bytes()
    assert URL.search(html) is None
    for fig_id in FIGURE_IDS:
        assert html.count(f'id="fig-{fig_id}"'.encode()) == 1
    assert html.count(b"data:image/png;base64,") == 2 * len(FIGURE_IDS)
