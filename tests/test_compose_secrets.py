"""Compose and stack files lock their broker down: per-run users, ACL, secrets in files.

No docker here: what `orbitmesh compose` writes, which service gets which secret, and a real
mosquitto (on loopback) enforcing the generated password file and ACL for a run id chosen after
the file was written. tests/test_compose_lockdown.py runs the file under docker-compose.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.certs import ServerTLS
from broker.client import MqttTransport
from broker.credentials import load_operator
from broker.embedded import free_loopback_port, probe_connack
from broker.mosquitto_conf import find_mosquitto, render_mosquitto_config, security_lines
from broker.url import BrokerURL, parse_broker_url, resolve_broker_urls
from orbitmesh.errors import BrokerError
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.cli import main
from orbitmesh.run.launch import compose
from orbitmesh.run.launch.compose import ComposeOptions, prelude, write_compose
from orbitmesh.run.launch.compose_secrets import CA, SERVER_CERT, SERVER_KEY, secrets_dir
from orbitmesh.run.launch.control import locate
from orbitmesh.run.launch.stack import write_stack
from tests.conftest import require_mosquitto

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.yaml"
SETTLE_S = 5.0


def _write(tmp_path: Path, **kw: Any) -> tuple[dict[str, Any], str, Path]:
    path = write_compose(ComposeOptions(DEMO, tmp_path / "demo.yml", nodes_per_container=35,
                                        **kw))
    text = path.read_text()
    return yaml.safe_load(text), text, secrets_dir(path)


def _passwords(folder: Path) -> dict[str, str]:
    """Every user's password, from the URL and operator files (hashes are not passwords)."""
    users: dict[str, str] = {}
    for path in folder.glob("*.url"):
        url = resolve_broker_urls(None, path)[0]
        assert url.username is not None and url.password
        users[url.username] = url.password
    operator = load_operator(folder / "operator.json")
    users[operator.username] = operator.password
    return users


def test_each_service_sees_only_its_own_secret_and_no_password_is_in_the_file(
        tmp_path: Path) -> None:
    doc, text, folder = _write(tmp_path)
    passwords = _passwords(folder)
    assert len(passwords) == 4  # controller, operator, worker-0, worker-1
    assert not any(p in text for p in passwords.values())
    services = doc["services"]
    own = {name: service["secrets"] for name, service in services.items()}
    assert own == {"broker": ["broker-passwords", "broker-acl"],
                   "controller": ["controller.url"], "worker-0": ["worker-0.url"],
                   "worker-1": ["worker-1.url"], "supervisor": ["operator.json"]}
    for name, secrets in own.items():
        seen = "".join((tmp_path / doc["secrets"][s]["file"]).read_text() for s in secrets)
        shown = [user for user, password in passwords.items() if password in seen]
        assert len(shown) == (0 if name == "broker" else 1), (name, shown)  # broker: hashes
        command = services[name]["command"]
        assert "--broker" not in command or "@" not in command[command.index("--broker") + 1]
    assert resolve_broker_urls(None, folder / "worker-1.url")[0].username == \
        "orbitmesh-worker-1"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        name: 0o600 for name in doc["secrets"]}
    conf = services["broker"]["environment"]["ORBITMESH_FILE_0"]
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
    assert "password_file /run/secrets/broker-passwords" in conf
    assert "acl_file /run/secrets/broker-acl" in conf and "user root" in conf
    assert "per-run users and ACL, anonymous refused" in text


def test_without_a_supervisor_the_operator_file_is_still_written(tmp_path: Path) -> None:
    doc, text, folder = _write(tmp_path, supervisor=False)
    assert "operator.json" not in doc["secrets"] and "supervisor" not in doc["services"]
    assert load_operator(folder / "operator.json").username == "orbitmesh-operator"
    assert "docs/containers.md" in text  # how to inject faults without the supervisor


def test_acl_and_users_do_not_name_the_run_id(tmp_path: Path) -> None:
    _, _, folder = _write(tmp_path, run_id="written-id")
    acl = (folder / "broker-acl").read_text()
    assert "written-id" not in acl and "written-id" not in (folder / "broker-passwords"
                                                            ).read_text()
    topics = [line.split()[-1] for line in acl.splitlines() if line.startswith("topic ")]
    assert topics and all(t.startswith("orbitmesh/+/") for t in topics)


