"""Scenario files: YAML in, frozen validated objects out.

A scenario describes a network to emulate: constellations (Walker shells or TLE/OMM files), ground
stations, operations centres, link rules, routing policies and traffic. ``load_scenario`` returns a
:class:`Scenario` or raises :class:`ScenarioError` listing *every* problem as
``<file>:<line>: <field.path>: <what was expected>``. docs/scenarios.md documents every key.
The faults sections live in fault_spec.py, the shared field types in scenario_fields.py and the
checks across sections in scenario_checks.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from orbitmesh.core import limits as L
from orbitmesh.core.endpoint_spec import Endpoints
from orbitmesh.core.fault_spec import FaultSpec, RandomFaults
from orbitmesh.core.mcs_spec import McsSpec
from orbitmesh.core.scenario_checks import cross_check
from orbitmesh.core.scenario_fields import NodeName, UtcTime
from orbitmesh.core.yaml_load import dotted as _dotted
from orbitmesh.core.yaml_load import line_of as _line_of
from orbitmesh.core.yaml_load import load_yaml, read_text
from orbitmesh.errors import ScenarioError


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
                for loc, msg in [*L.check_totals(scenario), *cross_check(scenario)]]
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
