"""The locked-down broker: hostile clients against a real mosquitto, and where secrets live.

A run's broker admits only its own users (controller, operator, one per worker), each may
publish only what its role needs, and every password stays in 0600 files in the run directory:
never in run.json, never on a command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.certs import make_run_tls
from broker.client import MqttTransport
from broker.credentials import (
    Credential,
    RunCredentials,
    hash_password,
    render_acl,
    write_operator_file,
    write_private,
)
from broker.embedded import EmbeddedBroker
from broker.url import BROKER_URL_ENV, BrokerURL, parse_broker_url, resolve_broker_url
from orbitmesh.errors import BrokerError
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.launch.control import fault_command, locate, send_command, write_run_file
from tests.conftest import require_mosquitto

RUN = "lock"
WORKERS = 2
SETTLE_S = 5.0
"""Upper bound for a message the broker does deliver to arrive."""
PROJECT = Path(__file__).resolve().parents[1]


# -- files and URLs (no broker) ------------------------------------------------------------


def test_private_files_are_0600_even_when_they_existed_wider(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == "new"


def test_password_hash_is_mosquittos_pbkdf2_sha512_format() -> None:
    salt = bytes(range(12))
    text = hash_password("s3cret", salt=salt, iterations=101)
    kind, iterations, _salt, digest_b64 = text.split("$")[1:]
    assert (kind, iterations) == ("7", "101")
    assert text != hash_password("s3creT", salt=salt, iterations=101)
    assert hash_password("s3cret") != hash_password("s3cret")  # a fresh salt each time
    assert len(digest_b64) == 88  # 64 bytes of SHA-512 output, base64


def test_acl_lets_each_worker_write_only_its_own_status() -> None:
    creds = RunCredentials.generate(RUN, WORKERS)
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in render_acl(creds).split("\n\n")[1:]}
    worker1 = blocks[f"user {creds.worker(1).username}"]
    assert f"topic write orbitmesh/{RUN}/worker/1/status" in worker1
    assert not any("worker/0/status" in line or "control" in line for line in worker1)
    operator = blocks[f"user {creds.operator.username}"]
    assert f"topic write orbitmesh/{RUN}/control" in operator
    assert not any(line.endswith(("/state", "/clock")) for line in operator)
    with pytest.raises(BrokerError, match="not worker 2"):
        creds.worker(2)


def test_credentials_round_trip_and_bad_files_name_the_field(tmp_path: Path) -> None:
    creds = RunCredentials.generate(RUN, WORKERS)
    path = write_private(tmp_path / "credentials.json", creds.to_json())
    assert RunCredentials.load(path) == creds
    body = json.loads(creds.to_json())
    del body["workers"][1]["password"]
    path.write_text(json.dumps(body))
    with pytest.raises(BrokerError, match=r"credentials.json: field 'workers\[1\].password'"):
        RunCredentials.load(path)
    assert creds.operator.password not in repr(creds)


def test_url_carries_client_certificates_and_refuses_them_without_tls() -> None:
    url = parse_broker_url("mqtts://h:8883?ca=/c/ca.pem&cert=/c/me.pem&key=/c/me.key")
    assert (url.ca_file, url.cert_file, url.key_file) == ("/c/ca.pem", "/c/me.pem", "/c/me.key")
    assert parse_broker_url(url.to_text()) == url
    with pytest.raises(BrokerError, match="need TLS"):
        parse_broker_url("mqtt://h?cert=/c/me.pem")
    with pytest.raises(BrokerError, match="key= without cert="):
        parse_broker_url("mqtts://h?key=/c/me.key")


def test_broker_url_comes_from_a_file_then_the_environment(tmp_path: Path) -> None:
    path = write_private(tmp_path / "w.url", "mqtt://u:p%40ss@127.0.0.1:1999\n")
    env = {BROKER_URL_ENV: "mqtt://e:x@10.0.0.1:1"}
    assert resolve_broker_url(None, path, env).password == "p@ss"
    assert resolve_broker_url(None, None, env).host == "10.0.0.1"
    with pytest.raises(BrokerError, match="--broker-file PATH"):
        resolve_broker_url(None, None, {})
    path.write_text("")
    with pytest.raises(BrokerError, match="is empty"):
        resolve_broker_url(None, path, env)


def test_run_file_holds_no_password_and_locate_reads_the_operator_file(tmp_path: Path) -> None:
    creds = RunCredentials.generate(RUN, WORKERS)
    url = BrokerURL("127.0.0.1", 1999)
    write_operator_file(tmp_path / "broker" / "operator.json", creds.operator, url)
    write_run_file(tmp_path, RUN, url, "s.yaml", "broker/operator.json")
    assert creds.operator.password not in (tmp_path / "run.json").read_text()
    run_id, found = locate(str(tmp_path), None)
    assert run_id == RUN
    assert (found.username, found.password) == (creds.operator.username, creds.operator.password)


# -- hostile clients against a real mosquitto ------------------------------------------------


@pytest.fixture(scope="module")
def creds() -> RunCredentials:
    """The users of the locked run."""
    return RunCredentials.generate(RUN, WORKERS)


@pytest.fixture(scope="module")
def locked(creds: RunCredentials, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[EmbeddedBroker]:
    """mosquitto with the run's users and ACL, anonymous clients refused."""
    require_mosquitto()
    with EmbeddedBroker(engine="mosquitto", credentials=creds,
                        workdir=tmp_path_factory.mktemp("locked")) as broker:
        yield broker


