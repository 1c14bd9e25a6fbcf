"""An external broker (one the run does not own) killed mid-run and started again by its owner.

The launcher cannot restart it, but it must not be silent: the gap is an
``unplanned_broker_outage`` event with its start and end, said on stderr, and the run exits 1
with conservation ok; the workers and the launcher reconnect by themselves once it is back.
The broker here is a real mosquitto this test starts (and stops) by PID on a free loopback port.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker.embedded import free_loopback_port, probe_connack
from broker.mosquitto_conf import find_mosquitto
from orbitmesh.run.launch.local_broker import UNPLANNED_BROKER_ID
from tests.conftest import require_mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parent.parent
SCENARIO = PROJECT / "tests" / "data" / "live" / "fibre.yaml"
RUN_S = 30.0
DOWN_S = 2.0
"""Wall seconds the broker stays dead before its owner starts it again."""


def _mosquitto(config: Path, port: int) -> subprocess.Popen[bytes]:
    mosquitto = find_mosquitto()
    assert mosquitto is not None
    proc = subprocess.Popen([mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10.0
    while not probe_connack("127.0.0.1", port):
        assert proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
        time.sleep(0.05)
    return proc


def _wait_for_clock(port: int, run_id: str, timeout_s: float) -> None:
    got = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{run_id}")
    client.on_connect = lambda c, *_: c.subscribe(f"orbitmesh/{run_id}/clock")
    client.on_message = lambda *_: got.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert got.wait(timeout_s), "the run's clock never started"
    finally:
        client.loop_stop()
        client.disconnect()


def test_an_external_broker_lost_mid_run_is_named_and_fails_the_run(tmp_path: Path) -> None:
    require_mosquitto()
    port = free_loopback_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = _mosquitto(config, port)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orbitmesh", "run", str(SCENARIO), "--duration", str(RUN_S),
         "--workers", "2", "--broker", f"mqtt://127.0.0.1:{port}", "--fidelity-budget", "1000",
         "--out", str(run_dir), "--run-id", "extdeath", "--quiet"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_clock(port, "extdeath", timeout_s=60.0)
        time.sleep(4.0)
        broker.send_signal(signal.SIGKILL)
        broker.wait()
        time.sleep(DOWN_S)
        broker = _mosquitto(config, port)
        _out, err_bytes = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        broker.terminate()
        broker.wait(timeout=10)
    err = err_bytes.decode()
    assert proc.returncode == 1, err
    assert f"the broker (127.0.0.1:{port}) stopped answering" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    (event,) = summary["unplanned"]
    assert (event["id"], event["kind"], event["origin"]) == (
        UNPLANNED_BROKER_ID, "broker_lost", "unplanned")
    (outage,) = event["outages"]
    assert outage["end_s"] is not None and outage["end_s"] > outage["start_s"]
    assert summary["conservation_ok"], summary["conservation"]
    print(f"outage: {event['describe']}")
    # Everybody reconnected: traffic offered after the restart still got through.
    (flow,) = summary["flows"]
    assert flow["delivered"] / flow["offered"] > 0.7
    assert summary["run"]["workers_reported"] == 2
