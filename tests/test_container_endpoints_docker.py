"""Container endpoints on the docker backend (`orbitmesh up`, issue 11): live runs as containers.

The unit tests need nothing. The ``docker`` ones need a docker daemon, /dev/net/tun and the
offline image with ``ip`` and ``nsenter`` (`orbitmesh image build --offline`;
ORBITMESH_TEST_IMAGE picks another tag); they are skipped without them unless
ORBITMESH_REQUIRE_DOCKER=1 (CI), which makes them fail.

* `orbitmesh up` of the demo with containers at Tokyo and Brussels: they ping each other through
  the constellation at twice the geometric one-way delay plus serialisation; only the worker
  container hosting them got the host PID namespace, the two capabilities and the TUN device;
  Brussels' container is killed mid-run: said on stderr with its logs' last lines and in the
  summary, the run goes on and exits 0 (``on_exit: ignore``); nothing with the run's label is
  left.
* A plain IP endpoint (no container) is refused before anything starts (exit 2).
* `orbitmesh down RUN_DIR` removes a run's endpoint containers by its label, and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.errors import ScenarioError
from orbitmesh.run.launch import docker_endpoints
from orbitmesh.run.launch.labels import LABEL_RUN
from tests.conftest import LOOSE_FIDELITY
from tests.test_container_endpoints import (
    PING_BYTES,
    _docker_exec,
    _path,
    _serialisation_ms,
    check_brussels_killed,
)
from tests.test_endpoints_live import DEMO, FEW_MS, PROJECT, _path_ms, _rtts

PER_CONTAINER = 35
"""Nodes per worker container: the demo's 70 in two (nine would take long to start here)."""


def _scenario(tmp_path: Path, ip: list[dict[str, Any]], duration_s: float = 15) -> Path:
    raw = yaml.safe_load(DEMO.read_text())
    raw["duration_s"] = duration_s
    # Containers, not timing, are under test: the fidelity budget is loose (two cores shared
    # by every container here; tests/test_fidelity.py holds the default budget to account).
    raw["fidelity"] = dict(LOOSE_FIDELITY)
    raw["endpoints"] = {"ip": ip}
    path = tmp_path / "demo-containers.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- no docker ------------------------------------------------------------------------------------


def test_plain_ip_endpoints_are_refused_by_node_and_say_what_to_do(tmp_path: Path) -> None:
    scenario = load_scenario(_scenario(tmp_path, [
        {"node": "tokyo"}, {"node": "brussels", "container": {"image": "x"}}]))
    with pytest.raises(ScenarioError) as info:
        docker_endpoints.refuse_plain(scenario)
    text = str(info.value)
    assert "endpoints.ip (tokyo):" in text and "brussels" not in text
    assert "endpoints.ip[].container" in text and "orbitmesh run" in text
    with_containers = load_scenario(_scenario(tmp_path, [
        {"node": "tokyo", "container": {"image": "x"}}]))
    docker_endpoints.refuse_plain(with_containers)  # nothing to refuse


def test_only_workers_hosting_a_container_node_are_named(tmp_path: Path) -> None:
    from orbitmesh.core.placement import place
    from orbitmesh.run.launch.netns import make_plan

    topology = build_topology(load_scenario(_scenario(tmp_path, [
        {"node": "tokyo", "container": {"image": "x"}},
        {"node": "demo-01-02", "container": {"image": "x"}}])))
    owner = place(topology, 9, "planes")
    plan = make_plan(topology, topology.scenario.endpoints, "r1", owner)
    expected = {int(owner[topology.index["tokyo"]]), int(owner[topology.index["demo-01-02"]])}
    assert len(expected) == 2  # a ground worker and a plane's
    assert docker_endpoints.hosting_workers(plan) == expected
    assert docker_endpoints.hosting_workers(None) == set()
    assert set(docker_endpoints.HOSTING_WORKER["cap_add"]) == {"NET_ADMIN", "SYS_ADMIN"}


def test_an_external_workers_controller_refuses_containers_nobody_starts(tmp_path: Path) -> None:
    # compose files and hand-started workers: no `orbitmesh up` wrote the record or started them
    from orbitmesh.run.launch.local import RunOptions, run

    scenario = _scenario(tmp_path, [{"node": "tokyo", "container": {"image": "x"}}])
    out = tmp_path / "run"
    with pytest.raises(ScenarioError, match="orbitmesh up --backend docker"):
        run(RunOptions(scenario, out=out, external_workers=True))
    assert not out.exists()  # refused before anything was made


# --- live -----------------------------------------------------------------------------------------


