"""A live run with the narrowed destination set: two real workers and a real mosquitto.

The demo routes toward 3 of its 6 ground nodes (tokyo, brussels and the ops centre); its flow,
telemetry and telecommands must still be carried and every frame accounted for. Fidelity is not
asserted: it depends on the machine's load, not on the set.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from orbitmesh.core.destinations import UNROUTED_DESTINATION, addressable_destinations
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.protocol.wire import DATA, encode_batch, new_frame
from orbitmesh.run.launch.control import locate
from orbitmesh.run.launch.local import RunOptions, run
from tests.conftest import require_mosquitto
from tests.test_live import PROJECT, read_events, wait_for_clock

pytestmark = pytest.mark.broker

DEMO = Path(__file__).resolve().parent.parent / "scenarios" / "demo.yaml"
INJECTED_FLOW = 1000
"""Not a scenario flow (docs/topics.md, injecting a frame by hand)."""
INJECTED_ID = 1 << 62 | 1


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
    # Against what the run really did: every frame offered went to a node of the set, or to a
    # satellite from a sender of the set (whose tree its source route is read from).
    chosen = set(addressable_destinations(topology.scenario, topology).tolist())
    offers = [r for r in read_events(result.run_dir) if r[0] == "offer"]
    assert offers
    ends = [(int(r[5]), int(r[6])) for r in offers]  # FIELD_NAMES["offer"]: source, destination
    roots = {dst if dst >= topology.n_satellites else src for src, dst in ends}
    assert roots <= chosen


def _inject_for_svalbard(tmp_path: Path, *extra: str) -> tuple[dict, int, bytes, Path]:
    """Run the demo (8 s) with ``extra`` options, inject tokyo -> svalbard by hand: summary,
    exit code, stdout and the run directory."""
    require_mosquitto()
    topology = build_topology(load_scenario(DEMO))
    tokyo, svalbard = topology.index["tokyo"], topology.index["svalbard"]
    run_dir, run_id = tmp_path / "run", "unrouted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orbitmesh", "run", str(DEMO), "--duration", "8", "--workers",
         "2", "--out", str(run_dir), "--run-id", run_id, "--quiet", *extra],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_clock(run_dir, run_id, timeout_s=60.0)
        time.sleep(2.0)  # scenario time has started: the workers hold a link state
        port = int(json.loads((run_dir / "run.json").read_text())["broker"].rsplit(":", 1)[1])
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{run_id}")
        operator = locate(str(run_dir), None)[1]
        client.username_pw_set(operator.username, operator.password)
        client.connect("127.0.0.1", port)
        client.loop_start()
        frame = new_frame(INJECTED_ID, DATA, INJECTED_FLOW, tokyo, svalbard, 200, time.time())
        client.publish(f"orbitmesh/{run_id}/node/tokyo/in",
                       encode_batch([(tokyo, frame)]), qos=1).wait_for_publish(10.0)
        client.loop_stop()
        client.disconnect()
        out, err = proc.communicate(timeout=120.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary, proc.returncode, out + err, run_dir


def test_a_frame_injected_for_a_left_out_station_is_counted_and_fails_the_run(
        tmp_path: Path) -> None:
    topology = build_topology(load_scenario(DEMO))
    chosen = set(addressable_destinations(topology.scenario, topology).tolist())
    assert topology.index["tokyo"] in chosen and topology.index["svalbard"] not in chosen
    summary, code, out, _ = _inject_for_svalbard(tmp_path)
    assert summary[UNROUTED_DESTINATION] == 1, summary
    assert summary["conservation_ok"]
    assert code == 1, out.decode()
    assert b"UNROUTED DESTINATIONS: 1" in out


def test_route_to_all_routes_a_frame_injected_for_any_station(tmp_path: Path) -> None:
    summary, _, out, run_dir = _inject_for_svalbard(tmp_path, "--route-to", "all")
    assert summary[UNROUTED_DESTINATION] == 0, out.decode()
    assert summary["conservation_ok"]
    # Its fate is the network's: delivered, or dropped for a reason of the network's own.
    fate = [r for r in read_events(run_dir) if r[0] in ("deliver", "drop") and
            int(r[2]) == INJECTED_ID]
    assert fate and all(UNROUTED_DESTINATION not in map(str, r) for r in fate), fate
