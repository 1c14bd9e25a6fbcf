"""The ``endpoints:`` section of a scenario: where real software joins the emulated network.

* ``ip``: nodes that get a Linux network namespace with a TUN interface and addresses from the
  run's prefixes (IPv4 and IPv6). Addresses exist only inside those namespaces.
* ``udp``: UDP pipes (no root): datagrams sent to ``listen`` (loopback) enter the network at
  ``node`` addressed to ``to`` and leave ``to`` towards ``deliver`` (loopback); replies sent back
  from ``deliver`` return along the pipe to the last sender.
* ``mqtt``: nodes that publish every frame delivered to them on ``orbitmesh/<run>/node/<id>/out``.

An IP endpoint may name a ``container`` (image, command, environment, volumes with their compose
meanings, and ``on_exit``): orbitmesh starts it without a network of its own and puts the node's
TUN into the container's network namespace instead of a namespace of its own.

Pure data: the address plan (:func:`address_plan`) is computed here, the namespaces are made by
nodes/endpoints.py.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_ENDPOINTS = 4096
_ULA = ipaddress.IPv6Network("fc00::/7")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def loopback_port(value: Any, who: str = "pipes listen and deliver") -> str:
    """``HOST:PORT`` with a loopback host (127.0.0.0/8 or [::1]) and a port 1..65535."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"expected 127.0.0.1:PORT (a loopback address and a port), got {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        addr = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"expected 127.0.0.1:PORT, got {value!r}") from None
    if not addr.is_loopback:
        raise ValueError(f"{host} is not a loopback address: {who} on 127.0.0.0/8 or ::1 only")
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} is not 1..65535")
    return value


