"""Broker URLs, the embedded broker's process lifecycle, and check_broker's error messages."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import check_broker, connect_error
from broker.connection import BrokerClosedError, ConnackRefusedError
from broker.embedded import EmbeddedBroker, free_loopback_port, probe_connack
from broker.mosquitto_conf import render_mosquitto_config
from broker.url import BrokerURL, parse_broker_url
from orbitmesh.errors import BrokerError
from orbitmesh.protocol.mqtt import ProtocolError
from tests.conftest import require_mosquitto

HANG_GUARD_S = 15.0
"""Upper bound for a call that must give up on its own after a few seconds."""


def pid_exists(pid: int) -> bool:
    """True while a process with this PID exists (zombies count as gone once reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def closed_loopback_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound and closed a moment ago)."""
    return free_loopback_port()


# -- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt://localhost", BrokerURL("localhost", 1883)),
        ("mqtt://10.0.0.5:18830", BrokerURL("10.0.0.5", 18830)),
        ("mqtts://broker.example", BrokerURL("broker.example", 8883, scheme="mqtts")),
        ("MQTT://Host.Example:1884/", BrokerURL("host.example", 1884)),
        ("mqtt://[::1]:1999", BrokerURL("::1", 1999)),
        ("mqtt://al%40ce:p%3Ass@h:1", BrokerURL("h", 1, username="al@ce", password="p:ss")),
        ("mqtt://bob@h", BrokerURL("h", 1883, username="bob")),
        (
            "mqtts://h:8884?ca=/etc/ca.pem&insecure=1",
            BrokerURL("h", 8884, scheme="mqtts", ca_file="/etc/ca.pem", tls_insecure=True),
        ),
    ],
)
def test_parse_good_urls(text: str, expected: BrokerURL) -> None:
    assert parse_broker_url(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("localhost:1883", "expected mqtt://"),
        ("http://h:80", "unsupported scheme 'http'"),
        ("mqtt://:1883", "no host"),
        ("mqtt://h:99999", "expected mqtt://"),
        ("mqtt://h:port", "expected mqtt://"),
        ("mqtt://h:0", "port 0"),
        ("mqtt://h:1883/path", "unexpected path"),
        ("mqtt://h?ca=/x.pem", "need TLS"),
        ("mqtts://h?insecure=maybe", "insecure='maybe'"),
        ("mqtts://h?colour=blue", "unknown option 'colour'"),
    ],
)
def test_parse_bad_urls_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(BrokerError, match="broker") as caught:
        parse_broker_url(text)
    assert says in str(caught.value)


def test_url_text_hides_the_password_but_round_trips_when_asked() -> None:
    url = parse_broker_url("mqtt://ops:hunter2@h:1884")
    assert "hunter2" not in str(url)
    assert "hunter2" not in repr(url)
    assert str(url) == "mqtt://ops:***@h:1884"
    assert parse_broker_url(url.to_text(show_password=True)) == url


def test_bad_url_message_does_not_leak_the_password() -> None:
    with pytest.raises(BrokerError) as caught:
        parse_broker_url("mqtt://ops:hunter2@h:notaport")
    assert "hunter2" not in str(caught.value)


# -- config --------------------------------------------------------------------------------


def test_mosquitto_config_listens_where_asked_and_never_drops_queued_messages() -> None:
    lines = render_mosquitto_config(18830).splitlines()
    assert "listener 18830 127.0.0.1" in lines
    assert "max_queued_messages 1000000" in lines
    assert "persistence false" in lines
    everywhere = render_mosquitto_config(1883, bind=None, extra=["password_file /p"])
    assert "listener 1883" in everywhere.splitlines()
    assert everywhere.rstrip().endswith("password_file /p")


# -- embedded broker -----------------------------------------------------------------------


def test_embedded_broker_starts_restarts_on_the_same_port_and_leaves_no_process() -> None:
    require_mosquitto()
    with EmbeddedBroker(engine="mosquitto") as broker:
        first_pid, port = broker.pid, broker.port
        assert first_pid is not None and pid_exists(first_pid)
        assert probe_connack("127.0.0.1", port)
        broker.restart()
        assert broker.port == port
        assert broker.pid not in (None, first_pid)
        assert not pid_exists(first_pid)
        assert probe_connack("127.0.0.1", port)
        second_pid, workdir = broker.pid, broker.workdir
    assert second_pid is not None and not pid_exists(second_pid)
    assert not workdir.exists()
    broker.stop()  # idempotent
    assert broker.pid is None


def test_stopped_broker_refuses_connections_until_started_again() -> None:
    require_mosquitto()
    with EmbeddedBroker(engine="mosquitto") as broker:
        broker.stop()
        assert not probe_connack("127.0.0.1", broker.port, timeout_s=1.0)
        broker.start()
        assert probe_connack("127.0.0.1", broker.port)


def test_broker_that_cannot_start_reports_its_log() -> None:
    require_mosquitto()
    broker = EmbeddedBroker(engine="mosquitto", extra_config=["no_such_option 1"])
    with pytest.raises(BrokerError, match="no_such_option") as caught:
        broker.start()
    assert "exited with code" in str(caught.value)
    assert broker.pid is None
    broker.close()


def test_broker_on_a_taken_port_says_so() -> None:
    require_mosquitto()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = EmbeddedBroker(engine="mosquitto", port=port)
        with pytest.raises(BrokerError, match=f"port {port} on 127.0.0.1 is in use"):
            broker.start()
        broker.close()


def test_amqtt_fallback_serves_mqtt_and_stops_cleanly() -> None:
    with EmbeddedBroker(engine="amqtt") as broker:
        pid = broker.pid
        assert broker.engine == "amqtt"
        assert pid is not None
        asyncio.run(asyncio.wait_for(check_broker(broker.url, timeout_s=5), HANG_GUARD_S))
    assert not pid_exists(pid)


def test_paused_broker_times_out_and_answers_again_after_resume() -> None:
    require_mosquitto()
    with EmbeddedBroker(engine="mosquitto") as broker:
        broker.pause()
        with pytest.raises(BrokerError, match="timed out"):
            asyncio.run(asyncio.wait_for(check_broker(broker.url, timeout_s=1), HANG_GUARD_S))
        broker.resume()
        asyncio.run(check_broker(broker.url, timeout_s=5))
        pid = broker.pid
        broker.pause()  # stop() must also end a paused broker
    assert pid is not None and not pid_exists(pid)


# -- check_broker --------------------------------------------------------------------------


async def test_check_broker_accepts_a_running_broker(broker_url: BrokerURL) -> None:
    await check_broker(broker_url, timeout_s=5)


async def test_check_broker_on_a_closed_port_says_refused_and_what_to_do() -> None:
    url = BrokerURL("127.0.0.1", closed_loopback_port())
    async with asyncio.timeout(HANG_GUARD_S):
        with pytest.raises(BrokerError) as caught:
            await check_broker(url, timeout_s=3)
    message = str(caught.value)
    assert f"127.0.0.1:{url.port}" in message
    assert "connection refused" in message
    assert "--broker embedded" in message
    assert "\n" not in message


@pytest.fixture
def password_broker() -> Iterator[EmbeddedBroker]:
    """A mosquitto that admits only alice (password s3cret)."""
    require_mosquitto()
    # mosquitto drops root privileges before it reads the password file, so neither the file
    # nor its directory may be private (pytest's tmp_path is).
    workdir = Path(tempfile.mkdtemp(prefix="orbitmesh-test-auth-"))
    workdir.chmod(0o755)
    password_file = workdir / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(password_file), "alice", "s3cret"],
                   check=True, capture_output=True)
    password_file.chmod(0o644)
    extra = ["allow_anonymous false", f"password_file {password_file}"]
    with EmbeddedBroker(engine="mosquitto", extra_config=extra, workdir=workdir) as broker:
        yield broker
    shutil.rmtree(workdir)


async def test_check_broker_reports_refused_credentials(password_broker: EmbeddedBroker) -> None:
    port = password_broker.port
    await check_broker(BrokerURL("127.0.0.1", port, username="alice", password="s3cret"))
    for who in (BrokerURL("127.0.0.1", port),
                BrokerURL("127.0.0.1", port, username="alice", password="wrong")):
        with pytest.raises(BrokerError, match="not authorised") as caught:
            await check_broker(who)
        assert "user name and password" in str(caught.value)
        assert "wrong" not in str(caught.value)


async def test_check_broker_on_tls_url_against_a_plain_port_blames_tls(
    broker_url: BrokerURL,
) -> None:
    url = BrokerURL(broker_url.host, broker_url.port, scheme="mqtts", tls_insecure=True)
    with pytest.raises(BrokerError, match="TLS"):
        await check_broker(url, timeout_s=3)


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (socket.gaierror(-2, "Name or service not known"), "does not resolve"),
        (OSError("[Errno -3] Temporary failure in name resolution"), "does not resolve"),
        (ssl.SSLCertVerificationError("certificate verify failed"), "TLS failed"),
        (TimeoutError(), "timed out"),
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (ConnackRefusedError(134), "bad user name"),
        (ConnackRefusedError(4), "bad user name"),
        (ConnackRefusedError(5), "not authorised"),
        (BrokerClosedError("the broker closed the connection"), "closed the connection"),
        (ProtocolError("MQTT packet PINGREQ is never sent by a broker"), "not MQTT 3.1.1"),
        (OSError(101, "Network is unreachable"), "network unreachable"),
    ],
)
def test_connect_errors_are_named(exc: BaseException, says: str) -> None:
    error = connect_error(BrokerURL("mq.example", 1883), exc, timeout_s=2)
    assert says in str(error)
    assert "mq.example:1883" in str(error)
    assert "\n" not in str(error)


async def test_check_broker_on_a_port_that_does_not_speak_mqtt(tmp_path: Path) -> None:
    """A server that answers CONNECT with garbage gets a ProtocolError-based message."""

    async def answer_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(answer_garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(BrokerError, match=r"not MQTT 3\.1\.1") as caught:
            await asyncio.wait_for(check_broker(BrokerURL("127.0.0.1", port), timeout_s=3),
                                   HANG_GUARD_S)
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_check_broker_when_the_broker_hangs_up_says_it_closed(tmp_path: Path) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(BrokerError, match="closed the connection"):
            await asyncio.wait_for(check_broker(BrokerURL("127.0.0.1", port), timeout_s=3),
                                   HANG_GUARD_S)
