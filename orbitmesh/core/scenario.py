"""Scenario files: YAML in, frozen validated objects out.

A scenario describes a network to emulate: constellations (Walker shells or TLE/OMM files), ground
stations, operations centres, link rules, routing policies and traffic. ``load_scenario`` returns a
:class:`Scenario` or raises :class:`ScenarioError` listing *every* problem as
``<file>:<line>: <field.path>: <what was expected>``. docs/scenarios.md documents every key.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from orbitmesh.core import limits as L
from orbitmesh.core.endpoint_spec import Endpoints, endpoint_problems
from orbitmesh.core.mcs_spec import McsSpec, mcs_problems
from orbitmesh.core.yaml_load import dotted as _dotted
from orbitmesh.core.yaml_load import line_of as _line_of
from orbitmesh.core.yaml_load import load_yaml, read_text
from orbitmesh.errors import ScenarioError

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NodeName = Annotated[str, Field(pattern=NODE_ID_RE.pattern)]


def _utc_time(value: object) -> object:
    # pydantic reads 1000000000 (and "1000000000") as seconds since 1970; a scenario never means
    # that, so only a YAML timestamp, a date or an ISO-8601 string is a time.
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an ISO-8601 UTC time such as 2026-01-01T00:00:00Z, got "
                     f"{value!r}; a number is not read as seconds since 1970")


UtcTime = Annotated[datetime, BeforeValidator(_utc_time)]


class _Model(BaseModel):
    # allow_inf_nan=False: no field means "infinitely" and NaN passes every bound unnoticed.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class WalkerShell(_Model):
    """A Walker i:T/P/F shell of circular orbits."""

    pattern: Literal["delta", "star"] = "delta"
    inclination_deg: float = Field(ge=0.0, le=180.0)
    satellites: int = Field(gt=0, le=L.MAX_SATELLITES)
    planes: int = Field(gt=0, le=L.MAX_SATELLITES)
    phasing: int = Field(ge=0)
    altitude_km: float = Field(gt=100.0, le=50_000.0)
    raan_offset_deg: float = 0.0

    @model_validator(mode="after")
    def _walker_rules(self) -> WalkerShell:
        if self.satellites % self.planes:
            raise ValueError(f"satellites ({self.satellites}) must be a multiple of planes "
                             f"({self.planes})")
        if self.phasing >= self.planes:
            raise ValueError(f"phasing F must be in 0..planes-1 (0..{self.planes - 1}), "
                             f"got {self.phasing}")
        return self


class TelemetrySpec(_Model):
    """Housekeeping telemetry produced by every satellite of a constellation."""

    rate_hz: float = Field(default=1.0, ge=0.0, le=L.MAX_FRAME_RATE_HZ)
    size_bytes: int = Field(default=128, ge=8, le=L.MAX_PAYLOAD_BYTES)
    apid: int = Field(default=100, ge=0, le=2046)
    store_frames: int = Field(default=10_000, ge=0, le=L.MAX_QUEUE_FRAMES)


class Constellation(_Model):
    """One constellation owned by one operator: a Walker shell, a TLE file or an OMM file."""

    name: NodeName
    operator: NodeName
    walker: WalkerShell | None = None
    tle: Path | None = None
    omm: Path | None = None
    plane_mapping: Path | None = None
    raan_tolerance_deg: float = Field(default=2.0, gt=0.0, le=30.0)
    isl_shift: int | None = Field(default=None, ge=-L.MAX_SATELLITES, le=L.MAX_SATELLITES)
    max_gsl: int = Field(default=1, ge=0, le=L.MAX_GSL)
    isl: bool = True
    telemetry: TelemetrySpec = TelemetrySpec()

    @model_validator(mode="after")
    def _one_source(self) -> Constellation:
        given = [k for k in ("walker", "tle", "omm") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'walker', 'tle' or 'omm'"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.plane_mapping is not None and self.walker is not None:
            raise ValueError("'plane_mapping' applies to tle/omm constellations only")
        return self

    @property
    def seam_shift(self) -> int:
        """The +Grid seam offset: slot j of the last plane links slot j + shift of plane 0."""
        if self.isl_shift is not None:
            return self.isl_shift
        return self.walker.phasing if self.walker is not None else 0


class Station(_Model):
    """A ground station: a site with antennas that track satellites above a mask."""

    name: NodeName
    operator: NodeName
    lat_deg: float = Field(ge=-90.0, le=90.0)
    lon_deg: float = Field(ge=-180.0, le=360.0)
    alt_m: float = Field(default=0.0, ge=-500.0, le=9_000.0)
    min_elevation_deg: float = Field(default=10.0, ge=0.0, le=90.0)
    max_range_km: float | None = Field(default=None, gt=0.0, le=L.MAX_RANGE_KM)
    antennas: int | Literal["all"] = 1
    constellations: tuple[NodeName, ...] | None = None
    transit: bool = True

    @field_validator("antennas", mode="before")
    @classmethod
    def _antenna_count(cls, value: object) -> object:
        # One clear message instead of pydantic's two union-member errors.
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool)
                              and 0 <= value <= L.MAX_ANTENNAS):
            return value
        raise ValueError(f"expected a whole number of antennas from 0 to {L.MAX_ANTENNAS:,}, or "
                         f"'all' (one ground link per visible satellite), got {value!r}")

    def antenna_count(self, n_satellites: int) -> int:
        """Antennas as a number: ``all`` is one per satellite of the scenario."""
        return n_satellites if self.antennas == "all" else self.antennas


class OpsCentre(_Model):
    """An operations centre: receives telemetry and sends telecommands over terrestrial links."""

    name: NodeName
    operator: NodeName
    lat_deg: float = Field(ge=-90.0, le=90.0)
    lon_deg: float = Field(ge=-180.0, le=360.0)
    constellations: tuple[NodeName, ...] = ()
    stations: tuple[NodeName, ...] | Literal["all", "operator"] = "operator"
    peers: tuple[NodeName, ...] = ()
    telecommand_rate_hz: float = Field(default=0.0, ge=0.0)
    telecommand_size_bytes: int = Field(default=64, ge=8, le=65_536)
    transit: bool = True
    mcs: McsSpec | None = None
    """Bridge to a real mission control system (CCSDS over UDP/TCP, docs/mcs.md)."""


class LinkClass(_Model):
    """Rate, loss and queue settings shared by every link class."""

    rate_bps: float = Field(default=100e6, gt=0.0, le=L.MAX_RATE_BPS)
    loss: float = Field(default=0.0, ge=0.0, le=1.0)
    queue_frames: int = Field(default=1000, ge=1, le=L.MAX_QUEUE_FRAMES)
    mtu_bytes: int = Field(default=1500, ge=68, le=65_535)
    """Largest IP packet from an endpoint this link class carries (larger: dropped, ``mtu``)."""


class IslRules(LinkClass):
    """Inter-satellite links."""

    topology: Literal["plus_grid", "none"] = "plus_grid"
    max_range_km: float | None = Field(default=None, gt=0.0, le=L.MAX_RANGE_KM)
    grazing_margin_km: float = Field(default=80.0, ge=0.0, le=L.MAX_RANGE_KM)
    rate_bps: float = Field(default=1e9, gt=0.0, le=L.MAX_RATE_BPS)


class GslRules(LinkClass):
    """Ground-to-satellite links."""

    handover: Literal["sticky", "best"] = "sticky"


class TerrestrialRules(LinkClass):
    """Fibre between ground stations and operations centres."""

    fibre_factor: float = Field(default=1.5, ge=1.0, le=100.0)
    delay_ms: float | None = Field(default=None, ge=0.0, le=L.MAX_DELAY_MS)
    rate_bps: float = Field(default=1e9, gt=0.0, le=L.MAX_RATE_BPS)


class LinkRules(_Model):
    """Rules per link class."""

    isl: IslRules = IslRules()
    gsl: GslRules = GslRules()
    terrestrial: TerrestrialRules = TerrestrialRules()
    delay_change_threshold_ms: float = Field(default=0.1, ge=0.0, le=L.MAX_DELAY_MS)


class Policy(_Model):
    """A routing policy: traffic under it only transits nodes of the allowed operators."""

    allowed_operators: tuple[NodeName, ...] = Field(min_length=1)


class Routing(_Model):
    """Routing strategy and named policies."""

    strategy: Literal["shortest_delay", "min_hop"] = "shortest_delay"
    policies: dict[NodeName, Policy] = {}


class SizeSpec(_Model):
    """Frame payload sizes: fixed, uniform or exponential (mean), in bytes."""

    distribution: Literal["fixed", "uniform", "exponential"] = "fixed"
    bytes: int = Field(default=1000, ge=1, le=L.MAX_PAYLOAD_BYTES)
    min_bytes: int = Field(default=64, ge=1, le=L.MAX_PAYLOAD_BYTES)
    max_bytes: int = Field(default=1500, ge=1, le=L.MAX_PAYLOAD_BYTES)

    @model_validator(mode="after")
    def _bounds(self) -> SizeSpec:
        if self.distribution == "uniform" and self.min_bytes > self.max_bytes:
            raise ValueError(f"min_bytes ({self.min_bytes}) must not exceed max_bytes "
                             f"({self.max_bytes})")
        return self


class Flow(_Model):
    """A user traffic flow between two nodes."""

    name: NodeName
    source: NodeName
    destination: NodeName
    pattern: Literal["constant", "poisson", "replay"] = "constant"
    rate_pps: float = Field(gt=0.0, le=L.MAX_FRAME_RATE_HZ)
    size: SizeSpec = SizeSpec()
    start_s: float = Field(default=0.0, ge=0.0, le=L.MAX_DURATION_S)
    stop_s: float | None = Field(default=None, gt=0.0, le=L.MAX_DURATION_S)
    policy: NodeName | None = None


FaultKind = Literal["link_down", "link_degrade", "node_down", "node_restart", "station_outage",
                    "region_outage", "plane_outage", "operator_withdrawal", "worker_kill",
                    "broker_outage", "container_kill", "container_pause", "container_unpause",
                    "container_restart"]
LinkClassName = Literal["isl", "gsl", "terrestrial"]

_FAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "link_down": ("a",), "link_degrade": ("a",), "node_down": ("node",),
    "node_restart": ("node",), "station_outage": ("station",),
    "region_outage": ("lat_deg", "lon_deg", "radius_km"),
    "plane_outage": ("constellation", "plane"), "operator_withdrawal": ("operator",),
    "worker_kill": ("worker",), "broker_outage": ("for_s",),
    "container_kill": ("worker",), "container_pause": ("worker",),
    "container_unpause": ("worker",), "container_restart": ("worker",),
}


class FaultSpec(_Model):
    """One fault: what breaks, when (``at_s`` after the start, or ``at``), and for how long."""

    kind: FaultKind
    id: NodeName | None = None
    at_s: float | None = Field(default=None, ge=0.0, le=L.MAX_DURATION_S)
    at: UtcTime | None = None
    for_s: float | None = Field(default=None, gt=0.0, le=L.MAX_DURATION_S)
    a: str | None = None
    b: str | None = None
    link_class: LinkClassName | None = None
    node: str | None = None
    station: NodeName | None = None
    lat_deg: float | None = Field(default=None, ge=-90.0, le=90.0)
    lon_deg: float | None = Field(default=None, ge=-180.0, le=360.0)
    radius_km: float | None = Field(default=None, gt=0.0, le=20_038.0)
    constellation: NodeName | None = None
    plane: int | None = Field(default=None, ge=0, le=L.MAX_SATELLITES)
    operator: NodeName | None = None
    worker: int | None = Field(default=None, ge=0, le=100_000)
    restart: bool = False
    extra_loss: float = Field(default=0.0, ge=0.0, le=1.0)
    extra_delay_ms: float = Field(default=0.0, ge=0.0, le=L.MAX_DELAY_MS)
    rate_cap_bps: float | None = Field(default=None, gt=0.0, le=L.MAX_RATE_BPS)

    @model_validator(mode="after")
    def _targets(self) -> FaultSpec:
        missing = [k for k in _FAULT_TARGETS[self.kind] if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.kind} fault needs {', '.join(missing)}")
        if self.at_s is not None and self.at is not None:
            raise ValueError("give either at_s or at, not both")
        return self


class MtbfSpec(_Model):
    """Mean time between failures and mean time to repair, scenario seconds."""

    mtbf_s: float = Field(ge=1.0)
    mttr_s: float = Field(ge=0.001)


class RandomFaults(_Model):
    """Random failures per link class and node class, drawn from the scenario seed."""

    isl: MtbfSpec | None = None
    gsl: MtbfSpec | None = None
    terrestrial: MtbfSpec | None = None
    satellite: MtbfSpec | None = None
    station: MtbfSpec | None = None
    ops_centre: MtbfSpec | None = None


class Fidelity(_Model):
    """How far a live run's timing may drift from the modelled network before it fails."""

    budget_ms: float = Field(default=10.0, gt=0.0, le=60_000.0)
    """Hop excess (how late a hop was handled), p99, in scenario ms. The default leaves room for
    the operating system's own timer lateness (p99 2-3 ms on the 2-vCPU VMs measured here)."""
    link_apply_budget_ms: float = Field(default=50.0, gt=0.0, le=600_000.0)
    """Lateness of applying a tick's links and routes, p99, in scenario ms."""
    startup_budget_ms: float = Field(default=1000.0, gt=0.0, le=3_600_000.0)
    """How late a worker may start after scenario time 0, in scenario ms."""


