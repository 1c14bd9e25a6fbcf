"""Replays reproduce a run: same trace, same scenario and seed -> same deliveries and links."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orbitmesh.errors import ScenarioError
from orbitmesh.run.launch.local import RunOptions, RunResult, run
from orbitmesh.run.launch.replay import recorded_faults
from orbitmesh.run.trace import Offered, iter_records, offered_traffic

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scenarios" / "demo.yaml"
ONE_PERCENT = 0.01


def _run(out: Path, **extra: Any) -> RunResult:
    return run(RunOptions(scenario=DEMO, duration_s=12, speed=3, workers=2, out=out,
                          progress=False, **extra))


def _timeline(run_dir: Path) -> list[tuple[Any, ...]]:
    return [(r["t_s"], sorted(map(tuple, r["up"])), sorted(map(tuple, r["down"])),
             sorted(map(tuple, r["changed"]))) for r in iter_records(run_dir / "links.msgpack")]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return _run(tmp_path_factory.mktemp("orig") / "run")


def test_replay_reproduces_deliveries_and_link_timeline(original: RunResult,
                                                         tmp_path: Path) -> None:
    offered = offered_traffic(original.run_dir)
    assert offered, "the demo offers user traffic"
    replay = _run(tmp_path / "replay", replay=offered, replay_origin=str(original.run_dir))
    # Replay, not timing, is under test here (tests/test_fidelity.py holds the budget).
    assert replay.summary["conservation_ok"]
    before = {f["name"]: f for f in original.summary["flows"]}
    after = {f["name"]: f for f in replay.summary["flows"]}
    assert set(before) == set(after)
    for name, flow in before.items():
        assert after[name]["offered"] == flow["offered"]
        assert abs(after[name]["delivered"] - flow["delivered"]) <= ONE_PERCENT * flow["offered"]
    assert _timeline(replay.run_dir) == _timeline(original.run_dir)
    # The replayed frames go out at the recorded scenario times (within the timer's precision).
    again = offered_traffic(replay.run_dir)
    assert [o.size for o in again] == [o.size for o in offered]
    assert max(abs(a.t_s - b.t_s) for a, b in zip(again, offered, strict=True)) < 0.05


def test_links_from_replays_the_recorded_timeline(original: RunResult, tmp_path: Path) -> None:
    replay = _run(tmp_path / "links", replay=offered_traffic(original.run_dir),
                  links_from=original.run_dir)
    assert replay.summary["conservation_ok"]
    assert _timeline(replay.run_dir) == _timeline(original.run_dir)


def test_faults_from_repeats_recorded_faults(tmp_path: Path) -> None:
    scenario = tmp_path / "faulty.yaml"
    scenario.write_text(DEMO.read_text().replace(
        "\ntraffic:", "\nfaults:\n  - {kind: station_outage, station: tokyo, at_s: 3, for_s: 4}"
                      "\n\ntraffic:"))
    first = run(RunOptions(scenario=scenario, duration_s=10, speed=3, workers=2,
                           out=tmp_path / "first", progress=False))
    faults = recorded_faults(first.run_dir)
    assert [f["kind"] for f in faults] == ["station_outage"]
    again = _run(tmp_path / "again", replay=offered_traffic(first.run_dir), replay_faults=faults)
    assert [(f["id"], f["kind"], f["start_s"], f["end_s"]) for f in again.summary["faults"]] == [
        (f["id"], f["kind"], f["start_s"], f["end_s"]) for f in faults]


def test_replay_into_a_scenario_without_the_nodes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="nodes the scenario does not have"):
        _run(tmp_path / "bad", replay=[Offered(1.0, "x", "nowhere", "brussels", 100)],
             replay_origin="test")
