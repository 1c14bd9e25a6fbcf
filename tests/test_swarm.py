"""Docker Swarm: `orbitmesh compose --swarm` run end to end by `docker stack deploy`.

The unit test checks the stack file's shape. The ``docker`` test needs a docker daemon and the
orbitmesh image (as tests/test_docker.py; skipped without them unless ORBITMESH_REQUIRE_DOCKER=1).
It makes a one-node swarm on 127.0.0.1 when the daemon is in none (and leaves it afterwards),
deploys the demo (its broker locked down: each service sees only its own Swarm secret, an
anonymous client on the stack's network is refused), injects a live fault through that network
as the operator, waits for the controller, checks the summary on the bind-mounted results
directory, removes the stack with `docker stack rm` and then finds nothing left with the run's
label (services, containers, networks, volumes, secrets).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.url import parse_broker_url
from orbitmesh.run.cli import main
from orbitmesh.run.launch.compose import ComposeOptions
from orbitmesh.run.launch.compose_secrets import secrets_dir
from orbitmesh.run.launch.docker import LABEL_ROLE, LABEL_RUN
from orbitmesh.run.launch.stack import render_stack, write_stack
from tests.test_docker import _docker_or_skip

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.yaml"
RUN_WAIT_S = 240.0
LONG_S = 600.0
"""Scenario seconds the stack would run for: `orbitmesh stop` ends it."""
GONE_WAIT_S = 90.0
"""`docker stack rm` returns before Swarm has removed the tasks' containers and the network."""


def test_stack_file_is_swarm_shaped(tmp_path: Path) -> None:
    results = tmp_path / "results"
    text = render_stack(ComposeOptions(DEMO, tmp_path / "stack.yml", nodes_per_container=35),
                        results)
    doc = yaml.safe_load(text)
    services = doc["services"]
    assert set(services) == {"broker", "controller", "supervisor", "worker-0", "worker-1"}
    for name, service in services.items():
        assert "restart" not in service and "depends_on" not in service, name
        assert service["deploy"]["labels"][LABEL_RUN] == "${ORBITMESH_RUN_ID:-demo}", name
        assert service["labels"][LABEL_RUN] == service["deploy"]["labels"][LABEL_RUN]
    conditions = {n: s["deploy"]["restart_policy"]["condition"] for n, s in services.items()}
    assert conditions == {"broker": "any", "controller": "none", "supervisor": "none",
                          "worker-0": "none", "worker-1": "none"}
    root = str(results.resolve())
    assert services["worker-1"]["volumes"] == [f"{root}:{root}"]
    command = services["controller"]["command"]
    assert command[command.index("--out") + 1] == f"{root}/${{ORBITMESH_RUN_ID:-demo}}"
    assert services["controller"]["deploy"]["placement"]["constraints"] == ["node.role == manager"]
    assert services["supervisor"]["environment"]["ORBITMESH_WAIT_BROKER"] == "mqtt://broker:1883"
    assert doc["networks"]["default"]["driver"] == "overlay"
    assert doc["networks"]["default"]["attachable"] is True
    assert "volumes" not in doc  # results are a bind mount: nothing for `stack rm` to leave


def test_stack_with_an_external_broker_has_no_broker_service(tmp_path: Path) -> None:
    doc = yaml.safe_load(render_stack(ComposeOptions(
        DEMO, tmp_path / "s.yml", broker="mqtt://mq.example.invalid:1883", supervisor=False),
        tmp_path / "r"))
    assert "broker" not in doc["services"] and "supervisor" not in doc["services"]
    assert all(s["deploy"]["restart_policy"]["condition"] == "none"
               for s in doc["services"].values())


def test_compose_swarm_from_the_cli_makes_the_results_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")  # no image check here
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    assert main(["compose", str(DEMO), "--swarm", "-o", str(tmp_path / "s.yml"), "--results",
                 str(results), "--run-id", "cli"]) == 0
    assert results.is_dir()  # Swarm refuses a bind mount whose source is missing
    doc = yaml.safe_load((tmp_path / "s.yml").read_text())
    assert doc["services"]["controller"]["labels"][LABEL_RUN] == "${ORBITMESH_RUN_ID:-cli}"
    assert main(["compose", str(DEMO), "--swarm", "-o", str(tmp_path / "t.yml"),
                 "--speed", "0"]) == 2  # refused here, not inside every container
    assert not (tmp_path / "runs").exists()  # and nothing made for it


