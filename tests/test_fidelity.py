"""Honest results on the demo: a run past its fidelity budget fails and says so, the same run
at speed 1 passes, latencies are the geometry's, and a fault at a flow's source is on the books.

These runs use the real launcher, a real mosquitto and two worker processes.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from orbitmesh.run.cli import main as cli_main
from tests.conftest import require_mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.yaml"


def run_cli(*argv: str) -> tuple[int, str]:
    """``orbitmesh run ...`` in this process: exit code and what it printed."""
    require_mosquitto()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["run", *argv, "--workers", "2", "--quiet"])
    return code, out.getvalue()


def summary_of(run_dir: Path) -> dict:  # type: ignore[type-arg]
    import json

    return json.loads((run_dir / "summary.json").read_text())  # type: ignore[no-any-return]


def test_a_run_pushed_past_its_budget_fails_and_says_so(tmp_path: Path) -> None:
    code, printed = run_cli(str(DEMO), "--speed", "50", "--duration", "60",
                            "--out", str(tmp_path / "fast"))
    s = summary_of(tmp_path / "fast")
    assert s["conservation_ok"], printed
    assert code == 1
    assert s["fidelity"]["ok"] is False
    assert s["fidelity"]["hop_excess_ms"]["p99"] > s["fidelity"]["budget_ms"]
    assert printed.splitlines()[-2].startswith("FIDELITY BUDGET BROKEN: hop excess p99")
    assert "lower --speed" in printed


def test_the_demo_at_speed_1_keeps_its_budget_and_the_geometry(tmp_path: Path) -> None:
    code, printed = run_cli(str(DEMO), "--speed", "1", "--duration", "12",
                            "--out", str(tmp_path / "real"))
    s = summary_of(tmp_path / "real")
    assert s["conservation_ok"], printed
    assert s["fidelity"]["ok"] is True, s["fidelity"]
    assert code == 0
    assert printed.splitlines()[-2].startswith("fidelity: ok")
    flow = s["flows"][0]
    # The emulated latency is the path's propagation plus serialisation: tokyo-brussels over a
    # 1,000 km shell is ~57 ms of light time, and 200-1,200 B frames add well under 1 ms.
    geometric = flow["geometric_one_way_ms"]
    assert 40.0 < geometric["p50"] < 80.0
    assert 0.0 <= flow["latency_ms"]["p50"] - geometric["p50"] < 1.0
    assert flow["excess_ms"]["p99"] <= s["fidelity"]["budget_ms"]


def test_a_fault_at_the_source_is_counted_not_hidden(tmp_path: Path) -> None:
    scenario = tmp_path / "outage.yaml"
    scenario.write_text(DEMO.read_text() + """
faults:
  - {id: tokyo-down, kind: station_outage, station: tokyo, at_s: 5, for_s: 10}
fidelity: {budget_ms: 1000, link_apply_budget_ms: 5000, startup_budget_ms: 60000}
""")
    run_cli(str(scenario), "--speed", "4", "--duration", "20", "--out", str(tmp_path / "o"))
    s = summary_of(tmp_path / "o")
    assert s["conservation_ok"]
    flow = s["flows"][0]
    suppressed = flow["suppressed_by_fault"]["tokyo-down"]
    # Poisson at 20 frames/s: about 200 frames fall in the 10 s outage and about 200 outside.
    assert 120 < suppressed < 280
    assert flow["intended"] == flow["offered"] + suppressed
    assert flow["delivery_ratio_intended"] == pytest.approx(
        flow["delivered"] / flow["intended"], abs=1e-6)
    assert flow["delivery_ratio_intended"] < 0.75
    fault = next(f for f in s["faults"] if f["id"] == "tokyo-down")
    assert "tokyo-brussels" in fault["flows_affected"]
    assert fault["suppressed_by_flow"]["tokyo-brussels"] == suppressed
