"""Users' containers as endpoint nodes (issue 11 items 1-2): live runs with the offline image.

The unit tests need nothing. The live ones need root (the TUN goes into each container's network
namespace), /dev/net/tun, a docker daemon and the offline image with ping
(`orbitmesh image build --offline`; ORBITMESH_TEST_IMAGE picks another tag); they are skipped
without them unless ORBITMESH_REQUIRE_DOCKER=1 (CI), which makes them fail. Every container
carries the test run's label and none may be left afterwards.

* Tokyo and Brussels run ``sleep infinity`` containers; ``docker exec`` ping between them meets
  twice the geometric one-way delay (`orbitmesh path`) plus serialisation; Brussels' container is
  killed mid-run: reported with its logs' last lines, the run goes on (``on_exit: ignore``).
* A satellite is an endpoint (flight software in a container): pings from a station reach it
  while the geometry links it to the station and are lost with ``no_route`` once it has gone.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orbitmesh.core.endpoint_spec import EndpointContainer, IpEndpoint
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.run.launch import netns
from orbitmesh.run.launch.docker import LABEL_RUN
from tests.test_endpoints_live import DEMO, FEW_MS, _path_ms, _rtts, _scenario_with, _start, _stop

PING_BYTES = 84
"""An IPv4 echo request of ping's default 56-byte payload, as it crosses the links."""


# --- the scenario model (no docker) --------------------------------------------------------------


