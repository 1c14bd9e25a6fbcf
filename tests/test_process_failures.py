"""Failures from outside, with real processes: kill -9 of the launcher and of a worker.

A launcher killed with -9 takes its broker and workers with it (parent-death signal); a worker
killed by nobody's fault is named in the summary (index, PID, signal), routed around, its frames
charged to it, and the run exits 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_mosquitto
from tests.test_live import PROJECT, pid_alive, wait_for_clock

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SCENARIO = Path(__file__).parent / "data" / "live" / "fibre.yaml"
GONE_WITHIN_S = 30.0
"""Workers drain (at most 3 s for end markers, 3 s for the final status) before they exit."""


def start(run_dir: Path, run_id: str, duration_s: float) -> subprocess.Popen[bytes]:
    """`orbitmesh run` on the fibre scenario with two workers, as its own process group."""
    require_mosquitto()
    return subprocess.Popen(
        [sys.executable, "-m", "orbitmesh", "run", str(SCENARIO), "--duration", str(duration_s),
         "--workers", "2", "--out", str(run_dir), "--run-id", run_id, "--quiet"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def recorded_pids(run_dir: Path) -> dict[str, int]:
    """Workers and broker by PID, as the run recorded them."""
    pids: dict[str, int] = json.loads((run_dir / "pids.json").read_text())
    return pids


def test_a_launcher_killed_with_minus_9_leaves_nothing_running(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start(run_dir, "orphan", 600)
    try:
        wait_for_clock(run_dir, "orphan", timeout_s=60.0)
        pids = recorded_pids(run_dir)
        assert {"w0", "w1", "broker"} <= set(pids)
        proc.kill()  # SIGKILL: no handler runs
        proc.wait(timeout=10)
        deadline = time.monotonic() + GONE_WITHIN_S
        while any(pid_alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"gone after {time.monotonic() - deadline + GONE_WITHIN_S:.1f} s")
        left = {name: p for name, p in pids.items() if pid_alive(p)}
        assert not left, f"still running after the launcher died: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        for pid in recorded_pids(run_dir).values() if (run_dir / "pids.json").exists() else ():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_killed_by_nobody_is_named_and_fails_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start(run_dir, "unplanned", 40)
    try:
        wait_for_clock(run_dir, "unplanned", timeout_s=60.0)
        time.sleep(2.0)
        victim = recorded_pids(run_dir)["w1"]
        os.kill(victim, signal.SIGKILL)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, err.decode()
    summary = json.loads((run_dir / "summary.json").read_text())
    (event,) = summary["unplanned"]
    assert event["kind"] == "worker_lost" and event["target"] == {"worker": 1}
    assert event["pid"] == victim and event["exit"] == "signal 9"
    assert summary["conservation_ok"], summary["conservation"]
    assert f"worker 1 (pid {victim}) was lost" in err.decode()
