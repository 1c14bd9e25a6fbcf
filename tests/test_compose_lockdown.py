"""A compose file's locked-down broker under a real `docker-compose up`, attacked from its network.

One deployment for the module (the demo with ``--tls``, 2 worker services, a short run): it must
end with its summary; a container the test starts on the compose network finds no plain-text
listener, is refused over TLS without a credential (and with a certificate check that fails for
another host name), and with worker 0's credential it cannot forge the state or the clock; a
live fault goes in through the supervisor's operator secret; no password is in any container's
`docker inspect` or in the file; `down -v` leaves nothing labelled with the run id. Needs a
docker daemon, docker-compose and the orbitmesh image (skipped without them unless
ORBITMESH_REQUIRE_DOCKER=1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orbitmesh.run.cli import main
from orbitmesh.run.launch.compose_secrets import secrets_dir
from orbitmesh.run.launch.docker import LABEL_ROLE, LABEL_RUN
from tests.conftest import LOOSE_FIDELITY
from tests.test_compose_secrets import _passwords

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.yaml"
DURATION_S = 30
RUN_WAIT_S = 240.0

PROBE = r"""
import asyncio, dataclasses, json, socket, ssl, sys
from pathlib import Path
from broker.client import MqttTransport
from broker.credentials import load_operator
from broker.url import parse_broker_url, resolve_broker_urls
from orbitmesh.errors import BrokerError
from orbitmesh.protocol.wire import Topics

HOST = parse_broker_url("mqtts://broker:8883?ca=/run/secrets/broker-ca.pem")
SECRETS, RUN, WAIT_S = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])


def handshake(name):  # the TLS handshake, checking the broker's certificate for host name
    context = ssl.create_default_context(cafile=str(SECRETS / "broker-ca.pem"))
    try:
        with socket.create_connection(("broker", 8883), timeout=5) as sock, \
                context.wrap_socket(sock, server_hostname=name):
            return "ok"
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__ + ": " + str(exc)


async def main():
    out = {"tls_as_broker": handshake("broker"), "tls_as_other": handshake("other")}
    try:
        with socket.create_connection(("broker", 1883), timeout=5):
            out["plain_1883"] = "connected"
    except OSError as exc:
        out["plain_1883"] = type(exc).__name__
    try:
        async with MqttTransport(dataclasses.replace(HOST, scheme="mqtt", ca_file=None),
                                 client_id="t-plain"):
            out["plain_8883"] = "admitted"
    except (BrokerError, OSError) as exc:
        out["plain_8883"] = type(exc).__name__ + ": " + str(exc)
    try:
        async with MqttTransport(HOST, client_id="t-anon"):
            out["anonymous"] = "admitted"
    except BrokerError as exc:
        out["anonymous"] = str(exc)
    t = Topics(RUN)
    sentinel = t.node_outbox("zz-sentinel")
    seen = []
    operator = load_operator(SECRETS / "operator.json").on(HOST)
    async with MqttTransport(operator, client_id="t-watch") as watch:
        await watch.subscribe(t.clock)
        async with asyncio.timeout(WAIT_S):  # the run's clock (retained): the run is going
            async for batch in watch.batches():
                if any(m.payload for m in batch):
                    break
        await watch.subscribe(t.state, sentinel)
        worker = resolve_broker_urls(None, SECRETS / "worker-0.url")[0]
        async with MqttTransport(worker, client_id="t-forger") as forger:
            forger.publish(t.state, b"forged")
            forger.publish(t.clock, b"forged")
            forger.publish(sentinel, b"mine")  # allowed: proves delivery works
            await forger.flush()
        async with asyncio.timeout(10):
            async for batch in watch.batches():
                seen += [[m.topic, m.payload.decode(errors="replace")] for m in batch]
                if any(m.topic == sentinel for m in batch):
                    break
    out["seen"] = seen
    print(json.dumps(out))


