"""The docker backend: image hashing and caching, the compose writer, and runs as containers.

The unit tests need no docker. The ``docker`` tests need a docker daemon and the orbitmesh image
(`orbitmesh image build --offline`; ORBITMESH_TEST_IMAGE picks another tag). They are skipped
when docker is unavailable, unless ORBITMESH_REQUIRE_DOCKER=1 (CI), which makes them fail.
Their containers use host networking or a bridge network they create; every resource carries
the test run's label and is removed by it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orbitmesh.run.launch import image as image_mod
from orbitmesh.run.launch import image_build
from orbitmesh.run.launch.compose import ComposeOptions, input_environment, prelude, render_compose
from orbitmesh.run.launch.docker import LABEL_RUN, placement_mode, safe_run_id, stage_scenario
from tests.conftest import LOOSE_FIDELITY

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.yaml"
DEMO_NODES = 70  # 64 satellites, 5 stations, 1 operations centre


# --- apt sources and image hashes -----------------------------------------------------------------


def test_apt_source_reads_deb822_and_skips_security(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    source = image_mod.apt_source(tmp_path, tmp_path / "missing.list")
    assert source == image_mod.AptSource("http://mirror.invalid/debian", "bookworm")


def test_apt_source_reads_sources_list(tmp_path: Path) -> None:
    listing = tmp_path / "sources.list"
    listing.write_text("# deb http://old.invalid/debian buster main\n"
                       "deb [arch=amd64] http://mirror.invalid/debian trixie main\n")
    assert image_mod.apt_source(tmp_path, listing).suite == "trixie"


def test_base_tag_depends_on_suite_and_packages_only() -> None:
    tag = image_mod.base_tag("bookworm", ["python3", "mosquitto"], arch="x86_64")
    assert tag == image_mod.base_tag("bookworm", ["mosquitto", "python3"], arch="x86_64")
    assert tag != image_mod.base_tag("trixie", ["python3", "mosquitto"], arch="x86_64")
    assert tag != image_mod.base_tag("bookworm", ["python3"], arch="x86_64")
    assert tag.startswith("orbitmesh-base:")


def _mini_project(root: Path) -> None:
    (root / "orbitmesh").mkdir(parents=True)
    (root / "nodes").mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'orbitmesh'\n")
    (root / "orbitmesh" / "a.py").write_text("A = 1\n")
    (root / "nodes" / "b.py").write_text("B = 2\n")


def test_project_hash_follows_sources_not_caches(tmp_path: Path) -> None:
    _mini_project(tmp_path)
    before = image_mod.project_hash("orbitmesh-base:x", tmp_path)
    (tmp_path / "orbitmesh" / "__pycache__").mkdir()
    (tmp_path / "orbitmesh" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("pass\n")
    assert image_mod.project_hash("orbitmesh-base:x", tmp_path) == before
    assert image_mod.project_hash("orbitmesh-base:y", tmp_path) != before
    (tmp_path / "orbitmesh" / "a.py").write_text("A = 2\n")
    assert image_mod.project_hash("orbitmesh-base:x", tmp_path) != before


def test_source_files_need_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(image_mod.RunError, match=r"pyproject\.toml"):
        image_mod.source_files(tmp_path)


def test_manylinux_platforms_cover_older_glibc() -> None:
    words = image_build.manylinux_platforms("2.36", "x86_64")
    tags = words[1::2]
    assert set(words[0::2]) == {"--platform"}
    assert {"manylinux_2_36_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"} <= set(tags)
    assert "manylinux_2_37_x86_64" not in tags


class _FakeImage:
    def __init__(self, tags: list[str]) -> None:
        self.tags = tags
        self.labels = {"orbitmesh.python": "3.11", "orbitmesh.glibc": "2.36",
                       "orbitmesh.arch": "x86_64"}

    def tag(self, repository: str, tag: str) -> None:
        self.tags.append(f"{repository}:{tag}")


class _FakeImages:
    def __init__(self, present: set[str]) -> None:
        self.present = present

    def get(self, tag: str) -> _FakeImage:
        from docker.errors import ImageNotFound

        if tag not in self.present:
            raise ImageNotFound(tag)
        return _FakeImage([tag])


class _FakeClient:
    def __init__(self, present: set[str]) -> None:
        self.images = _FakeImages(present)


def _fake_builds(monkeypatch: pytest.MonkeyPatch, client: _FakeClient) -> list[str]:
    built: list[str] = []
    monkeypatch.setattr(image_build, "apt_source",
                        lambda: image_mod.AptSource("http://mirror.invalid/debian", "bookworm"))

    def base(_client: Any, tag: str, *_args: Any) -> None:
        built.append(tag)
        client.images.present.add(tag)

    def project(_client: Any, _base: str, tag: str, *_args: Any, **_kw: Any) -> None:
        built.append(tag)
        client.images.present.add(tag)

    monkeypatch.setattr(image_build, "build_base", base)
    monkeypatch.setattr(image_build, "build_project", project)
    return built


def test_build_offline_builds_once_then_uses_the_cache(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    pytest.importorskip("docker")
    _mini_project(tmp_path)
    client = _FakeClient(set())
    built = _fake_builds(monkeypatch, client)
    first = image_build.build_offline(client, root=tmp_path)
    assert first.base_built and first.image_built
    assert built == [first.base_tag, first.tag]
    again = image_build.build_offline(client, root=tmp_path)
    assert not again.base_built and not again.image_built and again.tag == first.tag
    (tmp_path / "orbitmesh" / "a.py").write_text("A = 3\n")
    changed = image_build.build_offline(client, root=tmp_path)
    assert not changed.base_built and changed.image_built and changed.tag != first.tag
    forced = image_build.build_offline(client, root=tmp_path, force=True)
    assert forced.base_built and forced.image_built
    assert len(built) == 5


# --- compose writer and staging -------------------------------------------------------------------


def _compose(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    text = render_compose(ComposeOptions(DEMO, tmp_path / "demo.yml", **kw))
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def test_compose_has_broker_controller_and_one_worker_per_plane(tmp_path: Path) -> None:
    doc = _compose(tmp_path, duration_s=20, speed=2)
    services = doc["services"]
    workers = sorted(name for name in services if name.startswith("worker-"))
    assert workers == [f"worker-{k}" for k in range(9)]  # 8 planes + the ground
    assert {"broker", "controller", "supervisor"} <= set(services)
    controller = services["controller"]
    assert "--external-workers" in controller["command"]
    assert controller["command"][controller["command"].index("--broker-file") + 1] == (
        "/run/secrets/controller.url")  # locked down: tests/test_compose_lockdown.py
    assert controller["depends_on"] == ["broker"]
    for name, service in services.items():
        assert service["labels"][LABEL_RUN] == "${ORBITMESH_RUN_ID:-demo}", name
        assert service["deploy"]["restart_policy"]["condition"] in ("any", "none", "on-failure")
    assert services["worker-3"]["labels"]["orbitmesh.worker"] == "3"
    env = controller["environment"]
    assert env["ORBITMESH_FILE_0_NAME"] == "scenario.yaml"
    assert yaml.safe_load(env["ORBITMESH_FILE_0"])["name"] == "demo"
    assert doc["volumes"]["run"]["labels"][LABEL_RUN] == "${ORBITMESH_RUN_ID:-demo}"


def test_compose_with_external_broker_and_chunks(tmp_path: Path) -> None:
    doc = _compose(tmp_path, broker="mqtt://mq.example.invalid:1883", nodes_per_container=10,
                   supervisor=False)
    services = doc["services"]
    assert "broker" not in services and "supervisor" not in services
    workers = [name for name in services if name.startswith("worker-")]
    assert len(workers) == -(-DEMO_NODES // 10)
    command = services["worker-0"]["command"]
    assert command[command.index("--placement") + 1] == "chunks:10"
    assert "mqtt://mq.example.invalid:1883" in command
    assert "depends_on" not in services["controller"]


def test_compose_file_passes_docker_compose_config(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    path = tmp_path / "demo.yml"
    path.write_text(render_compose(ComposeOptions(DEMO, path)))
    proc = subprocess.run([tool, "-f", str(path), "config", "-q"], capture_output=True,
                          text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_input_files_survive_compose_interpolation_and_the_prelude(tmp_path: Path) -> None:
    env = input_environment({"scenario.yaml": "name: a$b\n", "x.tle": "line\n"})
    assert env["ORBITMESH_FILE_0"] == "name: a$$b\n"
    # What compose hands the container: $$ -> $.
    container_env = {k: v.replace("$$", "$") for k, v in env.items()}
    container_env["ORBITMESH_RUN_DIR"] = str(tmp_path / "run" / "r1")
    assert prelude([], container_env, input_dir=tmp_path / "in") == 0
    assert (tmp_path / "in" / "scenario.yaml").read_text() == "name: a$b\n"
    assert (tmp_path / "in" / "x.tle").read_text() == "line\n"
    assert (tmp_path / "run" / "r1").is_dir()


def test_stage_scenario_copies_referenced_files(tmp_path: Path) -> None:
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "mixed.tle", source_dir / "mixed.tle")
    scenario = source_dir / "s.yaml"
    scenario.write_text("name: s\nconstellations:\n  - {name: c, tle: mixed.tle}\n")
    staged = stage_scenario(scenario, tmp_path / "input")
    assert (tmp_path / "input" / "mixed.tle").is_file()
    assert yaml.safe_load(staged.read_text())["constellations"][0]["tle"] == "mixed.tle"


def test_run_ids_and_placement_modes() -> None:
    assert safe_run_id("demo 2026/01") == "demo-2026-01"
    assert safe_run_id("-x") == "x"
    assert placement_mode(None) == "planes"
    assert placement_mode(4) == "chunks:4"
    with pytest.raises(image_mod.RunError):
        placement_mode(0)


# --- runs as containers ---------------------------------------------------------------------


def _docker_or_skip() -> Any:
    required = os.environ.get("ORBITMESH_REQUIRE_DOCKER") == "1"
    try:
        client = image_mod.docker_client()
        tag = os.environ.get("ORBITMESH_TEST_IMAGE") or image_mod.default_image(client)
    except image_mod.RunError as exc:
        if required:
            pytest.fail(f"ORBITMESH_REQUIRE_DOCKER=1 but {exc}", pytrace=False)
        pytest.skip(str(exc))
    return client, tag


@pytest.fixture
def docker_run() -> Iterator[tuple[Any, str, str]]:
    """A docker client, the image tag, and a run id whose resources are removed afterwards."""
    client, tag = _docker_or_skip()
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    yield client, tag, run_id
    from orbitmesh.run.launch.labelled import down

    down(client, run_id)
    client.close()


def _labelled(client: Any, run_id: str) -> list[str]:
    label = {"label": f"{LABEL_RUN}={run_id}"}
    return ([c.name for c in client.containers.list(all=True, filters=label)]
            + [n.name for n in client.networks.list(filters=label)]
            + [v.name for v in client.volumes.list(filters=label)])


def _demo_loose(tmp_path: Path) -> Path:
    """The demo with a loose fidelity budget: containers, not timing, are under test here (nine
    containers share two cores; tests/test_fidelity.py holds the default budget to account)."""
    raw = yaml.safe_load(DEMO.read_text())
    raw["fidelity"] = dict(LOOSE_FIDELITY)
    path = tmp_path / "demo-loose.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _scenario_with_kill(tmp_path: Path) -> Path:
    raw = yaml.safe_load(DEMO.read_text())
    raw["faults"] = [{"id": "kill1", "kind": "container_kill", "worker": 1, "at_s": 6,
                      "restart": True}]
    # Containers, not timing, are under test: nine containers share two cores here
    # (tests/test_fidelity.py holds the default budget to account).
    raw["fidelity"] = dict(LOOSE_FIDELITY)
    path = tmp_path / "demo-kill.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.docker
@pytest.mark.slow
def test_up_kills_a_worker_container_and_down_removes_everything(
        docker_run: tuple[Any, str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from orbitmesh.run.launch.docker_cli import main

    client, tag, run_id = docker_run
    decoy = client.containers.create(tag, ["true"], labels={LABEL_RUN: f"{run_id}-other"})
    try:
        out = tmp_path / "run"
        code = main(["up", str(_scenario_with_kill(tmp_path)), "--duration", "20", "--speed", "2",
                     "--out", str(out), "--run-id", run_id, "--image", tag, "--keep",
                     "--quiet"])
        summary = json.loads((out / "summary.json").read_text())
        assert code == 0, capsys.readouterr().err
        assert summary["conservation_ok"]
        fault = next(f for f in summary["faults"] if f["id"] == "kill1")
        assert fault["kind"] == "container_kill"
        assert [a["action"] for a in fault["container"]["actions"]] == ["kill", "start"]
        assert fault["container"]["container"] == f"orbitmesh-{run_id}-worker-1"
        # The controller noticed the death (worker_lost) and the restart (worker_back): the fault
        # ends when the new generation reports ready, well before the run's end.
        assert fault["end_s"] is not None and 6.0 < fault["end_s"] < 20.0
        assert "during" in fault and "dropped" in fault
        assert (out / "stats-w1-g1.json").is_file()
        assert (out / "logs" / f"orbitmesh-{run_id}-controller.log").is_file()
        assert main(["status", str(out)]) == 0
        assert f"orbitmesh-{run_id}-worker-8" in capsys.readouterr().out
        assert main(["down", str(out)]) == 0
        assert _labelled(client, run_id) == []
        decoy.reload()  # still there: down touched only its own run
    finally:
        decoy.remove(force=True)


@pytest.mark.docker
@pytest.mark.slow
def test_detached_bridge_run_takes_a_live_worker_kill(docker_run: tuple[Any, str, str],
                                                      tmp_path: Path) -> None:
    import asyncio

    from orbitmesh.run.launch.control import fault_command, locate, send_command
    from orbitmesh.run.launch.docker import role_container
    from orbitmesh.run.launch.docker_cli import main

    client, tag, run_id = docker_run
    out = tmp_path / "run"
    assert main(["up", str(_demo_loose(tmp_path)), "--duration", "30", "--speed", "2",
                 "--out", str(out),
                 "--run-id", run_id, "--image", tag, "--network", "bridge", "--detach"]) == 0
    assert f"orbitmesh-{run_id}" in _labelled(client, run_id)  # the run's bridge network
    deadline = time.monotonic() + 120
    while not (out / "supervisor.json").is_file() or json.loads(
            (out / "supervisor.json").read_text())["first_tick_s"] is None:
        assert time.monotonic() < deadline, "the detached run never started its clock"
        time.sleep(0.2)
    run, url = locate(str(out), None)
    assert url.host == "127.0.0.1"  # run.json names the broker as the host reaches it
    command = fault_command("worker_kill", ["2", "restart=true"], None, "live-kill")
    assert asyncio.run(send_command(run, url, command)) is None
    controller = role_container(client, run_id, "controller")
    assert controller is not None
    assert controller.wait(timeout=120)["StatusCode"] == 0
    supervisor = role_container(client, run_id, "supervisor")
    assert supervisor is not None and supervisor.wait(timeout=60)["StatusCode"] == 0
    summary = json.loads((out / "summary.json").read_text())
    fault = next(f for f in summary["faults"] if f["id"] == "live-kill")
    assert fault["origin"] == "live"
    assert [a["action"] for a in fault["container"]["actions"]] == ["kill", "start"]
    assert summary["conservation_ok"]
    assert main(["down", run_id]) == 0
    assert _labelled(client, run_id) == []


def test_the_default_placement_fits_the_machine() -> None:
    from orbitmesh.core.scenario import load_scenario
    from orbitmesh.core.topology import build_topology
    from orbitmesh.run.launch.docker import fit_placement

    root = Path(__file__).resolve().parents[1]
    shell1 = build_topology(load_scenario(root / "scenarios" / "starlink-shell1.yaml"))
    mode, workers, note = fit_placement(shell1, None, cores=2)
    assert workers <= 4 and mode.startswith("chunks:")  # not 73 containers on 2 cores
    assert note is not None and "73 worker containers" in note
    demo = build_topology(load_scenario(root / "scenarios" / "demo.yaml"))
    assert fit_placement(demo, None, cores=2) == ("planes", 9, None)
    mode, workers, note = fit_placement(shell1, 10, cores=2)
    assert mode == "chunks:10" and note is not None and "--nodes-per-container" in note