class Scenario(_Model):
    """A whole scenario, validated. Paths are absolute (resolved against the scenario file)."""

    name: NodeName
    epoch: UtcTime
    duration_s: float = Field(gt=0.0, le=L.MAX_DURATION_S)
    tick_s: float = Field(default=1.0, ge=L.MIN_TICK_S, le=L.MAX_TICK_S)
    speed: float = Field(default=1.0, ge=L.MIN_SPEED, le=L.MAX_SPEED)
    seed: int = Field(default=0, ge=0, le=L.MAX_SEED)
    description: str = ""
    constellations: tuple[Constellation, ...]
    stations: tuple[Station, ...] = ()
    ops_centres: tuple[OpsCentre, ...] = ()
    links: LinkRules = LinkRules()
    routing: Routing = Routing()
    traffic: tuple[Flow, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    random_faults: RandomFaults | None = None
    fidelity: Fidelity = Fidelity()
    endpoints: Endpoints = Endpoints()
    source: Path | None = None

    @field_validator("epoch")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @field_validator("faults")
    @classmethod
    def _utc_faults(cls, value: tuple[FaultSpec, ...]) -> tuple[FaultSpec, ...]:
        return tuple(f.model_copy(update={"at": f.at.replace(tzinfo=UTC)})
                     if f.at is not None and f.at.tzinfo is None else f for f in value)

    @property
    def operators(self) -> tuple[str, ...]:
        """Every operator named anywhere in the scenario, in order of first appearance."""
        seen: dict[str, None] = {}
        owned: list[Constellation | Station | OpsCentre] = [
            *self.constellations, *self.stations, *self.ops_centres]
        for item in owned:
            seen.setdefault(item.operator, None)
        for policy in self.routing.policies.values():
            for op in policy.allowed_operators:
                seen.setdefault(op, None)
        return tuple(seen)


# --- loading ----------------------------------------------------------------------------------

def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    # pydantic inserts union-member and validator tags ("function-after[...]", "literal[...]").
    return tuple(p for p in loc
                 if not (isinstance(p, str) and ("[" in p or p.startswith("function"))))


def _describe(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; docs/scenarios.md lists every key)"
    if kind == "missing":
        return "required key is missing"
    got = err.get("input")
    if isinstance(got, (int, float, str)) and not isinstance(got, bool) and kind != "value_error":
        return f"{msg}, got {got!r}"
    return str(msg).removeprefix("Value error, ")


def parse_scenario(text: str, source: Path) -> Scenario:
    """Validate scenario YAML ``text``; relative paths resolve against ``source``'s folder."""
    raw, lines = load_yaml(text, source)
    if not isinstance(raw, dict):
        raise ScenarioError(f"{source}:1: expected a mapping of scenario keys at the top level")
    raw = dict(raw)
    if "source" in raw:
        raise ScenarioError(f"{source}:{_line_of(lines, ('source',))}: source: unknown key "
                            "(check the spelling; docs/scenarios.md lists every key)")
    raw["source"] = source
    base = source.parent
    items = raw.get("constellations")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict):
            for key in ("tle", "omm", "plane_mapping"):
                if isinstance(item.get(key), str):
                    item[key] = _existing_file(base, item[key], source, lines, i, key)
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            problems.append(f"{source}:{_line_of(lines, loc) or '?'}: {_dotted(loc)}: "
                            f"{_describe(err)}")
        raise ScenarioError(f"{source}: {len(problems)} problem(s) in scenario", problems) from exc
    problems = [f"{source}:{_line_of(lines, loc) or '?'}: {_dotted(loc)}: {msg}"
                for loc, msg in [*L.check_totals(scenario), *_cross_check(scenario)]]
    if problems:
        raise ScenarioError(f"{source}: {len(problems)} problem(s) in scenario", problems)
    return scenario