def test_a_second_compose_gets_fresh_passwords_and_drops_stale_secrets(tmp_path: Path) -> None:
    _, _, folder = _write(tmp_path)
    first = _passwords(folder)
    (folder / "worker-7.url").write_text("mqtt://old:x@broker:1883\n")
    (folder / "notes.txt").write_text("mine\n")
    _write(tmp_path)
    assert not set(first.values()) & set(_passwords(folder).values())
    assert not (folder / "worker-7.url").exists() and (folder / "notes.txt").exists()


def test_broker_insecure_keeps_the_open_broker_and_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "open.yml"
    assert main(["compose", str(DEMO), "-o", str(out), "--broker-insecure"]) == 0
    err = capsys.readouterr().err
    assert "OPEN (--broker-insecure)" in err
    text = out.read_text()
    assert "# broker: OPEN (--broker-insecure)" in text
    doc = yaml.safe_load(text)
    assert "secrets" not in doc and not secrets_dir(out).exists()
    assert "allow_anonymous true" in doc["services"]["broker"]["environment"]["ORBITMESH_FILE_0"]
    command = doc["services"]["controller"]["command"]
    assert command[command.index("--broker") + 1] == "mqtt://broker:1883"
    assert main(["compose", str(DEMO), "-o", str(tmp_path / "x.yml"), "--broker-insecure",
                 "--broker", "mqtt://mq.example.invalid:1883"]) == 2
    assert "--broker-insecure opens the compose file's own broker" in capsys.readouterr().err


def test_an_external_brokers_password_goes_into_secret_files_only(tmp_path: Path) -> None:
    doc, text, folder = _write(tmp_path, broker="mqtt://ext:s3cret@mq.example.invalid:1883")
    assert "s3cret" not in text and "broker" not in doc["services"]
    for name, service in doc["services"].items():
        assert "s3cret" not in json.dumps(service), name
    command = doc["services"]["worker-0"]["command"]
    assert command[command.index("--broker-file") + 1] == "/run/secrets/worker-0.url"
    assert resolve_broker_urls(None, folder / "worker-0.url")[0].password == "s3cret"
    assert load_operator(folder / "operator.json").username == "ext"
    assert doc["services"]["controller"]["environment"]["ORBITMESH_WAIT_BROKER"] == (
        "mqtt://mq.example.invalid:1883")
    (tmp_path / "plain").mkdir()
    plain, _, _ = _write(tmp_path / "plain", broker="mqtt://mq.example.invalid:1883")
    assert "secrets" not in plain  # no password: nothing to hide, the URL as given


def test_the_controllers_prelude_names_the_operator_secret_in_run_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compose, "probe_connack", lambda host, port, tls=None: host == "broker")
    doc, _, folder = _write(tmp_path)
    env = {k: v.replace("${ORBITMESH_RUN_ID:-demo}", "r1")
           for k, v in doc["services"]["controller"]["environment"].items()}
    run_dir = tmp_path / "run" / "r1"
    env["ORBITMESH_RUN_DIR"] = str(run_dir)
    env["ORBITMESH_OPERATOR_FILE"] = str(folder / "operator.json")  # its /run/secrets path
    assert prelude([], env, input_dir=tmp_path / "in") == 0
    run_id, url = locate(str(run_dir), None)  # `orbitmesh fault RUN_DIR` in such a container
    operator = load_operator(folder / "operator.json")
    assert (run_id, url.username, url.password) == ("r1", operator.username, operator.password)
    assert operator.password not in (run_dir / "run.json").read_text()