def mosquitto_pub(url: BrokerURL, topic: str, message: str, user: Credential | None = None
                  ) -> subprocess.CompletedProcess[str]:
    """Publish once with mosquitto_pub (a hostile client: not orbitmesh code)."""
    auth = ["-u", user.username, "-P", user.password] if user is not None else []
    tls = ["--cafile", url.ca_file] if url.ca_file else []
    return subprocess.run(["mosquitto_pub", "-h", url.host, "-p", str(url.port), *auth, *tls,
                           "-t", topic, "-m", message], capture_output=True, text=True,
                          timeout=10, check=False)


async def received_until(transport: MqttTransport, sentinel: str) -> list[tuple[str, bytes]]:
    """Messages up to and including one on topic ``sentinel``."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(SETTLE_S):
        async for batch in transport.batches():
            got += [(m.topic, m.payload) for m in batch]
            if any(m.topic == sentinel for m in batch):
                return got
    return got


def test_anonymous_clients_are_refused(locked: EmbeddedBroker) -> None:
    assert shutil.which("mosquitto_pub"), "install mosquitto-clients"
    pub = mosquitto_pub(locked.url, Topics(RUN).control, '{"cmd": "finish"}')
    assert pub.returncode != 0
    assert "not authorised" in pub.stderr


async def test_anonymous_and_wrong_password_transport_is_refused(
        locked: EmbeddedBroker, creds: RunCredentials) -> None:
    wrong = Credential(creds.operator.username, creds.operator.password + "x")
    for url in (locked.url, wrong.on(locked.url)):
        with pytest.raises(BrokerError, match=r"not authorised|bad user name or password"):
            async with MqttTransport(url, client_id="hostile"):
                pass


async def test_a_worker_cannot_forge_control_state_clock_or_another_workers_status(
        locked: EmbeddedBroker, creds: RunCredentials) -> None:
    t = Topics(RUN)
    async with MqttTransport(creds.operator.on(locked.url), client_id="watch") as watch:
        await watch.subscribe(f"{t.root}/#")
        forged = [t.control, t.state, t.clock, t.faults, t.worker_status(1)]
        for topic in forged[:2]:  # the hostile side as any MQTT client would do it
            assert mosquitto_pub(locked.url, topic, "forged", creds.worker(0)).returncode == 0
        async with MqttTransport(creds.worker(0).on(locked.url), client_id="w0") as worker:
            for topic in forged[2:]:
                worker.publish(topic, b"forged")
            worker.publish(t.worker_status(0), b"mine")  # allowed: proves delivery works
            await worker.flush()
        got = await received_until(watch, t.worker_status(0))
    assert got == [(t.worker_status(0), b"mine")]


async def test_the_operator_can_send_a_fault_and_the_controller_sees_it(
        locked: EmbeddedBroker, creds: RunCredentials) -> None:
    t = Topics(RUN)
    command = fault_command("link_down", ["tokyo", "singapore"], 5.0, "op-1")
    async with MqttTransport(creds.controller.on(locked.url), client_id="ctl") as controller:
        await controller.subscribe(t.control)
        sender = asyncio.create_task(send_command(RUN, creds.operator.on(locked.url), command))
        got = await received_until(controller, t.control)
        assert await sender is None  # no error reply (nobody runs the control loop here)
    assert json.loads(got[0][1]) == command


async def test_tls_listener_needs_the_run_ca(creds: RunCredentials, tmp_path: Path) -> None:
    require_mosquitto()
    tls = make_run_tls(tmp_path / "tls", RUN)
    with EmbeddedBroker(engine="mosquitto", credentials=creds, tls=tls,
                        workdir=tmp_path) as broker:
        url = creds.operator.on(broker.url)
        assert url.tls and url.ca_file == str(tls.ca_file)
        without_ca = BrokerURL(url.host, url.port, "mqtts", url.username, url.password)
        with pytest.raises(BrokerError, match=r"TLS|certificate"):
            async with MqttTransport(without_ca, client_id="no-ca"):
                pass
        plain = BrokerURL(url.host, url.port, "mqtt", url.username, url.password)
        with pytest.raises(BrokerError):
            async with MqttTransport(plain, client_id="plain"):
                pass
        async with MqttTransport(url, client_id="with-ca") as transport:
            await transport.subscribe(Topics(RUN).control)
        assert mosquitto_pub(broker.url, Topics(RUN).control, "{}", creds.operator
                             ).returncode == 0


# -- a real run: no password on any command line ---------------------------------------------


def command_lines() -> list[str]:
    """Every process's command line (what `ps` shows any user)."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return lines