def _existing_file(base: Path, name: str, source: Path, lines: dict[tuple[str | int, ...], int],
                   i: int, key: str) -> Path:
    where = f"{source}:{_line_of(lines, ('constellations', i, key))}: constellations[{i}].{key}"
    try:
        path = (base / name).resolve()
        found = path.is_file()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the file system
        raise ScenarioError(f"{where}: not a usable file name ({exc})") from exc
    if not found:
        raise ScenarioError(f"{where}: file not found: {path}")
    return path


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    path = Path(path).resolve()
    return parse_scenario(read_text(path), path)


def _cross_check(s: Scenario) -> list[tuple[tuple[str | int, ...], str]]:
    """References between sections: unique names, known stations/constellations/policies."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if not s.constellations:
        problems.append((("constellations",), "needs at least one constellation"))
    owners: dict[str, tuple[str | int, ...]] = {}
    flow_names: dict[str, tuple[str | int, ...]] = {}
    constellations = {c.name for c in s.constellations}
    stations = {g.name for g in s.stations}
    centres = {o.name for o in s.ops_centres}
    sections: list[tuple[str, tuple[Any, ...]]] = [
        ("constellations", s.constellations), ("stations", s.stations),
        ("ops_centres", s.ops_centres), ("traffic", s.traffic)]
    for section, items in sections:
        for i, item in enumerate(items):
            loc = (section, i, "name")
            seen = flow_names if section == "traffic" else owners
            if item.name in seen:
                problems.append((loc, f"name {item.name!r} is already used at "
                                      f"{_dotted(seen[item.name])}; names must be unique"))
            seen.setdefault(item.name, loc)
    for i, g in enumerate(s.stations):
        for c in g.constellations or ():
            if c not in constellations:
                problems.append((("stations", i, "constellations"),
                                 f"unknown constellation {c!r}; expected one of "
                                 f"{sorted(constellations)}"))
    for i, o in enumerate(s.ops_centres):
        for c in o.constellations:
            if c not in constellations:
                problems.append((("ops_centres", i, "constellations"),
                                 f"unknown constellation {c!r}; expected one of "
                                 f"{sorted(constellations)}"))
        if isinstance(o.stations, tuple):
            for st in o.stations:
                if st not in stations:
                    problems.append((("ops_centres", i, "stations"),
                                     f"unknown station {st!r}; expected one of {sorted(stations)}"))
        for p in o.peers:
            if p not in centres or p == o.name:
                problems.append((("ops_centres", i, "peers"),
                                 f"unknown peer {p!r}; expected another operations centre"))
        if o.mcs is not None:
            walkers = [c.walker for c in s.constellations if c.name in o.constellations]
            n_sats = (sum(w.satellites for w in walkers if w is not None)
                      if all(w is not None for w in walkers) else None)
            problems += mcs_problems(o.mcs, ("ops_centres", i, "mcs"), o.constellations, n_sats)
    for i, f in enumerate(s.traffic):
        for key in ("source", "destination"):
            node = getattr(f, key)
            if node not in stations | centres and not _is_satellite_ref(s, node):
                problems.append((("traffic", i, key),
                                 f"unknown node {node!r}; expected a station, an "
                                 "operations centre or a satellite id"))
        if f.source == f.destination:
            problems.append((("traffic", i, "destination"), "must differ from source"))
        if f.policy is not None and f.policy not in s.routing.policies:
            problems.append((("traffic", i, "policy"),
                             f"unknown policy {f.policy!r}; expected one of "
                             f"{sorted(s.routing.policies)}"))
        if f.stop_s is not None and f.stop_s <= f.start_s:
            problems.append((("traffic", i, "stop_s"), "must be after start_s"))
    fault_ids: dict[str, int] = {}
    for i, fault in enumerate(s.faults):
        if fault.id is not None:
            if fault.id in fault_ids:
                problems.append((("faults", i, "id"), f"fault id {fault.id!r} is already used "
                                                      f"by faults[{fault_ids[fault.id]}]"))
            fault_ids.setdefault(fault.id, i)
        if fault.station is not None and fault.station not in stations:
            problems.append((("faults", i, "station"),
                             f"unknown station {fault.station!r}; expected one of "
                             f"{sorted(stations)}"))
        if fault.constellation is not None and fault.constellation not in constellations:
            problems.append((("faults", i, "constellation"),
                             f"unknown constellation {fault.constellation!r}; expected one of "
                             f"{sorted(constellations)}"))
        if fault.operator is not None and fault.operator not in s.operators:
            problems.append((("faults", i, "operator"),
                             f"unknown operator {fault.operator!r}; expected one of "
                             f"{list(s.operators)}"))
        if fault.at is not None and fault.at < s.epoch:
            problems.append((("faults", i, "at"), "is before the scenario epoch"))
    known = stations | centres
    problems += endpoint_problems(s.endpoints,
                                  lambda n: n in known or _is_satellite_ref(s, n))
    return problems


def _is_satellite_ref(s: Scenario, node: str) -> bool:
    return any(node.startswith(f"{c.name}-") for c in s.constellations)