def test_stack_secrets_are_swarm_secrets_owned_by_the_services_user(tmp_path: Path) -> None:
    import os

    path = write_stack(ComposeOptions(DEMO, tmp_path / "stack.yml", nodes_per_container=35),
                       tmp_path / "results")
    doc = yaml.safe_load(path.read_text())
    for name, secret in doc["secrets"].items():
        assert secret["labels"] == {"orbitmesh.run": "${ORBITMESH_RUN_ID:-demo}"}, name
        assert (path.parent / secret["file"]).is_file()
    worker = doc["services"]["worker-1"]
    assert worker["secrets"] == [{"source": "worker-1.url", "target": "worker-1.url",
                                  "uid": str(os.getuid()), "gid": str(os.getgid()),
                                  "mode": 0o400}]
    assert [s["source"] for s in doc["services"]["supervisor"]["secrets"]] == ["operator.json"]
    assert "--broker-file" in doc["services"]["controller"]["command"]
    assert "/run/secrets/operator.json:ro" in path.read_text()  # the header's fault command
    assert not any(p in path.read_text() for p in _passwords(secrets_dir(path)).values())


def test_an_insecure_stack_has_no_secrets_and_says_so(tmp_path: Path) -> None:
    path = write_stack(ComposeOptions(DEMO, tmp_path / "open.yml", broker_insecure=True),
                       tmp_path / "results")
    text = path.read_text()
    assert "OPEN (--broker-insecure)" in text and "stack's network" in text
    assert "secrets" not in yaml.safe_load(text) and not secrets_dir(path).exists()


def test_tls_gives_the_broker_a_certificate_and_every_service_the_ca(tmp_path: Path) -> None:
    doc, text, folder = _write(tmp_path, tls=True)
    services = doc["services"]
    assert {CA, SERVER_CERT, SERVER_KEY} <= set(services["broker"]["secrets"])
    for name, service in services.items():
        if name != "broker":
            assert CA in service["secrets"] and SERVER_KEY not in service["secrets"], name
    for path in folder.glob("*.url"):
        url = resolve_broker_urls(None, path)[0]
        assert (url.scheme, url.host, url.port, url.ca_file) == (
            "mqtts", "broker", 8883, f"/run/secrets/{CA}"), path.name
    conf = dict(zip(*[iter(services["broker"]["environment"].values())] * 2, strict=True))
    lines = conf["mosquitto.conf"].splitlines()
    assert "listener 8883" in lines and f"certfile /run/secrets/{SERVER_CERT}" in lines
    assert not any("1883" in line for line in lines)  # no plain-text listener
    assert "PRIVATE KEY" not in text and "TLS only" in text
    assert not any("ca.key" in p.name for p in folder.iterdir())  # the CA signs nothing more


@pytest.mark.parametrize("extra", [{"broker": "mqtt://elsewhere:1883"},
                                   {"broker_insecure": True}])
def test_tls_is_refused_where_it_cannot_hold(tmp_path: Path, extra: dict[str, Any]) -> None:
    with pytest.raises(BrokerError, match="--tls is for the compose file's own"):
        _write(tmp_path, tls=True, **extra)
    assert not (tmp_path / "demo.yml").exists()


# -- the generated password file, ACL and TLS files, enforced by a real mosquitto --------------


@contextlib.contextmanager
def _mosquitto(tmp_path: Path, folder: Path, tls: ServerTLS | None = None) -> Iterator[int]:
    """mosquitto with a compose file's secrets (host paths) on a loopback port; the port."""
    require_mosquitto()
    port = free_loopback_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(render_mosquitto_config(port, security=security_lines(
        password_file=folder / "broker-passwords", acl_file=folder / "broker-acl", tls=tls)))
    mosquitto = find_mosquitto()
    assert mosquitto is not None
    ready = None
    if tls is not None:  # readiness only: the certificate names "broker", not 127.0.0.1
        ready = ssl.create_default_context(cafile=str(tls.ca_file))
        ready.check_hostname = False
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=err)
    try:
        while not probe_connack("127.0.0.1", port, timeout_s=0.2, tls=ready):  # a CONNACK
            assert proc.poll() is None, log.read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def compose_broker(tmp_path: Path) -> Iterator[tuple[BrokerURL, Path]]:
    """mosquitto with a compose file's password file and ACL (host paths), on loopback."""
    _, _, folder = _write(tmp_path, run_id="written-id")
    with _mosquitto(tmp_path, folder) as port:
        yield parse_broker_url(f"mqtt://127.0.0.1:{port}"), folder


