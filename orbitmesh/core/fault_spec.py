"""The ``faults:`` and ``random_faults:`` sections of a scenario: planned faults, failure rates."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orbitmesh.core import limits as L
from orbitmesh.core.scenario_fields import NodeName, UtcTime


class _Spec(BaseModel):
    # as scenario.py's models: unknown keys refused, frozen, no inf or NaN
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


class FaultSpec(_Spec):
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


class MtbfSpec(_Spec):
    """Mean time between failures and mean time to repair, scenario seconds."""

    mtbf_s: float = Field(ge=1.0)
    mttr_s: float = Field(ge=0.001)


class RandomFaults(_Spec):
    """Random failures per link class and node class, drawn from the scenario seed."""

    isl: MtbfSpec | None = None
    gsl: MtbfSpec | None = None
    terrestrial: MtbfSpec | None = None
    satellite: MtbfSpec | None = None
    station: MtbfSpec | None = None
    ops_centre: MtbfSpec | None = None