asyncio.run(main())
"""


@dataclass(frozen=True)
class Deployment:
    """One `docker-compose up -d` of the locked-down demo, and what the tests found."""

    client: Any
    tag: str
    run_id: str
    path: Path
    probe: dict[str, Any]
    fault_reply: str
    code: int
    summary: dict[str, Any]
    inspected: list[str]
    """`docker inspect` of every container of the run, as JSON text."""


def _compose(tool: str, run_id: str, path: Path, *args: str, timeout: float = 240
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-p", run_id, "-f", str(path), *args], capture_output=True,
                          text=True, check=False, timeout=timeout,
                          env={**os.environ, "ORBITMESH_RUN_ID": run_id})


def _labelled(client: Any, run_id: str) -> list[str]:
    label = {"label": f"{LABEL_RUN}={run_id}"}
    return ([f"container {c.name}" for c in client.containers.list(all=True, filters=label)]
            + [f"network {n.name}" for n in client.networks.list(filters=label)]
            + [f"volume {v.name}" for v in client.volumes.list(filters=label)])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from tests.test_docker import _docker_or_skip

    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    client, tag = _docker_or_skip()
    tmp = tmp_path_factory.mktemp("compose-lock")
    raw = yaml.safe_load(DEMO.read_text())
    raw["fidelity"] = dict(LOOSE_FIDELITY)  # the broker, not timing, is under test here
    scenario = tmp / "demo.yaml"
    scenario.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_id = f"clock-{uuid.uuid4().hex[:8]}"
    path = tmp / "demo.yml"
    assert main(["compose", str(scenario), "-o", str(path), "--image", tag,
                 "--nodes-per-container", "35", "--duration", str(DURATION_S), "--speed", "1",
                 "--run-id", "written", "--tls"]) == 0
    try:
        up = _compose(tool, run_id, path, "up", "-d")
        assert up.returncode == 0, up.stderr
        folder = secrets_dir(path)
        out = client.containers.run(
            tag, ["python", "-c", PROBE, "/run/secrets", run_id, str(RUN_WAIT_S)],
            network=f"{run_id}_default", remove=True, stdout=True, stderr=True,
            volumes={str(folder): {"bind": "/run/secrets", "mode": "ro"}},
            labels={LABEL_RUN: run_id, LABEL_ROLE: "test"})
        probe = json.loads(out.decode().strip().splitlines()[-1])
        run_dir = f"/run/orbitmesh/{run_id}"
        fault = _compose(tool, run_id, path, "exec", "-T", "supervisor", "orbitmesh", "fault",
                         run_dir, "link_down", "tokyo", "--id", "compose-fault", "--for", "3")
        controller = client.containers.list(all=True, filters={"label": [
            f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}=controller"]})[0]
        code = int(controller.wait(timeout=RUN_WAIT_S)["StatusCode"])
        fetched = tmp / "fetched"
        assert main(["fetch", run_id, "-o", str(fetched)]) == 0
        summary = json.loads((fetched / "summary.json").read_text())
        inspected = []
        for container in client.containers.list(all=True,
                                                filters={"label": f"{LABEL_RUN}={run_id}"}):
            container.reload()
            inspected.append(json.dumps(container.attrs))
        yield Deployment(client, tag, run_id, path, probe, fault.stdout + fault.stderr, code,
                         summary, inspected)
    finally:
        down = _compose(tool, run_id, path, "down", "-v", timeout=120)
        assert down.returncode == 0, down.stderr
        client.close()


@pytest.mark.docker
@pytest.mark.slow
def test_locked_compose_run_ends_with_its_summary_and_takes_a_live_fault(
        deployment: Deployment) -> None:
    summary = deployment.summary
    assert summary["conservation_ok"] and summary["run"]["interrupted"] is False
    assert deployment.code == (0 if summary["fidelity"]["ok"] else 1)
    flow = next(f for f in summary["flows"] if f["name"] == "tokyo-brussels")
    assert flow["offered"] > 0 and flow["delivered"] > 0
    fault = next((f for f in summary["faults"] if f["id"] == "compose-fault"), None)
    assert fault is not None, deployment.fault_reply  # the operator's secret, via run.json
    assert fault["origin"] == "live"


@pytest.mark.docker
@pytest.mark.slow
def test_only_tls_is_spoken_anonymous_clients_are_refused_and_a_worker_cannot_forge_the_state(
        deployment: Deployment) -> None:
    assert "not authorised" in deployment.probe["anonymous"]  # over TLS, as the URL says
    assert deployment.probe["tls_as_broker"] == "ok"
    assert "certificate verify failed" in deployment.probe["tls_as_other"]
    assert deployment.probe["plain_1883"] == "ConnectionRefusedError"
    assert deployment.probe["plain_8883"] != "admitted"
    seen = [tuple(m) for m in deployment.probe["seen"]]
    sentinel = f"orbitmesh/{deployment.run_id}/node/zz-sentinel/out"
    assert (sentinel, "mine") in seen  # the worker's allowed publish arrived
    assert (f"orbitmesh/{deployment.run_id}/state", "forged") not in seen
    assert (f"orbitmesh/{deployment.run_id}/clock", "forged") not in seen


@pytest.mark.docker
@pytest.mark.slow
def test_no_password_in_docker_inspect_or_the_file(deployment: Deployment) -> None:
    passwords = list(_passwords(secrets_dir(deployment.path)).values())
    assert len(deployment.inspected) >= 5  # broker, controller, 2 workers, supervisor
    for shown in deployment.inspected:
        assert not any(p in shown for p in passwords), json.loads(shown)["Name"]
    assert not any(p in deployment.path.read_text() for p in passwords)


@pytest.mark.docker
@pytest.mark.slow
def test_down_leaves_nothing_labelled(deployment: Deployment) -> None:
    tool = shutil.which("docker-compose")
    assert tool is not None
    down = _compose(tool, deployment.run_id, deployment.path, "down", "-v", timeout=120)
    assert down.returncode == 0, down.stderr
    assert _labelled(deployment.client, deployment.run_id) == []