def _handshake(port: int, ca_file: Path, name: str) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
                context.wrap_socket(sock, server_hostname=name):
            return "ok"
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message


def test_the_tls_files_serve_the_broker_host_name_and_refuse_plain_text(tmp_path: Path) -> None:
    _, _, folder = _write(tmp_path, tls=True)
    tls = ServerTLS(folder / CA, folder / SERVER_CERT, folder / SERVER_KEY)
    with _mosquitto(tmp_path, folder, tls) as port:
        assert _handshake(port, folder / CA, "broker") == "ok"
        assert "mismatch" in _handshake(port, folder / CA, "localhost")
        worker = resolve_broker_urls(None, folder / "worker-0.url")[0]
        here = dataclasses.replace(worker, host="127.0.0.1", port=port, ca_file=str(folder / CA),
                                   tls_insecure=True)  # the host check: done above
        seen = asyncio.run(_round_trip(here))
        assert seen == [b"over tls"]
        with pytest.raises(BrokerError):
            asyncio.run(_round_trip(dataclasses.replace(here, scheme="mqtt", ca_file=None,
                                                        tls_insecure=False)))


async def _round_trip(url: BrokerURL) -> list[bytes]:
    topic = "orbitmesh/r1/node/zz-sentinel/out"  # worker 0 may publish (and read) it
    async with MqttTransport(url, client_id="t-tls") as client, \
            MqttTransport(url, client_id="t-tls-watch") as watch:
        await watch.subscribe(topic)
        client.publish(topic, b"over tls")
        await client.flush()
        async with asyncio.timeout(SETTLE_S):
            async for batch in watch.batches():
                return [m.payload for m in batch]
    return []


def _as(folder: Path, name: str, host: BrokerURL) -> BrokerURL:
    """The user of the URL secret ``name`` (written for ``broker:1883``), at ``host``."""
    url = resolve_broker_urls(None, folder / name)[0]
    return dataclasses.replace(host, username=url.username, password=url.password)


async def _forge(host: BrokerURL, folder: Path, run_id: str) -> list[tuple[str, bytes]]:
    """As worker 0: a forged state, then a sentinel it may publish; what the operator saw."""
    t = Topics(run_id)
    sentinel = t.node_outbox("zz-sentinel")
    seen: list[tuple[str, bytes]] = []
    operator = load_operator(folder / "operator.json").on(host)
    async with MqttTransport(operator, client_id="t-watch") as watch:
        await watch.subscribe(t.state, t.clock, sentinel)
        async with MqttTransport(_as(folder, "worker-0.url", host), client_id="t-w0") as forger:
            forger.publish(t.state, b"forged")
            forger.publish(t.clock, b"forged")
            forger.publish(sentinel, b"mine")  # allowed: proves delivery works
            await forger.flush()
        async with MqttTransport(_as(folder, "controller.url", host), client_id="t-c") as ctl:
            ctl.publish(t.clock, b"tick")  # the controller may
            await ctl.flush()
        async with asyncio.timeout(SETTLE_S):
            async for batch in watch.batches():
                seen += [(m.topic, m.payload) for m in batch]
                if (t.clock, b"tick") in seen and any(m[0] == sentinel for m in seen):
                    return seen
    return seen


def test_the_generated_acl_holds_for_a_run_id_chosen_at_deploy_time(
        compose_broker: tuple[BrokerURL, Path]) -> None:
    host, folder = compose_broker
    with pytest.raises(BrokerError, match="not authorised"):
        asyncio.run(_anonymous(host))
    for run_id in ("deploy-time-id", "written-id"):
        seen = asyncio.run(_forge(host, folder, run_id))
        t = Topics(run_id)
        assert (t.node_outbox("zz-sentinel"), b"mine") in seen and (t.clock, b"tick") in seen
        assert (t.state, b"forged") not in seen and (t.clock, b"forged") not in seen


async def _anonymous(host: BrokerURL) -> None:
    async with MqttTransport(host, client_id="t-anon"):
        pass
