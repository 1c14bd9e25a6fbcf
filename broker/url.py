"""Broker connection settings: ``mqtt[s]://[user:pass@]host[:port][?ca=F&cert=F&key=F&insecure=1]``.

``mqtts://`` selects TLS (default port 8883). Query options (TLS only):

* ``ca=FILE``: PEM CA bundle to trust instead of the system store (a run's own CA for
  ``orbitmesh run --tls``);
* ``cert=FILE`` and ``key=FILE``: a PEM client certificate and its private key, for brokers that
  require client certificates (``key`` may be left out when the key is inside ``cert``);
* ``insecure=1``: skip the server host name check (self-signed test brokers only).

A URL with a password is a secret: it never goes on a command line. Processes receive it in a
file of mode 0600 (``--broker-file PATH``; one URL per line for the members of a clustered
broker) or in the environment variable ``ORBITMESH_BROKER_URL``; :func:`resolve_broker_url` and
:func:`resolve_broker_urls` read whichever was given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from orbitmesh.errors import BrokerError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
BROKER_URL_ENV = "ORBITMESH_BROKER_URL"
"""Environment variable that carries a broker URL (with credentials) to a process."""
_EXPECTED = "expected mqtt://[user:pass@]host:port or mqtts://... (TLS)"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class BrokerURL:
    """Where and how to reach one MQTT broker; ``str()`` never shows the password.

    ``username``/``password``: MQTT CONNECT credentials (None: anonymous). ``ca_file``: CA
    bundle that verifies the server (None: the system store). ``cert_file``/``key_file``: the
    client certificate presented in the TLS handshake (None: none; ``key_file`` None with a
    ``cert_file`` means the key is in that file). ``tls_insecure``: no host name check.
    """

    host: str
    port: int = 1883
    scheme: str = "mqtt"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    tls_insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        if self.scheme not in DEFAULT_PORTS:
            raise BrokerError(f"broker scheme {self.scheme!r}: expected 'mqtt' or 'mqtts'")
        if not self.host:
            raise BrokerError("broker URL: the host is empty; " + _EXPECTED)
        if not 0 < self.port < 65536:
            raise BrokerError(f"broker port {self.port}: expected 1..65535")
        tls_options = (self.ca_file, self.cert_file, self.key_file)
        if (any(o is not None for o in tls_options) or self.tls_insecure) and (
                self.scheme != "mqtts"):
            raise BrokerError("broker URL: ca=, cert=, key= and insecure= need TLS; "
                              "use mqtts://")
        if self.key_file is not None and self.cert_file is None:
            raise BrokerError("broker URL: key= without cert=; give the client certificate too")

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
        for key, value in (("ca", self.ca_file), ("cert", self.cert_file),
                           ("key", self.key_file)):
            if value is not None:
                query.append(f"{key}=" + quote(value, safe="/"))
        if self.tls_insecure:
            query.append("insecure=1")
        tail = "?" + "&".join(query) if query else ""
        return f"{self.scheme}://{userinfo}{self.address}{tail}"

    def __str__(self) -> str:
        return self.to_text()


def parse_broker_url(text: str) -> BrokerURL:
    """Parse ``mqtt[s]://[user[:pass]@]host[:port][?ca=F&cert=F&key=F&insecure=1]``."""
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
    files: dict[str, str] = {}
    insecure = False
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key in ("ca", "cert", "key"):
            if not value:
                raise BrokerError(f"{prefix}: {key}= needs a file name")
            files[key] = value
        elif key == "insecure":
            if value.lower() not in _TRUE | _FALSE:
                raise BrokerError(f"{prefix}: insecure={value!r}; expected 1 or 0")
            insecure = value.lower() in _TRUE
        else:
            raise BrokerError(f"{prefix}: unknown option {key!r}; known options: ca, cert, key, "
                              "insecure")
    return BrokerURL(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PORTS[scheme],
        scheme=scheme,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ca_file=files.get("ca"),
        tls_insecure=insecure,
        cert_file=files.get("cert"),
        key_file=files.get("key"),
    )


def resolve_broker_url(text: str | None = None, file: str | Path | None = None,
                       environ: Mapping[str, str] | None = None) -> BrokerURL:
    """The broker URL from ``--broker-file`` (first), ``--broker`` or ``ORBITMESH_BROKER_URL``.

    A file listing a cluster's members gives its first one: see :func:`resolve_broker_urls`.
    """
    return resolve_broker_urls(text, file, environ)[0]


def resolve_broker_urls(text: str | None = None, file: str | Path | None = None,
                        environ: Mapping[str, str] | None = None) -> list[BrokerURL]:
    """Every broker URL from ``--broker-file`` (one per line: a clustered broker's members, the
    one to use first on line 1), else ``--broker`` or ``ORBITMESH_BROKER_URL`` (one URL)."""
    if file is not None:
        path = Path(file)
        try:
            content = path.read_text()
        except OSError as exc:
            raise BrokerError(f"--broker-file {path}: cannot read it: {exc.strerror}") from exc
        return parse_broker_urls(content, f"--broker-file {path}")
    if text is not None:
        return [parse_broker_url(text)]
    env = os.environ if environ is None else environ
    if env.get(BROKER_URL_ENV):
        try:
            return [parse_broker_url(env[BROKER_URL_ENV])]
        except BrokerError as exc:
            raise BrokerError(f"environment {BROKER_URL_ENV}: {exc}") from exc
    raise BrokerError(f"no broker given: pass --broker-file PATH (a file holding the URL) or set "
                      f"{BROKER_URL_ENV}")


def parse_broker_urls(content: str, where: str) -> list[BrokerURL]:
    """URLs one per line (blank lines and ``#`` comments skipped); errors name ``where``, line."""
    urls = []
    for number, raw in enumerate(content.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            urls.append(parse_broker_url(line))
        except BrokerError as exc:
            raise BrokerError(f"{where}, line {number}: {exc}") from exc
    if not urls:
        raise BrokerError(f"{where}: the file is empty; expected a broker URL (one per line for "
                          "the members of a cluster)")
    return urls


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