@pytest.fixture
def swarm() -> Iterator[tuple[Any, str]]:
    """A docker client on a swarm manager and the image tag; a swarm made here is left after."""
    client, tag = _docker_or_skip()
    state = client.info().get("Swarm", {}).get("LocalNodeState")
    created = False
    if state == "inactive":
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
        created = True
    elif state != "active":
        pytest.fail(f"the docker daemon's swarm state is {state!r}; expected inactive or active")
    yield client, tag
    if created:
        client.swarm.leave(force=True)
    client.close()


def _labelled(client: Any, run_id: str) -> list[str]:
    label = {"label": f"{LABEL_RUN}={run_id}"}
    # sparse: names from the list itself; inspecting each one races `docker stack rm`, which
    # may remove a listed container before it is looked at (404 from the daemon).
    containers = client.containers.list(all=True, filters=label, sparse=True)
    return ([f"service {s.name}" for s in client.services.list(filters=label)]
            + [f"container {','.join(c.attrs.get('Names') or [c.id])}" for c in containers]
            + [f"network {n.name}" for n in client.networks.list(filters=label)]
            + [f"volume {v.name}" for v in client.volumes.list(filters=label)]
            + [f"secret {x.name}" for x in client.secrets.list(filters=label)])


def _controller(client: Any, run_id: str) -> Any | None:
    found = client.containers.list(all=True, filters={"label": [f"{LABEL_RUN}={run_id}",
                                                                f"{LABEL_ROLE}=controller"]})
    return found[0] if found else None


ANONYMOUS = """
import asyncio
from broker.client import MqttTransport
from broker.url import parse_broker_url
from orbitmesh.errors import BrokerError

async def main():
    async with MqttTransport(parse_broker_url("mqtt://broker:1883"), client_id="t-anon"):
        print("admitted")

try:
    asyncio.run(main())
except BrokerError as exc:
    print(exc)
"""


def _check_locked(client: Any, tag: str, run_id: str, folder: Path) -> None:
    """Each service has only its own secret, anonymous clients are refused, and no password
    is in `docker inspect` of a service or a container."""
    label = {"label": f"{LABEL_RUN}={run_id}"}
    services = {s.name.removeprefix(f"{run_id}_"): s for s in client.services.list(filters=label)}
    own = {name: sorted(x["SecretName"].removeprefix(f"{run_id}_") for x in s.attrs["Spec"][
        "TaskTemplate"]["ContainerSpec"].get("Secrets", [])) for name, s in services.items()}
    assert own == {"broker": ["broker-acl", "broker-passwords"],
                   "controller": ["controller.url"], "worker-0": ["worker-0.url"],
                   "worker-1": ["worker-1.url"], "supervisor": ["operator.json"]}
    made = sorted(x.name.removeprefix(f"{run_id}_") for x in client.secrets.list(filters=label))
    assert made == sorted({n for names in own.values() for n in names}), made  # labelled
    worker = client.containers.list(filters={"label": [f"{LABEL_RUN}={run_id}",
                                                       f"{LABEL_ROLE}=worker",
                                                       "orbitmesh.worker=1"]})[0]
    listing = worker.exec_run(["ls", "-l", "/run/secrets"]).output.decode()
    assert "worker-1.url" in listing and "worker-0.url" not in listing, listing
    assert listing.count(".url") == 1 and "-r-------- " in listing, listing
    reply = client.containers.run(tag, ["python", "-c", ANONYMOUS], network=f"{run_id}_default",
                                  labels={LABEL_RUN: run_id, LABEL_ROLE: "test"}, remove=True,
                                  stdout=True, stderr=True).decode()
    assert "not authorised" in reply, reply
    passwords = [url.password for url in (parse_broker_url(p.read_text().strip())
                                          for p in folder.glob("*.url")) if url.password]
    assert len(passwords) == 3  # controller and two workers
    shown = [json.dumps(s.attrs) for s in services.values()] + [
        json.dumps(c.attrs) for c in client.containers.list(filters=label)]
    assert not any(p in text for p in passwords for text in shown)


def _stack_rm(name: str) -> None:
    subprocess.run(["docker", "stack", "rm", name], capture_output=True, check=False)


