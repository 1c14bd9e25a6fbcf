"""Endpoint timing: the per-packet stage trace (ORBITMESH_ENDPOINT_TRACE) and the worker's timer
slack, the pieces bench/endpoint_stages.py uses to say where a round trip's time goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodes.endpoints import TRACE_ENV
from orbitmesh.core.topology import TERRESTRIAL
from tests.test_endpoints import ALPHA, BRAVO, OPS, echo4, host_on_pipes, read_all, tiny
from tests.test_runtime import apply, drain

PROJECT = Path(__file__).resolve().parent.parent


class Clock:
    """A wall clock the test moves."""

    def __init__(self, wall: float) -> None:
        self.wall = wall

    def __call__(self) -> float:
        return self.wall


def test_trace_records_the_read_stamp_the_due_arrival_and_the_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRACE_ENV, str(tmp_path))
    host, readers, _ = host_on_pipes(tiny())
    clock = Clock(2.5)
    host.now = clock
    rt = host.rt
    apply(rt, 0.0, [(ALPHA, OPS, TERRESTRIAL, 0.005), (OPS, BRAVO, TERRESTRIAL, 0.007)],
          [[ALPHA, OPS, BRAVO], [BRAVO, OPS, ALPHA]])
    a4, b4 = (e["ipv4"] for e in host.plan["ip"])
    packet = echo4(a4, b4, 500)
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, packet)
    host._read_tun(ALPHA, r)  # as the loop does when the TUN is readable
    due = rt.next_due
    assert due is not None
    clock.wall = 2.9  # the worker writes the far TUN later than the last hop was due
    drain(rt)
    assert read_all(readers[BRAVO]) == packet
    host.close()
    os.close(r)
    os.close(w)
    records = [json.loads(line) for f in tmp_path.glob("ep-*.jsonl")
               for line in f.read_text().splitlines()]
    ins = [x for x in records if x[0] == "in"]
    outs = [x for x in records if x[0] == "out"]
    assert ins == [["in", ALPHA, packet[-8:].hex(), 2.5]]
    assert len(outs) == 1
    _, node, key, created, last_due, written, before, prop_s, _now, hops = outs[0]
    assert (node, key, created, hops) == (BRAVO, packet[-8:].hex(), 2.5, 2)
    serial_s = 500 * 8 / 4.0e6  # the tiny scenario's terrestrial rate, both hops
    assert last_due - created == pytest.approx(0.012 + 2 * serial_s)
    assert prop_s == pytest.approx(0.012)
    assert before == written == 2.9


def test_no_trace_without_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    host, _, _ = host_on_pipes(tiny())
    assert host._trace is None
    host.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/timerslack_ns").exists(),
                    reason="needs Linux's /proc/self/timerslack_ns")
def test_worker_loop_asks_for_one_nanosecond_of_timer_slack() -> None:
    code = ("import ctypes\n"
            "from nodes.worker import precise_loop\n"
            "ctypes.CDLL(None).prctl(29, 50_000, 0, 0, 0)  # the default, whatever we inherit\n"
            "before = open('/proc/self/timerslack_ns').read().strip()\n"
            "precise_loop().close()\n"
            "print(before, open('/proc/self/timerslack_ns').read().strip())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True,
                          text=True, check=True, timeout=60)
    before, after = done.stdout.split()
    assert after == "1"
    assert before == "50000"
