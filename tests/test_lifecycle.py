"""Results are never lost: `orbitmesh stop`, a graceful `down`, `fetch`, and exit 2 for bad names.

Local runs are real `orbitmesh run` processes on the embedded broker (no docker needed); the
``docker`` tests need a daemon and the orbitmesh image, as tests/test_docker.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orbitmesh.errors import InputError
from orbitmesh.run.cli import main
from orbitmesh.run.launch import lifecycle
from orbitmesh.run.launch.docker import LABEL_ROLE, LABEL_RUN
from tests.conftest import require_mosquitto
from tests.test_live import PROJECT, pid_alive, wait_for_clock

SCENARIO = Path(__file__).parent / "data" / "live" / "fibre.yaml"
LONG_S = 600.0
"""The run would go on for this long (scenario s at x1): only a stop ends it in time."""


def _start(run_dir: Path, run_id: str) -> subprocess.Popen[bytes]:
    require_mosquitto()
    return subprocess.Popen(
        [sys.executable, "-m", "orbitmesh", "run", str(SCENARIO), "--duration", f"{LONG_S:g}",
         "--workers", "2", "--out", str(run_dir), "--run-id", run_id, "--quiet"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _stopped_run_checks(proc: subprocess.Popen[bytes], run_dir: Path, stopped_at: float) -> None:
    _out, err = proc.communicate(timeout=30)  # and closes its pipes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["conservation_ok"]
    assert summary["run"]["interrupted"] is True  # the stop ended it, not the clock
    wall_s = (datetime.fromisoformat(summary["run"]["ended"])
              - datetime.fromisoformat(summary["run"]["started"])).total_seconds()
    assert wall_s < LONG_S / 10
    # 130 as for Ctrl-C; 1 only for a fidelity budget a loaded machine missed.
    assert proc.returncode == 130 or (proc.returncode == 1 and not summary["fidelity"]["ok"]), (
        err.decode(errors="replace"))
    offered = sum(f["offered"] for f in summary["flows"])
    assert offered > 0
    pids = json.loads((run_dir / "pids.json").read_text())
    assert [p for p in pids.values() if pid_alive(p)] == []
    assert time.monotonic() - stopped_at < 30


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.parametrize("command", ["stop", "down"])
def test_stop_and_down_end_a_local_run_with_its_summary(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_id = f"life-{command}"
    proc = _start(run_dir, run_id)
    try:
        wait_for_clock(run_dir, run_id, timeout_s=60.0)
        time.sleep(2.0)  # some traffic first
        assert lifecycle.live_launcher(run_dir) == proc.pid
        stopped_at = time.monotonic()
        assert main([command, str(run_dir)]) == 0
        out = capsys.readouterr()
        assert "gracefully" in out.err or command == "stop"
        assert str(run_dir / "summary.json") in out.out
        _stopped_run_checks(proc, run_dir, stopped_at)
        assert lifecycle.live_launcher(run_dir) is None
        assert main(["stop", str(run_dir)]) == 0  # over: says so, and where the summary is
        assert "is not running" in capsys.readouterr().out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    """launcher.json names a live process that is not the launcher (another start time)."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        lifecycle.record_launcher(tmp_path)
        body = json.loads((tmp_path / lifecycle.LAUNCHER_FILE).read_text())
        body["pid"] = sleeper.pid  # this process's start time, another process's PID
        (tmp_path / lifecycle.LAUNCHER_FILE).write_text(json.dumps(body))
        assert lifecycle.live_launcher(tmp_path) is None
        ref = lifecycle.find_run(str(tmp_path))
        assert ref.backend == "local"
        assert lifecycle.stop(ref, None, print) == 1  # not running, and no summary
        time.sleep(0.2)
        assert sleeper.poll() is None  # never signalled
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_launcher_recorded_inside_a_container_is_not_a_local_run(tmp_path: Path) -> None:
    lifecycle.record_launcher(tmp_path)
    body = json.loads((tmp_path / lifecycle.LAUNCHER_FILE).read_text())
    assert lifecycle.live_launcher(tmp_path) == os.getpid()
    body["pid_ns"] = "pid:[1]"  # what a controller in a container writes to a bind mount
    (tmp_path / lifecycle.LAUNCHER_FILE).write_text(json.dumps(body))
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "in-a-stack"}))
    assert lifecycle.live_launcher(tmp_path) is None
    assert lifecycle.find_run(str(tmp_path)) == lifecycle.RunRef(
        "in-a-stack", tmp_path.resolve(), "labelled")
    assert not lifecycle.is_local(str(tmp_path))


def test_unknown_run_ids_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")  # no daemon either
    for command in (["stop"], ["fetch"], ["down"], ["status"]):
        assert main([*command, "no-such-run"]) == 2, command
        err = capsys.readouterr().err
        assert "no-such-run" in err, command
    with pytest.raises(InputError, match="no docker daemon"):
        lifecycle.find_run("no-such-run", None)


def test_a_missing_image_is_refused_without_a_pull() -> None:
    from orbitmesh.run.launch.image import require_image
    from tests.test_docker import _FakeClient

    pytest.importorskip("docker")
    client = _FakeClient({"orbitmesh:latest"})
    require_image(client, "orbitmesh:latest")
    with pytest.raises(InputError, match="never pulls"):
        require_image(client, "orbitmesh:nope")


# --- with docker -----------------------------------------------------------------------------