def _docker_or_fail() -> tuple[Any, str]:
    """A docker client and the image tag; skip (fail with ORBITMESH_REQUIRE_DOCKER=1) without."""
    from orbitmesh.run.launch import image as image_mod

    required = os.environ.get("ORBITMESH_REQUIRE_DOCKER") == "1"
    try:
        client = image_mod.docker_client()
        tag = os.environ.get("ORBITMESH_TEST_IMAGE") or image_mod.default_image(client)
        docker_endpoints.check_host(client, tag)  # /dev/net/tun here, ip and nsenter in it
    except Exception as exc:  # no daemon, no image, no tun: said, never silent
        if required:
            pytest.fail(f"ORBITMESH_REQUIRE_DOCKER=1 but {exc}", pytrace=False)
        pytest.skip(str(exc))
    return client, tag


def _labelled(client: Any, run_id: str) -> list[str]:
    label = {"label": f"{LABEL_RUN}={run_id}"}
    return ([c.name for c in client.containers.list(all=True, filters=label)]
            + [n.name for n in client.networks.list(filters=label)])


def _wait_for_clock(run_dir: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """t0_wall once the controller has started the clock (its manifest, trace.json)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        try:
            t0 = json.loads((run_dir / "trace.json").read_text()).get("t0_wall")
        except (OSError, ValueError):
            t0 = None
        if t0:
            return float(t0)
        time.sleep(0.1)
    raise AssertionError(f"the run's clock did not start within {timeout_s:g} s")


def _up(scenario: Path, run_dir: Path, run_id: str, tag: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "orbitmesh", "up", str(scenario), "--backend", "docker",
         "--out", str(run_dir), "--run-id", run_id, "--image", tag, "--nodes-per-container",
         str(PER_CONTAINER), "--quiet"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


@pytest.fixture
def docker_run() -> Any:
    """A docker client, the image tag and a run id whose resources go afterwards, whatever
    happened."""
    client, tag = _docker_or_fail()
    run_id = f"test-ct-{uuid.uuid4().hex[:8]}"
    yield client, tag, run_id
    from orbitmesh.run.launch.labelled import down

    down(client, run_id)
    client.close()


@pytest.mark.docker
@pytest.mark.slow
def test_up_pings_between_containers_and_goes_on_when_one_is_killed(
        docker_run: Any, tmp_path: Path) -> None:
    client, tag, run_id = docker_run
    scenario = _scenario(tmp_path, [
        {"node": "tokyo", "container": {"image": tag, "command": "sleep infinity"}},
        {"node": "brussels", "container": {"image": tag, "command": [
            "sh", "-c", "echo brussels software up; exec sleep infinity"]}}])
    run_dir = tmp_path / "run"
    proc = _up(scenario, run_dir, run_id, tag)
    try:
        t0_wall = _wait_for_clock(run_dir, proc, 90.0)
        plan = json.loads((run_dir / "endpoints.json").read_text())
        names = {e["node"]: e["container"]["name"] for e in plan["ip"]}
        hosts = {e["worker"] for e in plan["ip"]}
        workers = {k: client.containers.get(f"orbitmesh-{run_id}-worker-{k}").attrs["HostConfig"]
                   for k in range(2)}
        time.sleep(max(0.0, t0_wall + 1.0 - time.time()))  # the first tick's routes in
        sent_s = time.time() - t0_wall
        ping = _docker_exec(names["tokyo"], "ping", "-4", "-c", "10", "-i", "0.2", "brussels")
        back = _docker_exec(names["brussels"], "ping", "-c", "3", "-i", "0.2", "tokyo")  # IPv6
        client.containers.get(names["brussels"]).kill()
        killed_s = time.time() - t0_wall
        time.sleep(2.0)  # the supervisor looks every 0.5 s
        after = _docker_exec(names["tokyo"], "ping", "-4", "-c", "5", "-i", "0.2", "-W", "1",
                             "brussels")
        assert proc.poll() is None, "the run stopped when a container with on_exit: ignore died"
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
    text = err.decode()
    # Only the worker hosting the two stations got what moving a TUN into a container needs.
    assert hosts == {1}
    assert workers[1]["PidMode"] == "host" and set(workers[1]["CapAdd"]) == {"NET_ADMIN",
                                                                              "SYS_ADMIN"}
    assert [d["PathOnHost"] for d in workers[1]["Devices"]] == ["/dev/net/tun"]
    assert workers[0]["PidMode"] != "host" and not workers[0]["CapAdd"]
    assert not workers[0]["Devices"]
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert back.returncode == 0 and "fd77::" in back.stdout, back.stdout + back.stderr
    rtts = _rtts(ping.stdout)
    assert len(rtts) == 10
    model = 2 * _path_ms(scenario, "tokyo", "brussels", sent_s) + _serialisation_ms(
        scenario, _path(scenario, "tokyo", "brussels", sent_s), PING_BYTES)
    assert min(rtts.values()) == pytest.approx(model, abs=FEW_MS), (rtts, model)
    assert after.returncode != 0 and not _rtts(after.stdout), after.stdout
    assert re.search(rf"endpoint container {names['brussels']} at brussels exited with code "
                     r"137 at t=[\d.]+ s; the run goes on without it", text), text
    assert "brussels software up" in text
    check_brussels_killed(run_dir, killed_s)
    assert "CONTAINER " + names["brussels"] in out.decode()  # the printed summary says it too
    assert proc.returncode == 0, text  # docs/endpoints.md: on_exit ignore, the run went on
    assert _labelled(client, run_id) == []


@pytest.mark.docker
def test_up_refuses_a_plain_ip_endpoint_before_anything_starts(
        docker_run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orbitmesh.run.launch.docker_cli import main

    client, tag, run_id = docker_run
    scenario = _scenario(tmp_path, [{"node": "tokyo"}])
    code = main(["up", str(scenario), "--out", str(tmp_path / "run"), "--run-id", run_id,
                 "--image", tag, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "endpoints.ip (tokyo)" in err and "endpoints.ip[].container" in err
    assert _labelled(client, run_id) == []


@pytest.mark.docker
def test_down_removes_the_endpoint_containers_of_its_run_only(
        docker_run: Any, tmp_path: Path) -> None:
    from orbitmesh.core.placement import place
    from orbitmesh.run.launch.docker import DockerRun
    from orbitmesh.run.launch.docker_cli import main

    client, tag, run_id = docker_run
    scenario = _scenario(tmp_path, [
        {"node": "tokyo", "container": {"image": tag, "command": "sleep infinity"}}])
    topology = build_topology(load_scenario(scenario))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # What a launcher killed after starting the endpoint containers leaves: its record, them.
    DockerRun(run_id, run_dir, tag, "host", "mqtt://127.0.0.1:1", "mqtt://127.0.0.1:1",
              "planes", 9, time.time()).save()
    docker_endpoints.start_endpoints(topology, run_dir, run_id, place(topology, 9, "planes"))
    decoy = client.containers.create(tag, ["true"], labels={LABEL_RUN: f"{run_id}-other",
                                                            "orbitmesh.role": "endpoint"})
    try:
        assert len(_labelled(client, run_id)) == 1
        assert main(["down", str(run_dir), "--kill"]) == 0
        assert _labelled(client, run_id) == []
        decoy.reload()  # still there: down touched only its own run
    finally:
        decoy.remove(force=True)


@pytest.mark.docker
@pytest.mark.slow
def test_up_ends_the_run_when_a_container_with_on_exit_stop_exits(
        docker_run: Any, tmp_path: Path) -> None:
    client, tag, run_id = docker_run
    scenario = _scenario(tmp_path, [
        {"node": "tokyo", "container": {"image": tag, "command": "sleep infinity"}},
        # Tokyo answering means the clock runs (routes are in): then this program "fails".
        {"node": "brussels", "container": {"image": tag, "on_exit": "stop", "command": [
            "sh", "-c", "until ping -c 1 -W 1 tokyo >/dev/null 2>&1; do sleep 0.5; done; "
                        "sleep 2; echo lost my config >&2; exit 3"]}}], duration_s=60)
    run_dir = tmp_path / "run"
    proc = _up(scenario, run_dir, run_id, tag)
    try:
        t0_wall = _wait_for_clock(run_dir, proc, 90.0)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
    text = err.decode()
    assert proc.returncode == 1, text  # docs/endpoints.md: on_exit stop ends the run, exit 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["interrupted"] and summary["conservation_ok"]  # not its 60 s
    assert "the run stops (on_exit: stop)" in text and "lost my config" in text
    gone = {c["node"]: c for c in summary["endpoints"]["containers"]}["brussels"]
    assert gone["state"] == "exited" and gone["exit_code"] == 3, gone
    assert gone["logs_tail"] == ["lost my config"]
    assert gone["at_s"] is not None and 0 < gone["at_s"] < 60 - 10, gone
    assert summary["run"]["t0_wall"] == pytest.approx(t0_wall)
    assert _labelled(client, run_id) == []
