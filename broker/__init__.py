"""Broker management: connection settings, reachability checks and the embedded broker.

``check_broker`` and :mod:`orbitmesh.protocol.transport` translate every connection failure into one
:class:`~orbitmesh.errors.BrokerError` line through :func:`connect_error`, so the same broken
address gives the same message wherever it is met.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError

from broker.url import BrokerURL, parse_broker_url
from orbitmesh.errors import BrokerError

__all__ = [
    "BrokerURL",
    "check_broker",
    "connect_error",
    "discard_client",
    "make_client",
    "parse_broker_url",
    "tls_context",
]

_START_HINT = "is a broker running there? start one, or use --broker embedded"
# MQTT 3.1.1 CONNACK return codes (and the MQTT 5 reason codes paho maps them to).
_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
    128: "unspecified error",
    132: "unsupported protocol version",
    133: "client id rejected",
    134: "bad user name or password",
    135: "not authorised",
    136: "server unavailable",
    137: "server busy",
    138: "banned",
}

log = logging.getLogger(__name__)


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when the handshake fails.

    paho drops the socket without closing it when ``do_handshake`` raises, which leaks a file
    descriptor per failed TLS attempt (and a ResourceWarning).
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(url: BrokerURL) -> ssl.SSLContext:
    """TLS settings for ``mqtts://``: system CAs or ``ca=``; ``insecure=1`` skips the host check."""
    try:
        context = ssl.create_default_context(cafile=url.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"broker URL {url}: cannot load the CA file {url.ca_file!r}: {exc}; "
                          "check the path in ca=") from exc
    if url.cert_file is not None:  # a client certificate, for brokers that require one
        try:
            context.load_cert_chain(url.cert_file, url.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"broker URL {url}: cannot load the client certificate "
                              f"{url.cert_file!r} / key {url.key_file!r}: {exc}; check cert= "
                              "and key=") from exc
    if url.tls_insecure:
        context.check_hostname = False
    context.sslsocket_class = _ClosingSSLSocket
    return context


def make_client(
    url: BrokerURL,
    *,
    client_id: str | None = None,
    timeout_s: float = 5.0,
    keepalive_s: int = 30,
    will: aiomqtt.Will | None = None,
    clean_session: bool = True,
    logger: logging.Logger | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client (MQTT 3.1.1, TCP_NODELAY) for ``url``; call inside a running loop."""
    client = aiomqtt.Client(
        url.host,
        url.port,
        username=url.username,
        password=url.password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        will=will,
        clean_session=clean_session,
        timeout=timeout_s,
        keepalive=keepalive_s,
        tls_context=tls_context(url) if url.tls else None,
        tls_insecure=url.tls_insecure if url.tls else None,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        logger=logger or logging.getLogger("broker.mqtt"),
    )
    # paho's own connect timeout bounds the executor thread that aiomqtt connects in.
    client._client.connect_timeout = timeout_s
    # Fire-and-forget QoS 0 publishing is the normal case here, not a warning sign.
    client.pending_calls_threshold = 1_000_000
    return client


def connect_error(url: BrokerURL, exc: BaseException, *, timeout_s: float | None = None
                  ) -> BrokerError:
    """One-line BrokerError saying what failed when connecting to ``url`` and what to check."""
    where = f"MQTT broker at {url.address}"
    code = getattr(exc, "rc", None)
    if isinstance(exc, MqttConnectError) and code is not None:
        number = int(code.value if hasattr(code, "value") else code)
        reason = _CONNACK_REASONS.get(number, f"refused with code {number}")
        hint = (
            "check the user name and password in the broker URL and the broker's ACL"
            if number in (4, 5, 134, 135)
            else "check the broker's log"
        )
        return BrokerError(f"{where}: connection refused by the broker: {reason} "
                           f"(CONNACK code {number}); {hint}")
    text = str(exc)
    lowered = text.lower()
    err = getattr(exc, "errno", None)
    if isinstance(exc, ConnectionRefusedError) or err == errno.ECONNREFUSED or (
        "connection refused" in lowered
    ):
        return BrokerError(f"{where}: connection refused (nothing listens on that port); "
                           f"{_START_HINT}")
    if isinstance(exc, socket.gaierror) or any(
        marker in lowered
        for marker in ("name or service not known", "name resolution", "nodename nor servname",
                       "no address associated", "errno -2]", "errno -3]", "errno -5]")
    ):
        return BrokerError(f"{where}: host name {url.host!r} does not resolve; check its "
                           "spelling or use an IP address")
    if isinstance(exc, ssl.SSLError) or "ssl" in lowered or "certificate" in lowered or (
        url.tls and ("reset by peer" in lowered or "eof" in lowered)
    ):
        return BrokerError(f"{where}: TLS failed ({text}); check that the port speaks TLS, "
                           "the ca= file and the server certificate's host name")
    if isinstance(exc, TimeoutError) or "timed out" in lowered:
        within = f" within {timeout_s:g} s" if timeout_s is not None else ""
        return BrokerError(f"{where}: no MQTT answer{within} (timed out); check host, port "
                           f"and firewall; {_START_HINT} (or is it paused or overloaded?)")
    if err in (errno.ENETUNREACH, errno.EHOSTUNREACH) or "unreachable" in lowered:
        return BrokerError(f"{where}: network unreachable ({text}); check the host address")
    if isinstance(exc, aiomqtt.MqttError) and "disconnected" in lowered:
        return BrokerError(f"{where}: the broker closed the connection ({text}); check the "
                           "broker's log (duplicate client id? protocol mismatch?)")
    return BrokerError(f"{where}: could not connect ({type(exc).__name__}: {text}); "
                       f"{_START_HINT}")


async def check_broker(url: BrokerURL, timeout_s: float = 5.0) -> None:
    """Connect to ``url`` and disconnect; BrokerError (one line, with a hint) if that fails."""
    client = make_client(url, client_id=None, timeout_s=timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            await client.__aenter__()
    except TimeoutError as exc:
        discard_client(client)
        raise connect_error(url, exc, timeout_s=timeout_s) from exc
    except (aiomqtt.MqttError, OSError) as exc:
        discard_client(client)
        raise connect_error(url, exc, timeout_s=timeout_s) from exc
    try:
        async with asyncio.timeout(timeout_s):
            await client.__aexit__(None, None, None)
    except (TimeoutError, aiomqtt.MqttError) as exc:
        # Connected fine; a slow goodbye is not worth failing the check for.
        log.debug("disconnect from %s after check was not clean: %s", url, exc)
        discard_client(client)


def discard_client(client: aiomqtt.Client) -> None:
    """Close an aiomqtt client's socket at once, without DISCONNECT (so its will fires)."""
    paho: Any = client._client
    # The client is thrown away: nobody waits for its disconnect or its messages any more.
    paho.on_disconnect = None
    paho.on_message = None
    if paho.socket() is not None:
        # paho's own "connection lost" path: closes the socket and unregisters it from the
        # event loop (through aiomqtt's on_socket_close).
        paho._loop_rc_handle(mqtt.MQTT_ERR_CONN_LOST)
    disconnected: asyncio.Future[None] = client._disconnected
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()  # mark it retrieved: the loss was expected
