"""Live runs: the controller in this process, two real worker processes and a real mosquitto.

Each scenario under tests/data/live/ is run once per module (speed > 1 where timing does not
matter) and checked against physics and invariants: telemetry only crosses live links,
store-and-forward holds telemetry through a contact gap found by ``orbitmesh contacts``,
telecommands are acknowledged, a flow's latency equals the fibre path's delays computed by the
core engine, conservation holds, and no process outlives a run (also after Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pytest

from broker.embedded import free_loopback_port
from orbitmesh.core.engine import TickEngine
from orbitmesh.core.geometry import C_KM_S
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.protocol.wire import TELEMETRY
from orbitmesh.run.cli import main as cli_main
from orbitmesh.run.launch.control import locate
from orbitmesh.run.launch.local import RunOptions, RunResult, run
from tests.conftest import require_mosquitto

pytestmark = pytest.mark.broker

DATA = Path(__file__).parent / "data" / "live"
PROJECT = Path(__file__).resolve().parent.parent
WORKERS = 2
FIVE_MS = 5.0
"""Latency tolerance at speed 1: timer wake-ups on two hops plus one MQTT crossing between
workers (measured p50 excess ~1-2 ms on a laptop)."""
TEN_MICROSECONDS_MS = 0.01
PROCESS_EXIT_S = 30.0
"""How long an interrupted run may take to write its summary and exit."""


# --- helpers ------------------------------------------------------------------------------------

def live_run(scenario: str, out: Path, *, speed: float | None = None,
             duration_s: float | None = None) -> RunResult:
    """Run ``tests/data/live/<scenario>`` with two workers on an embedded broker."""
    require_mosquitto()
    return run(RunOptions(scenario=DATA / scenario, duration_s=duration_s, speed=speed,
                          workers=WORKERS, out=out, progress=False))


def read_events(run_dir: Path) -> list[list[Any]]:
    """Every record of every worker's frame-event log."""
    records: list[list[Any]] = []
    for path in sorted(run_dir.glob("events-w*.msgpack")):
        with path.open("rb") as f:
            records += list(msgpack.Unpacker(f, raw=False))
    return records


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes (other than this one) whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited while we looked
        if text in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists (a zombie counts: nobody reaped it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_no_process_left(run_dir: Path) -> None:
    """Every worker PID recorded in pids.json, and the run's broker, are gone."""
    pids = json.loads((run_dir / "pids.json").read_text())
    assert len(pids) >= WORKERS  # one per worker process started (restarts add more)
    assert [pid for pid in pids.values() if pid_alive(pid)] == []
    # The embedded broker runs `mosquitto -c <run_dir>/broker/mosquitto.conf`; workers get
    # `--out <run_dir>`: nothing may still carry the run directory on its command line.
    assert processes_mentioning(str(run_dir)) == []


def assert_sound(result: RunResult) -> None:
    """Conservation holds and every result file is there."""
    s, run_dir = result.summary, result.run_dir
    assert s["conservation_ok"], s["conservation"]
    assert all(c["unexplained"] == 0 for c in s["conservation"])
    assert s["run"]["workers_reported"] == WORKERS
    assert s["malformed"] == 0
    for k in range(WORKERS):
        assert (run_dir / f"events-w{k}.msgpack").stat().st_size > 0
        assert (run_dir / f"stats-w{k}.json").is_file()
    assert (run_dir / "links.msgpack").stat().st_size > 0
    assert json.loads((run_dir / "summary.json").read_text()) == s


def first_aos_s(scenario: Path) -> float:
    """Seconds from the epoch to the first AOS, as `orbitmesh contacts` reports it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["contacts", str(scenario), "--format", "json"]) == 0
    passes = json.loads(out.getvalue())
    epoch = load_scenario(scenario).epoch
    return min((datetime.fromisoformat(p["aos"].replace("Z", "+00:00")) - epoch).total_seconds()
               for p in passes)


# --- runs, once per module ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def reach(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """live-reach: 30 scenario seconds at x10."""
    return live_run("reach.yaml", tmp_path_factory.mktemp("reach") / "run")


@pytest.fixture(scope="module")
def pass_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """live-pass: 100 scenario seconds at x20 around the satellite's first AOS."""
    return live_run("pass.yaml", tmp_path_factory.mktemp("pass") / "run", duration_s=100.0)


@pytest.fixture(scope="module")
def fibre(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """live-fibre: 4 scenario seconds at x1 (latency is measured, so no speed-up)."""
    return live_run("fibre.yaml", tmp_path_factory.mktemp("fibre") / "run")


# --- 1: telemetry only through live links -------------------------------------------------------

def test_telemetry_reaches_its_ops_centre_only_through_live_links(reach: RunResult) -> None:
    assert_sound(reach)
    topology = build_topology(load_scenario(DATA / "reach.yaml"))
    records = read_events(reach.run_dir)
    source = {r[2]: r[5] for r in records if r[0] == "offer" and r[4] == TELEMETRY}
    constellation = {i: topology.node_ids[i].split("-")[0] for i in range(topology.n_satellites)}
    offered = Counter(constellation[s] for s in source.values())
    delivered = Counter(constellation[source[r[2]]] for r in records
                        if r[0] == "deliver" and r[2] in source)
    # 12 satellites each at 1 Hz for 30 s.
    assert offered["lit"] >= 12 * 29 and offered["dark"] >= 12 * 29
    # Svalbard never sees a 2-degree orbit: nothing of "dark" reaches ops-dark ...
    assert delivered["dark"] == 0
    tm = reach.summary["telemetry"]
    assert not tm["dropped"]
    assert tm["held_on_board_at_end"] == tm["in_flight"] == offered["dark"]
    assert tm["max_backlog"] >= 29
    # ... while the equator station sees "lit" all the time: all of it arrives.
    assert delivered["lit"] == offered["lit"] == tm["delivered"]


# --- 2: store-and-forward -----------------------------------------------------------------------

def test_store_and_forward_holds_telemetry_through_a_contact_gap(pass_run: RunResult) -> None:
    assert_sound(pass_run)
    scenario = load_scenario(DATA / "pass.yaml")
    aos_s = first_aos_s(DATA / "pass.yaml")
    assert 30.0 < aos_s < 80.0, "the fixture's pass moved: re-pick the station with contacts"
    rate_hz = scenario.constellations[0].telemetry.rate_hz
    tm = pass_run.summary["telemetry"]
    # Everything made before AOS waited on board, then went down during the pass.
    assert tm["max_backlog"] >= (aos_s - 2.0) * rate_hz
    assert tm["held_on_board_at_end"] == 0
    assert tm["delivered"] == tm["generated"] - tm["in_flight"] > 0
    assert not tm["dropped"]
    # The oldest frames are about as old as the gap (links come up on the next tick after AOS);
    # the link delays themselves are a few milliseconds.
    age = tm["age_ms"]
    assert (aos_s - 5.0) * 1000.0 < age["p99"] < (aos_s + scenario.tick_s + 2.0) * 1000.0
    assert age["p50"] < age["p99"] / 2


# --- 3: telecommands ----------------------------------------------------------------------------

def test_telecommands_are_acknowledged(reach: RunResult) -> None:
    tc = reach.summary["telecommands"]
    # ops-lit's commands go up via the equator station and are acknowledged; ops-dark has
    # no route to its satellites, so its commands are dropped at the source.
    assert tc["acked"] > 0
    assert tc["dropped"].get("no_route", 0) > 0
    assert tc["sent"] == tc["acked"] + sum(tc["dropped"].values()) + sum(
        tc["ack_dropped"].values()) + _in_flight(reach, "telecommands") + _in_flight(reach,
                                                                                        "acks")
    # A round trip covers at least twice the orbit altitude at the speed of light.
    assert tc["rtt_ms"]["p50"] > 2 * 550.0 / C_KM_S * 1000.0


def _in_flight(result: RunResult, name: str) -> int:
    return next(int(c["in_flight"]) for c in result.summary["conservation"] if c["flow"] == name)


# --- 4: flow latency equals the sum of its hops' delays ----------------------------------------

def test_flow_latency_equals_the_fibre_path_delay(fibre: RunResult) -> None:
    assert_sound(fibre)
    scenario = load_scenario(DATA / "fibre.yaml")
    topology = build_topology(scenario)
    flow = scenario.traffic[0]
    src, dst = topology.node(flow.source), topology.node(flow.destination)
    engine = TickEngine(topology, destinations=[dst], policies=[])
    tick = engine.step(0.0)
    hops = tick.routes[None].path(src, dst)
    assert [topology.node_ids[i] for i in hops] == ["tokyo", "darmstadt", "perth"]
    propagation_ms = sum(tick.state.delay_of(a, b) or 0.0
                         for a, b in itertools.pairwise(hops)) * 1000.0
    rate_bps = scenario.links.terrestrial.rate_bps
    serialisation_ms = (len(hops) - 1) * flow.size.bytes * 8.0 / rate_bps * 1000.0
    expected_ms = propagation_ms + serialisation_ms
    assert 100.0 < expected_ms < 130.0  # Tokyo-Darmstadt-Perth over fibre: ~116 ms

    f = fibre.summary["flows"][0]
    assert f["offered"] == f["delivered"] > 0
    assert f["mean_hops"] == 2
    assert f["dropped"] == {}
    latency = f["latency_ms"]
    # Emulated delays are lower bounds (nothing arrives early) and late by at most FIVE_MS.
    assert expected_ms - TEN_MICROSECONDS_MS <= latency["p50"] <= expected_ms + FIVE_MS
    # Fibre delays do not change: the spread is timer jitter only.
    assert latency["p95"] - latency["p50"] < FIVE_MS


# --- 5 and 6: conservation, files, no process left ----------------------------------------------

@pytest.mark.parametrize("which", ["reach", "pass_run", "fibre"])
def test_run_is_sound_and_leaves_no_process(which: str, request: pytest.FixtureRequest) -> None:
    result: RunResult = request.getfixturevalue(which)
    assert_sound(result)
    assert not result.summary["run"]["interrupted"]
    assert_no_process_left(result.run_dir)


# --- 7: Ctrl-C and SIGTERM ----------------------------------------------------------------------

def wait_for_clock(run_dir: Path, run_id: str, timeout_s: float) -> None:
    """Block until the run's controller has published its clock (every worker is ready)."""
    deadline = time.monotonic() + timeout_s
    # run.json is written once the broker answers (its config file exists a moment earlier).
    info_path = run_dir / "run.json"
    while not info_path.is_file():
        assert time.monotonic() < deadline, "the run never started its broker"
        time.sleep(0.05)
    port = int(json.loads(info_path.read_text())["broker"].rsplit(":", 1)[1])
    got = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{run_id}")
    operator = locate(str(run_dir), None)[1]  # the broker refuses anonymous clients
    client.username_pw_set(operator.username, operator.password)
    client.on_connect = lambda c, *_: c.subscribe(f"orbitmesh/{run_id}/clock")
    client.on_message = lambda *_: got.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert got.wait(max(0.0, deadline - time.monotonic())), "the run's clock never started"
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_run_writes_summary_and_leaves_no_process(how: str, tmp_path: Path) -> None:
    require_mosquitto()
    run_dir = tmp_path / "run"
    run_id = f"interrupt-{how}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orbitmesh", "run", str(DATA / "fibre.yaml"), "--duration", "600",
         "--workers", str(WORKERS), "--out", str(run_dir), "--run-id", run_id, "--quiet"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_clock(run_dir, run_id, timeout_s=60.0)
        time.sleep(1.0)  # let traffic flow for a while
        if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=PROCESS_EXIT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert proc.returncode in (0, 130), err.decode()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["interrupted"] is True
    assert summary["run"]["workers_reported"] == WORKERS
    assert summary["flows"][0]["delivered"] > 0
    assert b"results:" in out
    assert_no_process_left(run_dir)
    # Workers end cleanly on their own signal too (their final flush must not time out).
    for log in sorted(run_dir.glob("worker-*.log")):
        assert "error" not in log.read_text().lower(), log.read_text()


# --- 8: unreachable broker ----------------------------------------------------------------------

def test_unreachable_broker_is_one_clear_error_and_exit_2(tmp_path: Path) -> None:
    port = free_loopback_port()  # bound and released: nothing listens there now
    proc = subprocess.run(
        [sys.executable, "-m", "orbitmesh", "run", str(DATA / "fibre.yaml"), "--workers", "1",
         "--broker", f"mqtt://127.0.0.1:{port}", "--out", str(tmp_path / "run"), "--quiet"],
        check=False, cwd=PROJECT, capture_output=True, timeout=30.0, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert f"127.0.0.1:{port}" in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "run" / "pids.json").exists()
