"""Broker management: connection settings, reachability checks and the embedded broker.

``check_broker`` and :class:`broker.client.MqttTransport` translate every connection failure
into one :class:`~orbitmesh.errors.BrokerError` line through :func:`connect_error`, so the same
broken address gives the same message wherever it is met. The connection itself is
broker/connection.py (asyncio) driving orbitmesh/protocol/mqtt.py (the codec).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import uuid

from broker.connection import BrokerClosedError, ConnackRefusedError, MqttConnection
from broker.url import BrokerURL, parse_broker_url
from orbitmesh.errors import BrokerError
from orbitmesh.protocol import mqtt

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
# MQTT 3.1.1 CONNACK return codes (and the MQTT 5 reason codes a 5.0 broker may send instead).
_CONNACK_REASONS = {
    **mqtt.CONNACK_REASONS,
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
    return context


def make_client(
    url: BrokerURL,
    *,
    client_id: str | None = None,
    timeout_s: float = 5.0,
    keepalive_s: int = 30,
    will: tuple[str, bytes, bool] | None = None,
    clean_session: bool = True,
    message: mqtt.MessageFactory = mqtt.Publish,
) -> MqttConnection:
    """An unconnected MQTT 3.1.1 connection to ``url`` (``await client.connect()`` next).

    ``will`` is (topic, payload, retain); ``message`` builds each received message from
    (topic, payload, retain). Without ``client_id`` a unique one is made up.
    """
    return MqttConnection(
        url.host,
        url.port,
        client_id=client_id or f"orbitmesh-{uuid.uuid4().hex[:16]}",
        ssl_context=tls_context(url) if url.tls else None,
        username=url.username,
        password=url.password,
        keepalive_s=keepalive_s,
        will=will,
        clean_session=clean_session,
        timeout_s=timeout_s,
        message=message,
    )


def connect_error(url: BrokerURL, exc: BaseException, *, timeout_s: float | None = None
                  ) -> BrokerError:
    """One-line BrokerError saying what failed when connecting to ``url`` and what to check."""
    where = f"MQTT broker at {url.address}"
    if isinstance(exc, ConnackRefusedError):
        number = exc.return_code
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
        url.tls and isinstance(exc, ConnectionError) and not isinstance(exc, ConnackRefusedError)
    ):
        # Over TLS, a connection that ends before CONNACK is nearly always a failed handshake
        # (a plain-MQTT port, or a broker that rejects our certificate).
        return BrokerError(f"{where}: TLS failed ({text}); check that the port speaks TLS, "
                           "the ca= file and the server certificate's host name")
    if isinstance(exc, TimeoutError) or "timed out" in lowered:
        within = f" within {timeout_s:g} s" if timeout_s is not None else ""
        return BrokerError(f"{where}: no MQTT answer{within} (timed out); check host, port "
                           f"and firewall; {_START_HINT} (or is it paused or overloaded?)")
    if err in (errno.ENETUNREACH, errno.EHOSTUNREACH) or "unreachable" in lowered:
        return BrokerError(f"{where}: network unreachable ({text}); check the host address")
    if isinstance(exc, BrokerClosedError):
        return BrokerError(f"{where}: the broker closed the connection ({text}); check the "
                           "broker's log (duplicate client id? protocol mismatch?)")
    if isinstance(exc, mqtt.ProtocolError):
        return BrokerError(f"{where}: the answer is not MQTT 3.1.1 ({text}); is that port an "
                           "MQTT broker?")
    return BrokerError(f"{where}: could not connect ({type(exc).__name__}: {text}); "
                       f"{_START_HINT}")


async def check_broker(url: BrokerURL, timeout_s: float = 5.0) -> None:
    """Connect to ``url`` and disconnect; BrokerError (one line, with a hint) if that fails."""
    client = make_client(url, client_id=None, timeout_s=timeout_s, keepalive_s=0)
    try:
        await client.connect()
    except (OSError, BrokerError) as exc:  # TimeoutError and ssl.SSLError are OSErrors
        await client.wait_closed()
        raise connect_error(url, exc, timeout_s=timeout_s) from exc
    try:
        await client.close()
    except OSError as exc:
        # Connected fine; a slow goodbye is not worth failing the check for.
        log.debug("disconnect from %s after check was not clean: %s", url, exc)
        discard_client(client)


def discard_client(client: MqttConnection) -> None:
    """Close a client's socket at once, without DISCONNECT (so its will fires)."""
    client.on_lost = None  # thrown away: nobody waits for its end any more
    client.abort()