def test_container_fields_take_their_compose_meanings() -> None:
    c = EndpointContainer(image="x", command="sh -c 'echo a b'",
                          environment={"A": 1, "B": True, "C": None}, volumes=["./d:/d:ro"])
    assert c.command == ("sh", "-c", "echo a b")
    assert c.environment == ("A=1", "B=true", "C=")
    assert c.on_exit == "ignore"
    assert EndpointContainer(image="x", command=["a b"]).command == ("a b",)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("volumes", ["data:/d"], "named volumes"),
    ("volumes", ["/a:d"], "must be absolute"),
    ("volumes", ["/a:/d:xx"], "HOST_PATH:CONTAINER_PATH"),
    ("environment", ["NOEQUALS"], "KEY=VALUE"),
    ("on_exit", "restart", "ignore"),
    ("command", "", "empty command"),
])
def test_bad_container_fields_are_refused_by_name(field: str, value: Any, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        IpEndpoint(node="tokyo", container={"image": "x", field: value})
    assert field in str(info.value) and says in str(info.value)


def test_plan_records_containers_with_absolute_binds(tmp_path: Path) -> None:
    scenario = _scenario_with(tmp_path, _section({"tokyo": {"image": "img", "command":
                                                            "sleep 1", "volumes": ["./x:/x"]}}),
                              duration_s=5)
    topology = build_topology(load_scenario(scenario))
    plan = netns.make_plan(topology, topology.scenario.endpoints, "r1", [0] * 70)
    (entry,) = plan["ip"]
    assert entry["container"]["name"] == netns.namespace_name("r1", "tokyo")
    assert entry["container"]["volumes"] == [f"{tmp_path.resolve()}/x:/x"]
    assert entry["container"]["command"] == ["sleep", "1"] and entry["container"]["pid"] is None


# --- live ----------------------------------------------------------------------------------------


def _section(containers: dict[str, dict[str, Any]]) -> str:
    return "endpoints:\n  ip:\n" + "".join(
        f"    - {{node: {node}, container: {json.dumps(spec)}}}\n"
        for node, spec in containers.items())


def _live_or_skip() -> tuple[Any, str]:
    """A docker client and the image tag; skip (or fail, in CI) when the run cannot be made."""
    from orbitmesh.run.launch import image as image_mod

    required = os.environ.get("ORBITMESH_REQUIRE_DOCKER") == "1"
    problem = "; ".join(netns.missing_privileges())
    client = tag = None
    if not problem:
        try:
            client = image_mod.docker_client()
            tag = os.environ.get("ORBITMESH_TEST_IMAGE") or image_mod.LATEST
            client.images.get(tag)
            probe = client.containers.run(tag, ["sh", "-c", "command -v ping"], remove=True,
                                          network_mode="none")
            if not probe.strip():
                problem = f"{tag} has no ping: rebuild it (`orbitmesh image build --offline`)"
        except Exception as exc:  # no daemon, no image: said, never silent
            problem = str(exc)
    if problem:
        if required:
            pytest.fail(f"ORBITMESH_REQUIRE_DOCKER=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    assert client is not None and tag is not None
    return client, tag


def _serialisation_ms(scenario: Path, path: list[str], size_bytes: int) -> float:
    """Both directions' serialisation of a ``size_bytes`` packet over ``path``'s links."""
    topology = build_topology(load_scenario(scenario))
    rules = topology.scenario.links
    total_s = 0.0
    for a, b in itertools.pairwise(path):
        sats = sum(topology.index[n] < topology.n_satellites for n in (a, b))
        rate = (rules.terrestrial, rules.gsl, rules.isl)[sats].rate_bps
        total_s += size_bytes * 8 / rate
    return 2 * total_s * 1000.0


def _path(scenario: Path, src: str, dst: str, at_s: float) -> list[str]:
    s = load_scenario(scenario)
    when = (s.epoch + timedelta(seconds=at_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    done = subprocess.run([".venv/bin/orbitmesh", "path", str(scenario), src, dst, "--at", when,
                           "--format", "json"], cwd=DEMO.parent.parent, check=True,
                          capture_output=True, text=True, timeout=60)
    return list(json.loads(done.stdout)[0]["path"])


def _docker_exec(name: str, *cmd: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "exec", name, *cmd], capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def _labelled(client: Any, run_id: str) -> list[str]:
    return [c.name for c in client.containers.list(all=True,
                                                   filters={"label": f"{LABEL_RUN}={run_id}"})]


@pytest.mark.docker
@pytest.mark.slow
def check_brussels_killed(run_dir: Path, killed_s: float) -> None:
    """The summary of a run whose Brussels container was killed (-9) at ``killed_s``."""
    summary = json.loads((run_dir / "summary.json").read_text())
    exits = {c["node"]: c for c in summary["endpoints"]["containers"]}
    assert exits["tokyo"]["state"] == "running"
    gone = exits["brussels"]
    assert gone["state"] == "exited" and gone["exit_code"] == 137
    assert gone["at_s"] == pytest.approx(killed_s, abs=2.0)
    assert gone["logs_tail"] == ["brussels software up"]
    refused = summary["endpoints"]["nodes"]["brussels"]["refused"]
    assert any(k.startswith(("tun_gone", "tun_write_failed", "no_tun_here")) for k in refused), \
        refused  # echoes after the kill reached a node without its program: counted, not lost
    assert summary["conservation_ok"]


def test_two_containers_ping_through_the_constellation_and_one_is_killed(tmp_path: Path) -> None:
    client, tag = _live_or_skip()
    scenario = _scenario_with(tmp_path, _section({
        "tokyo": {"image": tag, "command": "sleep infinity"},
        "brussels": {"image": tag, "command": ["sh", "-c", "echo brussels software up; "
                                                           "exec sleep infinity"]}}),
        duration_s=30)
    run_dir = tmp_path / "run"
    proc, info = _start(scenario, run_dir)
    run_id = info["run_id"]
    try:
        plan = netns.read_plan(run_dir)
        assert plan is not None
        names = {e["node"]: e["container"]["name"] for e in plan["ip"]}
        assert all(e["container"]["pid"] for e in plan["ip"])
        assert set(_labelled(client, run_id)) == set(names.values())
        time.sleep(max(0.0, info["t0_wall"] + 1.0 - time.time()))  # the first tick's routes in
        sent_s = time.time() - info["t0_wall"]
        ping = _docker_exec(names["tokyo"], "ping", "-4", "-c", "10", "-i", "0.2", "brussels")
        back = _docker_exec(names["brussels"], "ping", "-4", "-c", "3", "-i", "0.2", "tokyo")
        hosts = _docker_exec(names["tokyo"], "cat", "/etc/hosts").stdout
        client.containers.get(names["brussels"]).kill()
        killed_s = time.time() - info["t0_wall"]
        time.sleep(2.0)  # the launcher looks every 0.5 s
        after = _docker_exec(names["tokyo"], "ping", "-4", "-c", "5", "-i", "0.2", "-W", "1",
                             "brussels")
        assert proc.poll() is None, "the run stopped when a container with on_exit: ignore died"
        _out, err = proc.communicate(timeout=90)
    finally:
        _stop(proc, run_dir)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert back.returncode == 0, back.stdout + back.stderr
    assert plan["ip"][1]["ipv4"] in hosts and "brussels" in hosts
    rtts = _rtts(ping.stdout)
    assert len(rtts) == 10
    one_way = _path_ms(scenario, "tokyo", "brussels", sent_s)
    model = 2 * one_way + _serialisation_ms(scenario, _path(scenario, "tokyo", "brussels",
                                                            sent_s), PING_BYTES)
    assert min(rtts.values()) == pytest.approx(model, abs=FEW_MS), (rtts, model)
    assert after.returncode != 0 and not _rtts(after.stdout), after.stdout
    text = err.decode()
    assert re.search(rf"endpoint container {names['brussels']} at brussels exited with code "
                     r"137", text), text
    assert "brussels software up" in text
    check_brussels_killed(run_dir, killed_s)
    assert proc.returncode == 0, text
    assert _labelled(client, run_id) == []


def _reach(scenario: Path, station: str, until_s: int) -> Any:
    """(second, satellite) -> True while the model routes between them (no fault, no load)."""
    import numpy as np

    from orbitmesh.core.engine import TickEngine

    topology = build_topology(load_scenario(scenario))
    dst = topology.node(station)
    engine = TickEngine(topology, destinations=[dst])
    engine.warm_up(0.0)
    reach = np.zeros((until_s, topology.n_satellites), dtype=bool)
    for k in range(until_s):
        routes = engine.step(float(k)).routes[None]
        reach[k] = [len(routes.path(s, dst)) > 0 for s in range(topology.n_satellites)]
    return reach


SPEED = 10.0
"""The satellite run's speed: a pass lasts minutes; RTTs shrink with it, reachability does not."""
MARGIN_S = 60
"""Scenario seconds of the pass before its end, and of no reach after it, that the pings see."""


def _pass_end(scenario: Path, station: str, horizon_s: int = 900) -> tuple[str, int]:
    """A satellite the station reaches for MARGIN_S and then not for MARGIN_S; that end second."""
    reach = _reach(scenario, station, horizon_s)
    for t in range(MARGIN_S, horizon_s - MARGIN_S):
        fits = reach[t - MARGIN_S:t].all(axis=0) & ~reach[t + 3:t + MARGIN_S].any(axis=0)
        if fits.any():
            return build_topology(load_scenario(scenario)).node_ids[int(fits.nonzero()[0][0])], t
    raise AssertionError(f"no pass of the scenario ends in its first {horizon_s} s")


@pytest.mark.docker
@pytest.mark.slow
def test_a_satellite_container_is_reached_only_while_the_geometry_links_it(
        tmp_path: Path) -> None:
    client, tag = _live_or_skip()
    plain = _scenario_with(tmp_path, "", duration_s=60)
    no_isl = plain.read_text().replace("isl: {topology: plus_grid,", "isl: {topology: none,")
    assert no_isl != plain.read_text()
    plain.write_text(no_isl)  # without ISLs a satellite is reachable only while a station sees it
    sat, los_s = _pass_end(plain, "tokyo")
    scenario = tmp_path / "sat.yaml"
    scenario.write_text(no_isl.replace("duration_s: 60", f"duration_s: {los_s + MARGIN_S}")
                        .replace("speed: 1.0", f"speed: {SPEED}") + _section({
                            "tokyo": {"image": tag, "command": "sleep infinity"},
                            sat: {"image": tag, "command": "sleep infinity"}}))
    reach = _reach(scenario, "tokyo", los_s + MARGIN_S)
    reach = reach[:, build_topology(load_scenario(scenario)).index[sat]]
    run_dir = tmp_path / "run"
    proc, info = _start(scenario, run_dir)
    count = int((2 * MARGIN_S - 20) / SPEED / 0.2)
    try:
        plan = netns.read_plan(run_dir)
        assert plan is not None
        names = {e["node"]: e["container"]["name"] for e in plan["ip"]}
        time.sleep(max(0.0, info["t0_wall"] + (los_s - MARGIN_S + 10) / SPEED - time.time()))
        started_s = (time.time() - info["t0_wall"]) * SPEED
        ping = _docker_exec(names["tokyo"], "ping", "-4", "-c", str(count), "-i", "0.2",
                            "-W", "1", sat, timeout_s=120)
        _out, err = proc.communicate(timeout=120)
    finally:
        _stop(proc, run_dir)
    rtts = _rtts(ping.stdout)
    answered = lost = 0
    # Echo seq k left at about started_s + 0.2 SPEED (k - 1) scenario s; 3 s margins at LOS.
    for seq in range(1, count + 1):
        t = started_s + 0.2 * SPEED * (seq - 1)
        window = [reach[int(x)] for x in (t - 3, t, t + 3) if 0 <= x < len(reach)]
        if all(window):
            assert seq in rtts, (seq, t, los_s, sorted(rtts))
            answered += 1
        elif not any(window):
            assert seq not in rtts, (seq, t, los_s, sorted(rtts))
            lost += 1
    assert answered >= 10 and lost >= 10, (answered, lost)
    summary = json.loads((run_dir / "summary.json").read_text())
    frames = summary["endpoints"]["frames"]
    assert frames["dropped"].get("no_route", 0) >= lost, frames
    assert set(frames["dropped"]) <= {"no_route"}, frames
    assert summary["conservation_ok"]
    assert proc.returncode == 0, err.decode()
    assert _labelled(client, info["run_id"]) == []


@pytest.mark.docker
@pytest.mark.slow
def test_a_container_with_on_exit_stop_ends_the_run(tmp_path: Path) -> None:
    client, tag = _live_or_skip()
    scenario = _scenario_with(tmp_path, _section({
        "tokyo": {"image": tag, "command": "sleep infinity"},
        "brussels": {"image": tag, "on_exit": "stop", "command": [
            "sh", "-c", "sleep 8; echo lost my config >&2; exit 3"]}}), duration_s=40)
    run_dir = tmp_path / "run"
    proc, info = _start(scenario, run_dir)
    try:
        _out, err = proc.communicate(timeout=90)
    finally:
        _stop(proc, run_dir)
    ended_s = time.time() - info["t0_wall"]
    text = err.decode()
    assert proc.returncode == 1, text
    assert ended_s < 30, ended_s  # the scenario asked for 40 s
    summary = json.loads((run_dir / "summary.json").read_text())
    gone = {c["node"]: c for c in summary["endpoints"]["containers"]}["brussels"]
    assert gone["state"] == "exited" and gone["exit_code"] == 3, gone
    assert gone["logs_tail"] == ["lost my config"]
    assert summary["run"]["interrupted"] and summary["conservation_ok"]
    assert "the run stops (on_exit: stop)" in text and "lost my config" in text
    assert _labelled(client, info["run_id"]) == []


def test_a_packet_before_scenario_time_zero_is_refused_as_early_not_dropped() -> None:
    # The clock message arrives ahead of t = 0; packets then met no routes (no_route) before.
    from orbitmesh.protocol.wire import FLOW_ENDPOINT
    from tests.test_endpoints import ALPHA, echo4, host_on_pipes, tiny

    host, _, _ = host_on_pipes(tiny())
    a4, b4 = (e["ipv4"] for e in host.plan["ip"])
    t0_wall = host.rt.wall_at(0.0)
    host.packet_in(ALPHA, echo4(a4, b4, 60), t0_wall - 0.5)
    assert host.as_dict()["alpha"]["refused"] == {"before_start": 1}
    host.packet_in(ALPHA, echo4(a4, b4, 60), t0_wall + 0.5)
    assert host.as_dict()["alpha"]["refused"] == {"before_start": 1}
    assert host.rt.stats.flows[FLOW_ENDPOINT].offered == 1
