"""A live run with the narrowed destination set: two real workers and a real mosquitto.

The demo routes toward 3 of its 6 ground nodes (tokyo, brussels and the ops centre); its flow,
telemetry and telecommands must still be carried and every frame accounted for. Fidelity is not
asserted: it depends on the machine's load, not on the set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orbitmesh.core.destinations import UNROUTED_DESTINATION, addressable_destinations
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.run.launch.local import RunOptions, run
from tests.conftest import require_mosquitto

pytestmark = pytest.mark.broker

DEMO = Path(__file__).resolve().parent.parent / "scenarios" / "demo.yaml"


def test_demo_conserves_every_frame_with_the_narrowed_set(tmp_path: Path) -> None:
    require_mosquitto()
    topology = build_topology(load_scenario(DEMO))
    assert addressable_destinations(topology.scenario, topology).size < \
        topology.ground_endpoints.size  # else this run would not narrow anything
    result = run(RunOptions(scenario=DEMO, duration_s=20.0, speed=2.0, workers=2,
                            out=tmp_path / "run", progress=False))
    summary = result.summary
    assert summary["conservation_ok"], summary["conservation"]
    assert summary[UNROUTED_DESTINATION] == 0
    assert all(UNROUTED_DESTINATION not in f["dropped"] for f in summary["flows"])
    assert summary["flows"][0]["delivered"] > 0
    assert summary["telemetry"]["delivered"] > 0
    assert summary["telecommands"]["acked"] > 0