@pytest.mark.slow
def test_a_run_keeps_its_passwords_off_command_lines_and_out_of_run_json(tmp_path: Path
                                                                         ) -> None:
    require_mosquitto()
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orbitmesh", "run", str(PROJECT / "tests/data/live/reach.yaml"),
         "--workers", str(WORKERS), "--duration", "20", "--out", str(run_dir), "--quiet"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not all((run_dir / "broker" / f"worker-{k}.url").is_file()
                      for k in range(WORKERS)):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        creds = RunCredentials.load(run_dir / "broker" / "credentials.json")
        secrets = [c.password for c in creds.all()]
        time.sleep(0.5)  # the workers are exec'd right after their URL files are written
        shown = command_lines()
        assert any("nodes.worker" in line for line in shown)
        assert [line for line in shown if any(s in line for s in secrets)] == []
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    # Exit 1 may be a broken fidelity budget on a loaded machine; the run itself must be sound.
    assert proc.returncode in (0, 1), err
    assert json.loads((run_dir / "summary.json").read_text())["conservation_ok"]
    assert "per-run users and ACL" in err and "operator credentials:" in err
    assert not any(s in err for s in secrets)
    for name in ("credentials.json", "operator.json", "passwords", "acl", "worker-0.url"):
        assert (run_dir / "broker" / name).stat().st_mode & 0o777 == 0o600, name
    public = [p for p in run_dir.rglob("*") if p.is_file() and p.stat().st_mode & 0o044]
    assert [p for p in public if any(s in p.read_text(errors="replace") for s in secrets)] == []
