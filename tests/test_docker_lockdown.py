"""The docker backend's broker, locked down like the local one: who may connect, who sees what.

The unit tests need no docker: they check which secret lands in which container's directory.
The ``docker`` test starts a real `orbitmesh up --detach` run (the offline image; skipped without
a daemon unless ORBITMESH_REQUIRE_DOCKER=1) and attacks its broker from the host.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.client import MqttTransport
from broker.credentials import RunCredentials
from broker.url import BrokerURL, parse_broker_url, resolve_broker_urls
from orbitmesh.errors import BrokerError
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.launch import lockdown
from orbitmesh.run.launch.control import list_faults, locate
from orbitmesh.run.launch.docker_secrets import (
    as_operator,
    container_secrets,
    secure_run,
    write_broker_config,
    write_role_url,
)
from tests.conftest import LOOSE_FIDELITY
from tests.test_docker import _labelled, docker_run  # noqa: F401 (a fixture)

REACH = Path(__file__).resolve().parent / "data" / "live" / "reach.yaml"
"""28 nodes in three worker containers (one per plane, plus the ground): a short live test."""
RUN = "dlock"
WORKERS = 3
HOST = BrokerURL("127.0.0.1", 18830)
SETTLE_S = 5.0


def _secure(tmp_path: Path, lines: list[str], **kw: Any) -> RunCredentials | None:
    return secure_run(tmp_path, RUN, WORKERS, HOST, kw.get("external"),
                      kw.get("insecure", False), tmp_path / "input" / "scenario.yaml",
                      lines.append)


def test_each_container_sees_only_its_own_secret(tmp_path: Path) -> None:
    lines: list[str] = []
    creds = _secure(tmp_path, lines)
    assert creds is not None
    inside = parse_broker_url("mqtt://127.0.0.1:18830")
    for k in range(WORKERS):
        write_role_url(tmp_path, f"worker-{k}", creds.worker(k).on(inside))
    write_role_url(tmp_path, "controller", creds.controller.on(inside))
    write_broker_config(tmp_path, HOST.port, "127.0.0.1", creds)
    secrets = {c.username: c.password for c in creds.all()}

    def seen_by(role: str) -> str:
        # What the container of `role` finds at <run>/broker: the directory mounted there.
        mounts = container_secrets(tmp_path, role)
        (source,) = [s for s, m in mounts.items() if m["bind"] == str(tmp_path / "broker")]
        assert mounts[source]["mode"] == "ro"
        return "".join(p.read_text() for p in Path(source).iterdir())

    for role, own in [("controller", creds.controller), ("worker-1", creds.worker(1)),
                      ("supervisor", creds.operator)]:
        text = seen_by(role)
        assert own.password in text
        assert [u for u, p in secrets.items() if p in text] == [own.username], role
    assert not any(p in seen_by("broker") for p in secrets.values())  # hashes only
    assert resolve_broker_urls(None, tmp_path / "broker" / "worker-1" / "worker-1.url"
                               )[0].username == creds.worker(1).username
    for path in (tmp_path / "broker").rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o600, path
    run_json = (tmp_path / "run.json").read_text()
    assert not any(p in run_json for p in secrets.values())
    run_id, url = locate(str(tmp_path), None)  # what `orbitmesh fault RUN_DIR` does
    assert (run_id, url.username, url.password) == (RUN, creds.operator.username,
                                                     creds.operator.password)
    assert as_operator(tmp_path, HOST).username == creds.operator.username
    assert any("anonymous refused" in line for line in lines)
    assert not any(p in line for line in lines for p in secrets.values())


def test_broker_container_config_refuses_anonymous_clients(tmp_path: Path) -> None:
    creds = RunCredentials.generate(RUN, WORKERS)
    conf = write_broker_config(tmp_path, 1883, None, creds)
    assert conf == tmp_path / "broker" / "mosquitto.conf"  # the path inside the container
    text = (tmp_path / "broker" / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in text and "allow_anonymous true" not in text
    assert f"password_file {tmp_path / 'broker' / 'passwords'}" in text
    assert f"acl_file {tmp_path / 'broker' / 'acl'}" in text
    open_text = write_broker_config(tmp_path / "open", 1883, None, None)
    assert "allow_anonymous true" in (tmp_path / "open" / "broker" / "broker" /
                                      "mosquitto.conf").read_text()
    assert open_text.name == "mosquitto.conf"


def test_insecure_says_so_and_names_no_operator_file(tmp_path: Path) -> None:
    lines: list[str] = []
    assert _secure(tmp_path, lines, insecure=True) is None
    assert any("OPEN (--broker-insecure)" in line for line in lines)
    assert "operator_credentials" not in json.loads((tmp_path / "run.json").read_text())
    assert not (tmp_path / "broker" / "operator.json").exists()


def test_an_external_brokers_user_reaches_the_host_tools_from_a_file(tmp_path: Path) -> None:
    lines: list[str] = []
    external = parse_broker_url("mqtt://ext:s3cret@10.9.8.7:1883")
    assert _secure(tmp_path, lines, external=external) is None
    _, url = locate(str(tmp_path), None)
    assert (url.username, url.password) == ("ext", "s3cret")
    assert "s3cret" not in (tmp_path / "run.json").read_text()


def test_controller_broker_file_keeps_the_launchers_operator_entry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orbitmesh.run.launch.local import RunOptions

    async def reachable(_url: BrokerURL) -> None:
        return None

    monkeypatch.setattr(lockdown, "check_broker", reachable)
    creds = _secure(tmp_path, [])
    assert creds is not None
    inside = write_role_url(tmp_path, "controller", creds.controller.on(HOST))
    host_file = tmp_path / "broker" / "controller" / inside.name
    opts = RunOptions(tmp_path / "s.yaml", broker_file=host_file)
    _, url, users, _ = lockdown.start_broker(opts, tmp_path, RUN, WORKERS)
    assert users is None and url.username == creds.controller.username
    body = json.loads((tmp_path / "run.json").read_text())
    assert body["operator_credentials"] == "broker/operator.json"
    assert creds.controller.password not in json.dumps(body)
    with pytest.raises(BrokerError, match="--broker-file holds the broker URL"):
        lockdown.start_broker(RunOptions(tmp_path / "s.yaml", broker="mqtt://x:1",
                                         broker_file=host_file), tmp_path, RUN, WORKERS)


# -- a real `up` run, attacked from the host ---------------------------------------------------


def _reach_loose(tmp_path: Path) -> Path:
    """reach.yaml with a loose fidelity budget: the broker, not timing, is under test here."""
    raw = yaml.safe_load(REACH.read_text())
    raw["fidelity"] = dict(LOOSE_FIDELITY)
    path = tmp_path / "reach-loose.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


async def _forge_and_watch(host: BrokerURL, creds: RunCredentials, run_id: str
                           ) -> list[tuple[str, bytes]]:
    """Publish a forged state as worker 0, then a sentinel it may publish; what the operator
    saw on the state topic up to the sentinel."""
    t = Topics(run_id)
    sentinel = t.node_outbox("zz-sentinel")
    seen: list[tuple[str, bytes]] = []
    async with MqttTransport(creds.operator.on(host), client_id="t-watch") as watch:
        await watch.subscribe(t.state, sentinel)
        async with MqttTransport(creds.worker(0).on(host), client_id="t-forger") as forger:
            forger.publish(t.state, b"forged")
            forger.publish(t.control, b'{"cmd": "finish"}')
            forger.publish(sentinel, b"mine")  # allowed: proves delivery works
            await forger.flush()
        async with asyncio.timeout(SETTLE_S):
            async for batch in watch.batches():
                seen += [(m.topic, m.payload) for m in batch]
                if any(m.topic == sentinel for m in batch):
                    return seen
    return seen


async def _anonymous(host: BrokerURL) -> None:
    async with MqttTransport(host, client_id="t-anon"):
        pass


@pytest.mark.docker
@pytest.mark.slow
def test_up_runs_locked_and_keeps_passwords_out_of_docker_inspect(
        docker_run: tuple[Any, str, str], tmp_path: Path,  # noqa: F811 (the fixture)
        capsys: pytest.CaptureFixture[str]) -> None:
    from orbitmesh.run.launch.docker import role_container, run_containers
    from orbitmesh.run.launch.docker_cli import main

    client, tag, run_id = docker_run
    out = tmp_path / "run"
    assert main(["up", str(_reach_loose(tmp_path)), "--duration", "40", "--speed", "2",
                 "--out", str(out), "--run-id", run_id, "--image", tag, "--detach"]) == 0
    assert "per-run users and ACL, anonymous refused" in capsys.readouterr().err
    creds = RunCredentials.load(out / "broker" / "credentials.json")
    host = parse_broker_url(json.loads((out / "docker.json").read_text())["host_broker_url"])
    deadline = time.monotonic() + 90
    while not (out / "supervisor.json").is_file() or json.loads(
            (out / "supervisor.json").read_text())["first_tick_s"] is None:
        assert time.monotonic() < deadline, "the locked run never started its clock"
        time.sleep(0.2)
    with pytest.raises(BrokerError, match=r"not authorised"):
        asyncio.run(_anonymous(host))
    seen = asyncio.run(_forge_and_watch(host, creds, run_id))
    assert seen[-1] == (Topics(run_id).node_outbox("zz-sentinel"), b"mine")
    assert (Topics(run_id).state, b"forged") not in seen
    listing = asyncio.run(list_faults(*locate(str(out), None)))  # the host's operator path
    assert "faults" in listing
    assert main(["status", str(out)]) == 0
    assert "heartbeat" in capsys.readouterr().out  # status read the workers as the operator
    controller = role_container(client, run_id, "controller")
    assert controller is not None
    assert controller.wait(timeout=120)["StatusCode"] == 0
    supervisor = role_container(client, run_id, "supervisor")
    assert supervisor is not None and supervisor.wait(timeout=60)["StatusCode"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conservation_ok"]
    containers = run_containers(client, run_id)
    assert {c.labels["orbitmesh.role"] for c in containers} >= {"broker", "controller",
                                                                "worker", "supervisor"}
    secrets = [c.password for c in creds.all()]
    for container in containers:
        container.reload()
        shown = json.dumps(container.attrs)  # what `docker inspect` prints
        assert not any(s in shown for s in secrets), container.name
        over = [m for m in container.attrs["Mounts"]
                if m["Destination"] == str(out / "broker")]
        assert len(over) == 1 and not over[0]["RW"], container.name
    assert main(["down", str(out)]) == 0
    assert _labelled(client, run_id) == []