@pytest.mark.docker
@pytest.mark.slow
def test_stack_deploy_runs_the_demo_takes_a_fault_and_leaves_nothing(
        swarm: tuple[Any, str], tmp_path: Path) -> None:
    client, tag = swarm
    run_id = f"swarm-{uuid.uuid4().hex[:8]}"
    results = tmp_path / "results"
    stack = write_stack(ComposeOptions(DEMO, tmp_path / "stack.yml", image=tag,
                                       nodes_per_container=35, duration_s=LONG_S, speed=1,
                                       run_id=run_id), results)
    run_dir = results / run_id
    try:
        deploy = subprocess.run(
            ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(stack), run_id],
            capture_output=True, text=True, check=False,
            env={**os.environ, "ORBITMESH_RUN_ID": run_id})
        assert deploy.returncode == 0, deploy.stderr
        assert "registry" not in deploy.stderr, deploy.stderr  # nothing was looked up or pulled
        deadline = time.monotonic() + RUN_WAIT_S
        record = run_dir / "supervisor.json"
        while not record.is_file() or json.loads(record.read_text())["first_tick_s"] is None:
            assert time.monotonic() < deadline, f"the stack never started its clock: " \
                f"{subprocess.run(['docker', 'stack', 'ps', run_id], capture_output=True, text=True, check=False).stdout}"  # noqa: E501
            time.sleep(0.5)
        _check_locked(client, tag, run_id, secrets_dir(stack))
        # A one-off container on the stack's attachable network: `orbitmesh fault RUN_DIR`
        # as an operator would type it, reaching broker:1883 by the service's name, with the
        # operator's secret file mounted where run.json says it is.
        operator = secrets_dir(stack) / "operator.json"
        reply = client.containers.run(
            tag, ["orbitmesh", "fault", str(run_dir), "link_down", "tokyo", "--id",
                  "swarm-fault", "--for", "6"],
            network=f"{run_id}_default", labels={LABEL_RUN: run_id, LABEL_ROLE: "operator"},
            volumes={str(results.resolve()): {"bind": str(results.resolve()), "mode": "rw"},
                     str(operator): {"bind": "/run/secrets/operator.json", "mode": "ro"}},
            remove=True, stdout=True, stderr=True)
        assert b"swarm-fault" in reply or reply == b"", reply
        time.sleep(8.0)  # the fault comes and goes (--for 6)
        # `orbitmesh stop RUN_DIR`: found through run.json and its containers' labels; the
        # controller task gets SIGINT, drains, collects the final counts, writes the summary.
        assert main(["stop", str(run_dir)]) == 0
        controller = _controller(client, run_id)
        assert controller is not None
        code = int(controller.wait(timeout=RUN_WAIT_S)["StatusCode"])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["conservation_ok"]
        assert summary["run"]["interrupted"] is True
        # 130: interrupted; 1 only for a fidelity budget the shared 2-core machine missed.
        assert code == 130 or (code == 1 and not summary["fidelity"]["ok"]), code
        fault = next(f for f in summary["faults"] if f["id"] == "swarm-fault")
        assert fault["origin"] == "live" and fault["kind"] == "link_down"
        flow = next(f for f in summary["flows"] if f["name"] == "tokyo-brussels")
        assert flow["offered"] > 0 and flow["delivered"] > 0
    finally:
        _stack_rm(run_id)
    deadline = time.monotonic() + GONE_WAIT_S
    while (left := _labelled(client, run_id)) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert left == []


@pytest.mark.docker
def test_down_removes_a_stack_by_its_label(swarm: tuple[Any, str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`orbitmesh down RUN` on a stack: services first (else Swarm replaces their containers),
    then its secrets."""
    client, tag = swarm
    run_id = f"swarm-down-{uuid.uuid4().hex[:8]}"
    labels = {LABEL_RUN: run_id, LABEL_ROLE: "broker"}
    stack = tmp_path / "tiny.yml"
    (tmp_path / "pw").write_text("secret\n")
    stack.write_text(yaml.safe_dump({
        "version": "3.8",
        "services": {"broker": {"image": tag, "command": ["sleep", "600"], "labels": labels,
                                "secrets": ["pw"],
                                "deploy": {"labels": labels,
                                           "restart_policy": {"condition": "any"}}}},
        "networks": {"default": {"driver": "overlay", "labels": {LABEL_RUN: run_id}}},
        "secrets": {"pw": {"file": "./pw", "labels": {LABEL_RUN: run_id}}}}))
    try:
        subprocess.run(["docker", "stack", "deploy", "--resolve-image", "never", "-c",
                        str(stack), run_id], capture_output=True, check=True)
        deadline = time.monotonic() + 60
        while not client.containers.list(filters={"label": f"{LABEL_RUN}={run_id}"}):
            assert time.monotonic() < deadline, "the tiny stack never started"
            time.sleep(0.5)
        assert main(["down", run_id]) == 0
        out = capsys.readouterr().out
        assert f"removed service {run_id}_broker" in out
        assert f"removed secret {run_id}_pw" in out  # a locked stack's secrets go too
        deadline = time.monotonic() + GONE_WAIT_S
        while (left := _labelled(client, run_id)) and time.monotonic() < deadline:
            time.sleep(1.0)
        assert left == []  # the restart policy "any" did not bring the broker back
    finally:
        _stack_rm(run_id)