@pytest.mark.docker
def test_up_with_a_bad_image_exits_2_and_starts_nothing(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from tests.test_docker import _docker_or_skip

    client, _tag = _docker_or_skip()
    run_id = f"badimg-{uuid.uuid4().hex[:8]}"
    for image in ("orbitmesh:no-such-tag", "Not A Reference!"):
        assert main(["up", str(PROJECT / "scenarios" / "demo.yaml"), "--image", image,
                     "--run-id", run_id, "--out", str(tmp_path / "run"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "never pulls" in err and "registry-1" not in err, err
    assert client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}) == []
    client.close()


def _compose_like_volume(client: Any, tag: str, run_id: str) -> Any:
    """A labelled volume holding a run directory, as a compose run's controller leaves it."""
    volume = client.volumes.create(f"orbitmesh-test-{run_id}", labels={LABEL_RUN: run_id})
    client.containers.run(
        tag, ["sh", "-c", f"mkdir -p /run/orbitmesh/{run_id} && echo '{{\"ok\": 1}}' > "
              f"/run/orbitmesh/{run_id}/summary.json"],
        volumes={volume.name: {"bind": "/run/orbitmesh", "mode": "rw"}}, remove=True,
        labels={LABEL_RUN: "writer-" + run_id, LABEL_ROLE: "test"})
    return volume


@pytest.mark.docker
def test_down_keeps_a_results_volume_and_fetch_copies_it_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_docker import _docker_or_skip

    client, tag = _docker_or_skip()
    run_id = f"vol-{uuid.uuid4().hex[:8]}"
    volume = _compose_like_volume(client, tag, run_id)
    try:
        assert main(["down", run_id]) == 0
        assert "kept volume" in capsys.readouterr().out
        volume.reload()  # still there
        out = tmp_path / "fetched"
        assert main(["fetch", run_id, "-o", str(out), "--image", tag]) == 0
        assert json.loads((out / "summary.json").read_text()) == {"ok": 1}
        # The helper container is gone; only the volume carries the label.
        assert client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}) == []
        assert main(["down", run_id, "--volumes"]) == 0
        assert f"removed volume {volume.name}" in capsys.readouterr().out
        assert client.volumes.list(filters={"label": f"{LABEL_RUN}={run_id}"}) == []
    finally:
        with pytest.raises(Exception):  # noqa: B017 - NotFound once down removed it
            volume.remove(force=True)
        client.close()


@pytest.mark.docker
@pytest.mark.slow
def test_stop_ends_a_detached_container_run_with_its_summary(tmp_path: Path) -> None:
    from orbitmesh.run.launch.labelled import down
    from tests.test_docker import _docker_or_skip

    client, tag = _docker_or_skip()
    run_id = f"stop-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "run"
    try:
        assert main(["up", str(PROJECT / "scenarios" / "demo.yaml"), "--duration", f"{LONG_S:g}",
                     "--speed", "1", "--nodes-per-container", "35", "--out", str(out),
                     "--run-id", run_id, "--image", tag, "--detach", "--quiet"]) == 0
        deadline = time.monotonic() + 120
        record = out / "supervisor.json"
        while not record.is_file() or json.loads(record.read_text())["first_tick_s"] is None:
            assert time.monotonic() < deadline, "the detached run never started its clock"
            time.sleep(0.2)
        time.sleep(3.0)
        assert main(["stop", run_id]) == 0  # by id: found by its containers' labels
        summary = json.loads((out / "summary.json").read_text())
        assert summary["run"]["interrupted"] is True and summary["conservation_ok"]
        assert sum(f["delivered"] for f in summary["flows"]) > 0
        assert json.loads((out / "supervisor.json").read_text())["first_tick_s"] is not None
        assert main(["down", str(out)]) == 0
        assert client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}) == []
    finally:
        down(client, run_id, volumes=True)
        client.close()


@pytest.mark.docker
@pytest.mark.slow
def test_foreground_compose_returns_at_the_end_and_fetch_gets_the_summary(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from tests.test_docker import _docker_or_skip

    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    client, tag = _docker_or_skip()
    run_id = f"fg-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "demo.yml"
    assert main(["compose", str(PROJECT / "scenarios" / "demo.yaml"), "-o", str(path),
                 "--image", tag, "--nodes-per-container", "35", "--duration", "10",
                 "--speed", "1", "--run-id", run_id]) == 0
    try:
        proc = subprocess.run([tool, "-p", run_id, "-f", str(path), "up",
                               "--exit-code-from", "controller"], capture_output=True,
                              text=True, check=False, timeout=240,
                              env={**os.environ, "ORBITMESH_RUN_ID": run_id})
        out = tmp_path / "fetched"
        assert main(["fetch", run_id, "-o", str(out)]) == 0, proc.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["conservation_ok"] and summary["run"]["interrupted"] is False
        assert proc.returncode == (0 if summary["fidelity"]["ok"] else 1), proc.stdout[-2000:]
        capsys.readouterr()
        assert main(["down", run_id]) == 0
        assert f"kept volume {run_id}_run" in capsys.readouterr().out
    finally:
        main(["down", run_id, "--volumes", "--kill"])
    label = {"label": f"{LABEL_RUN}={run_id}"}
    assert (client.containers.list(all=True, filters=label), client.volumes.list(filters=label),
            client.networks.list(filters=label)) == ([], [], [])
    client.close()