class EndpointContainer(_Spec):
    """A user's container at an IP endpoint node (docs/endpoints.md, "Your containers")."""

    image: str = Field(min_length=1)
    command: tuple[str, ...] | None = None
    """Compose meaning: a string is split like a shell would; a list is taken as it is."""
    environment: tuple[str, ...] = ()
    """``KEY=VALUE`` items; a mapping (compose's other form) is turned into them."""
    volumes: tuple[str, ...] = ()
    """Bind mounts ``HOST:CONTAINER[:ro|rw]``; a relative HOST is relative to the scenario file."""
    on_exit: Literal["ignore", "stop"] = "ignore"
    """What the run does when the container exits or fails to start (reported either way)."""

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot split {value!r} like a shell: {exc}") from None
            if not value:
                raise ValueError("an empty command: leave it out for the image's own")
        return value

    @field_validator("environment", mode="before")
    @classmethod
    def _environment(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, (dict, list)):
                    raise ValueError(f"{key}: expected a string, number or boolean, got {item!r}")
            return tuple(f"{k}={'' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                         for k, v in value.items())
        return value

    @field_validator("environment")
    @classmethod
    def _pairs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if "=" not in item or item.startswith("="):
                raise ValueError(f"{item!r}: expected KEY=VALUE")
        return value

    @field_validator("volumes")
    @classmethod
    def _binds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            parts = item.split(":")
            if len(parts) not in (2, 3) or not all(parts[:2]) or (
                    len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise ValueError(f"{item!r}: expected HOST_PATH:CONTAINER_PATH[:ro|rw]")
            if not parts[0].startswith(("/", ".")):
                raise ValueError(f"{item!r}: named volumes are not supported (they would "
                                 "outlive the run); give a host path (/abs or ./relative)")
            if not parts[1].startswith("/"):
                raise ValueError(f"{item!r}: the container path must be absolute")
        return value


class IpEndpoint(_Spec):
    """A node with a network namespace (or a container of its own) and a TUN interface."""

    node: str
    ipv4: str | None = None
    ipv6: str | None = None
    container: EndpointContainer | None = None


class UdpPipe(_Spec):
    """Datagrams to ``listen`` enter at ``node`` for ``to`` and leave there to ``deliver``."""

    node: str
    listen: str
    to: str
    deliver: str

    @field_validator("listen", "deliver")
    @classmethod
    def _loopback(cls, value: Any) -> str:
        return loopback_port(value)


class Endpoints(_Spec):
    """Real software on the emulated network (docs/endpoints.md)."""

    ipv4_prefix: str = "10.77.0.0/16"
    ipv6_prefix: str = "fd77::/48"
    ip: tuple[IpEndpoint, ...] = Field(default=(), max_length=MAX_ENDPOINTS)
    udp: tuple[UdpPipe, ...] = Field(default=(), max_length=MAX_ENDPOINTS)
    mqtt: tuple[str, ...] = Field(default=(), max_length=MAX_ENDPOINTS)

    @field_validator("ipv4_prefix")
    @classmethod
    def _private4(cls, value: str) -> str:
        net = ipaddress.IPv4Network(value)  # ValueError reads well: "... has host bits set"
        if not net.is_private or net.prefixlen > 30:
            raise ValueError(f"{value}: expected a private IPv4 prefix (10/8, 172.16/12, "
                             "192.168/16) of /30 or wider")
        return str(net)

    @field_validator("ipv6_prefix")
    @classmethod
    def _private6(cls, value: str) -> str:
        net = ipaddress.IPv6Network(value)
        if not net.subnet_of(_ULA) or net.prefixlen > 120:
            raise ValueError(f"{value}: expected a unique-local IPv6 prefix (inside fc00::/7) "
                             "of /120 or wider")
        return str(net)


def endpoint_problems(spec: Endpoints, known: Callable[[str], bool]
                      ) -> list[tuple[tuple[str | int, ...], str]]:
    """Unknown nodes, duplicates and addresses outside the prefixes, as (field path, message)."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    net4, net6 = ipaddress.IPv4Network(spec.ipv4_prefix), ipaddress.IPv6Network(spec.ipv6_prefix)
    seen: dict[str, int] = {}
    for i, e in enumerate(spec.ip):
        if not known(e.node):
            problems.append((("endpoints", "ip", i, "node"), f"unknown node {e.node!r}"))
        if e.node in seen:
            problems.append((("endpoints", "ip", i, "node"),
                             f"{e.node!r} is already an endpoint at endpoints.ip[{seen[e.node]}]"))
        seen.setdefault(e.node, i)
        for key, net in (("ipv4", net4), ("ipv6", net6)):
            text = getattr(e, key)
            if text is None:
                continue
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                problems.append((("endpoints", "ip", i, key), f"{text!r} is not an address"))
                continue
            if addr not in net or addr in (net.network_address, net.network_address + 1,
                                           net.broadcast_address):
                problems.append((("endpoints", "ip", i, key), f"{text} is not a host address "
                                 f"of {net} (the first two and the last are reserved)"))
    listens: dict[str, int] = {}
    for i, p in enumerate(spec.udp):
        for key in ("node", "to"):
            if not known(getattr(p, key)):
                problems.append((("endpoints", "udp", i, key),
                                 f"unknown node {getattr(p, key)!r}"))
        if p.node == p.to:
            problems.append((("endpoints", "udp", i, "to"), "must differ from node"))
        if p.listen in listens:
            problems.append((("endpoints", "udp", i, "listen"),
                             f"{p.listen} is already the listen address of endpoints.udp"
                             f"[{listens[p.listen]}]"))
        listens.setdefault(p.listen, i)
    for i, name in enumerate(spec.mqtt):
        if not known(name):
            problems.append((("endpoints", "mqtt", i), f"unknown node {name!r}"))
    return problems


def address_plan(spec: Endpoints, index: dict[str, int]) -> dict[str, tuple[str, str]]:
    """Node -> (IPv4, IPv6) of every IP endpoint: given ones, else prefix base + 2 + node index.

    Host 1 of each prefix is the emulated network's own address (the source of its ICMP
    errors); the node index keeps addresses stable when endpoints are added or removed.
    """
    net4, net6 = ipaddress.IPv4Network(spec.ipv4_prefix), ipaddress.IPv6Network(spec.ipv6_prefix)
    taken = {e.ipv4 for e in spec.ip} | {e.ipv6 for e in spec.ip}
    plan: dict[str, tuple[str, str]] = {}
    for e in spec.ip:
        v4, v6 = e.ipv4, e.ipv6
        offset = 2 + index[e.node]
        while v4 is None:
            candidate = net4.network_address + offset
            if candidate >= net4.broadcast_address:
                raise ValueError(f"{net4} has no room for endpoint {e.node}")
            if str(candidate) not in taken:
                v4 = str(candidate)
            offset += 1
        offset = 2 + index[e.node]
        while v6 is None:
            candidate6 = net6.network_address + offset
            if str(candidate6) not in taken:
                v6 = str(candidate6)
            offset += 1
        plan[e.node] = (str(ipaddress.IPv4Address(v4)), str(ipaddress.IPv6Address(v6)))
    return plan


def gateway(spec: Endpoints) -> tuple[str, str]:
    """The network's own IPv4/IPv6 address (host 1 of each prefix): source of ICMP errors."""
    return (str(ipaddress.IPv4Network(spec.ipv4_prefix).network_address + 1),
            str(ipaddress.IPv6Network(spec.ipv6_prefix).network_address + 1))


def with_ip_nodes(spec: Endpoints, names: list[str]) -> Endpoints:
    """``spec`` plus IP endpoints for ``names`` not already listed (``run --endpoints``)."""
    have = {e.node for e in spec.ip}
    extra = tuple(IpEndpoint(node=n) for n in names if n not in have)
    return spec.model_copy(update={"ip": spec.ip + extra})
