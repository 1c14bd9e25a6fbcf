"""The ``mcs:`` setting of an operations centre: a bridge to a real mission control system.

An ops centre with ``mcs`` hands every CCSDS TM space packet that reaches it (housekeeping and
the satellites' TM acknowledgements) to a mission control system (Yamcs, OpenC3 COSMOS) over UDP
and TCP, and takes CCSDS TC space packets from it, routing each to the satellite its APID names.
docs/mcs.md has the wire details. Pure data: nodes/mcs_bridge.py does the I/O.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orbitmesh.core.endpoint_spec import loopback_port

ACK_APID = 2040
"""APID of the TM acknowledgement packet a satellite emits for every telecommand it executes.
Its data field: satellite node index (4 octets), TC APID (2), TC sequence count (2), status (1:
``ACK_EXECUTED``, or ``ACK_NOT_A_PACKET`` when the TC's payload was no space packet)."""
ACK_EXECUTED, ACK_NOT_A_PACKET = 0, 1
MAX_APID = 2046
"""2047 is the CCSDS idle-packet APID."""


def _loopback(value: Any) -> str:
    """``HOST:PORT`` with a loopback host and a port 1..65535 (traffic stays on this machine)."""
    return loopback_port(value, "the bridge talks")


def split_address(value: str) -> tuple[str, int]:
    """``"127.0.0.1:10015"`` -> ``("127.0.0.1", 10015)`` (brackets of ``[::1]`` removed)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class McsSpec(BaseModel):
    """Where the ops centre's MCS bridge sends TM and listens for TC (docs/mcs.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    tm_udp: str | None = None
    """Destination of TM datagrams (one space packet each)."""
    tm_tcp: str | None = None
    """Listening address for TM over TCP (packets back to back)."""
    tc_udp: str | None = None
    """Listening address for TC datagrams (one space packet each)."""
    tc_tcp: str | None = None
    """Listening address for TC over TCP (packets back to back)."""
    tc_apid_base: int = Field(default=1024, ge=0, le=MAX_APID)
    """Without ``apid_map``: satellite k of the centre's constellations takes TC APID base + k."""
    apid_map: dict[int, str] = {}
    """TC APID -> satellite id; when given, the only APIDs routed."""
    tcp_buffer_bytes: int = Field(default=1 << 20, ge=4096, le=1 << 28)
    """TM waiting for a slow TCP client beyond this: the client is disconnected (and counted)."""

    @field_validator("tm_udp", "tm_tcp", "tc_udp", "tc_tcp")
    @classmethod
    def _addresses(cls, value: Any) -> str | None:
        return None if value is None else _loopback(value)

    @field_validator("apid_map")
    @classmethod
    def _apids(cls, value: dict[int, str]) -> dict[int, str]:
        for apid in value:
            if not 0 <= apid <= MAX_APID or apid == ACK_APID:
                raise ValueError(f"APID {apid} is not 0..{MAX_APID} (and not {ACK_APID}, the "
                                 "acknowledgement APID)")
        return value


def tc_routes(spec: McsSpec, satellites: list[str]) -> dict[int, str]:
    """TC APID -> satellite id for a centre operating ``satellites`` (in topology order)."""
    if spec.apid_map:
        return dict(spec.apid_map)
    return {spec.tc_apid_base + k: sat for k, sat in enumerate(satellites)}


def mcs_problems(spec: McsSpec, where: tuple[str | int, ...], constellations: tuple[str, ...],
                 n_satellites: int | None) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong with one centre's ``mcs`` setting, as (field path, message).

    ``constellations`` are the centre's; ``n_satellites`` their satellite count when the
    scenario alone tells it (Walker shells), else None (TLE/OMM files: checked at start).
    """
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if not (spec.tm_udp or spec.tm_tcp or spec.tc_udp or spec.tc_tcp):
        problems.append((where, "names no address; give at least one of tm_udp, tm_tcp, "
                                "tc_udp, tc_tcp"))
    if not constellations:
        problems.append((where, "this centre operates no constellation: it has no telemetry "
                                "to bridge and no satellite to command"))
    seen: dict[tuple[str, str], str] = {}
    for key in ("tm_tcp", "tc_udp", "tc_tcp"):
        address = getattr(spec, key)
        if address is None:
            continue
        proto = "udp" if key.endswith("udp") else "tcp"
        if (proto, address) in seen:
            problems.append(((*where, key), f"{address} is already {seen[proto, address]}"))
        seen.setdefault((proto, address), key)
    for apid, sat in spec.apid_map.items():
        if not any(sat.startswith(f"{c}-") for c in constellations):
            problems.append(((*where, "apid_map", apid),
                             f"{sat!r} is not a satellite of {list(constellations)} (ids are "
                             "<constellation>-<plane>-<slot> such as demo-00-00; orbitmesh "
                             "describe lists them)"))
    if not spec.apid_map and n_satellites is not None:
        last = spec.tc_apid_base + n_satellites - 1
        if last > MAX_APID or spec.tc_apid_base <= ACK_APID <= last:
            problems.append(((*where, "tc_apid_base"),
                             f"{n_satellites} satellites from APID {spec.tc_apid_base} take "
                             f"APIDs up to {last}: past {MAX_APID} or over the acknowledgement "
                             f"APID {ACK_APID}; choose another tc_apid_base or give apid_map"))
    return problems


def check_routes(routes: dict[int, str], known: set[str]) -> None:
    """Raise ValueError naming the first route whose APID or satellite cannot be used."""
    for apid, sat in routes.items():
        if not 0 <= apid <= MAX_APID or apid == ACK_APID:
            raise ValueError(f"mcs: TC APID {apid} is not 0..{MAX_APID} without {ACK_APID}")
        if sat not in known:
            raise ValueError(f"mcs.apid_map: {apid}: unknown satellite {sat!r}")
