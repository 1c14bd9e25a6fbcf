"""An embedded broker killed with -9 mid-run (nobody's fault): the launcher restarts it, the
gap is charged to an ``unplanned_broker_outage`` event (not to a broker_outage fault nobody
injected), the workers reconnect by themselves, and the run exits 1 with conservation ok."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from nodes.runtime import BROKER_FAULT
from orbitmesh.run.launch.local_broker import UNPLANNED_BROKER_ID
from tests.test_live import pid_alive, wait_for_clock
from tests.test_process_failures import recorded_pids, start

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RUN_S = 30.0
KILL_AFTER_S = 4.0
"""Wall seconds after the clock starts: well inside the run, traffic flowing between workers."""
RESTART_WITHIN_S = 5.0
"""Poll period (0.2 s) + mosquitto start-up, with room for a loaded 2-core machine."""


def test_workers_and_launcher_agree_on_the_event_id() -> None:
    assert BROKER_FAULT == UNPLANNED_BROKER_ID


def test_a_broker_killed_by_nobody_is_restarted_named_and_fails_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start(run_dir, "brokerdeath", RUN_S)
    try:
        wait_for_clock(run_dir, "brokerdeath", timeout_s=60.0)
        time.sleep(KILL_AFTER_S)
        victim = recorded_pids(run_dir)["broker"]
        killed_wall = time.time()
        os.kill(victim, signal.SIGKILL)
        _out, err_bytes = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        for pid in recorded_pids(run_dir).values() if (run_dir / "pids.json").exists() else ():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    err = err_bytes.decode()
    assert proc.returncode == 1, err
    summary = json.loads((run_dir / "summary.json").read_text())
    (event,) = summary["unplanned"]
    assert (event["id"], event["kind"], event["origin"]) == (
        UNPLANNED_BROKER_ID, "broker_lost", "unplanned")
    (outage,) = event["outages"]
    assert outage["pid"] == victim and outage["exit"] == "signal 9"
    assert 0.0 < outage["restart_wall_s"] < RESTART_WITHIN_S
    assert f"embedded broker (pid {victim}) died" in err
    print(f"restart took {outage['restart_wall_s']} s wall; event {event['describe']}")
    # A fresh broker serves the rest of the run (recorded by its new PID), and is gone now.
    new_broker = recorded_pids(run_dir)["broker"]
    assert new_broker != victim and not pid_alive(new_broker)
    # Nothing is charged to a fault nobody injected; the gap is the unplanned event's.
    assert summary["conservation_ok"], summary["conservation"]
    assert [f["id"] for f in summary["faults"]] == [UNPLANNED_BROKER_ID]
    (impact,) = summary["faults"]
    charged = impact["dropped"] + impact["lost_in_process"]
    print(f"charged to the outage: {impact['dropped']} dropped, "
          f"{impact['lost_in_process']} lost in the broker")
    assert charged > 0  # frames crossed between workers every 40 ms while it was down
    assert summary["run"]["workers_reported"] == 2
    # The workers reconnected by themselves: traffic offered after the restart got through.
    (flow,) = summary["flows"]
    assert flow["delivered"] / flow["offered"] > 0.8
    assert killed_wall - summary["run"]["t0_wall"] < RUN_S / 2
    for log in run_dir.glob("worker-*.log"):
        assert "Traceback" not in log.read_text(), log
