"""Broker connection settings: ``mqtt://[user:pass@]host[:port][?ca=FILE&insecure=1]``.

``mqtts://`` selects TLS (default port 8883). ``ca`` names a CA bundle to trust instead of the
system store; ``insecure=1`` skips the server hostname check (self-signed test brokers only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from orbitmesh.errors import BrokerError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_EXPECTED = "expected mqtt://[user:pass@]host:port or mqtts://... (TLS)"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class BrokerURL:
    """Where and how to reach one MQTT broker; ``str()`` never shows the password."""

    host: str
    port: int = 1883
    scheme: str = "mqtt"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    tls_insecure: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in DEFAULT_PORTS:
            raise BrokerError(f"broker scheme {self.scheme!r}: expected 'mqtt' or 'mqtts'")
        if not self.host:
            raise BrokerError("broker URL: the host is empty; " + _EXPECTED)
        if not 0 < self.port < 65536:
            raise BrokerError(f"broker port {self.port}: expected 1..65535")
        if (self.ca_file is not None or self.tls_insecure) and self.scheme != "mqtts":
            raise BrokerError("broker URL: ca= and insecure= need TLS; use mqtts://")

    @property
    def tls(self) -> bool:
        """True when the connection uses TLS (``mqtts://``)."""
        return self.scheme == "mqtts"

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 hosts in brackets), for messages and logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def to_text(self, *, show_password: bool = False) -> str:
        """The URL as text; ``parse_broker_url(url.to_text(show_password=True)) == url``."""
        userinfo = ""
        if self.username is not None:
            userinfo = quote(self.username, safe="")
            if self.password is not None:
                secret = quote(self.password, safe="") if show_password else "***"
                userinfo += ":" + secret
            userinfo += "@"
        query = []
        if self.ca_file is not None:
            query.append("ca=" + quote(self.ca_file, safe="/"))
        if self.tls_insecure:
            query.append("insecure=1")
        tail = "?" + "&".join(query) if query else ""
        return f"{self.scheme}://{userinfo}{self.address}{tail}"

    def __str__(self) -> str:
        return self.to_text()


def parse_broker_url(text: str) -> BrokerURL:
    """Parse ``mqtt[s]://[user[:pass]@]host[:port][?ca=FILE&insecure=1]``; BrokerError if bad."""
    shown = _hide_password(text)
    prefix = f"broker URL {shown!r}"
    if "://" not in text:
        raise BrokerError(f"{prefix}: {_EXPECTED}")
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise BrokerError(f"{prefix}: {exc}; {_EXPECTED}") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BrokerError(f"{prefix}: unsupported scheme {parts.scheme!r}; {_EXPECTED}")
    if not parts.hostname:
        raise BrokerError(f"{prefix}: no host; {_EXPECTED}")
    if parts.path not in ("", "/") or parts.fragment:
        raise BrokerError(f"{prefix}: unexpected path {parts.path!r}; {_EXPECTED}")
    if port == 0:
        raise BrokerError(f"{prefix}: port 0 is not a broker port; {_EXPECTED}")
    ca_file: str | None = None
    insecure = False
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key == "ca":
            if not value:
                raise BrokerError(f"{prefix}: ca= needs a file name")
            ca_file = value
        elif key == "insecure":
            if value.lower() not in _TRUE | _FALSE:
                raise BrokerError(f"{prefix}: insecure={value!r}; expected 1 or 0")
            insecure = value.lower() in _TRUE
        else:
            raise BrokerError(f"{prefix}: unknown option {key!r}; known options: ca, insecure")
    return BrokerURL(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PORTS[scheme],
        scheme=scheme,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ca_file=ca_file,
        tls_insecure=insecure,
    )


def _hide_password(text: str) -> str:
    """Replace the password in a URL-ish string with *** so error messages can quote it."""
    scheme_end = text.find("://")
    at = text.rfind("@")
    if scheme_end < 0 or at < scheme_end:
        return text
    userinfo = text[scheme_end + 3 : at]
    if ":" not in userinfo:
        return text
    user = userinfo.split(":", 1)[0]
    return f"{text[: scheme_end + 3]}{user}:***{text[at:]}"
