"""Fault plans and the fault overlay (pure core: no I/O).

A :class:`Fault` is a :class:`~orbitmesh.core.scenario.FaultSpec` placed in scenario time with an id
and an origin (``scheduled`` from the scenario's ``faults:``, ``random`` from ``random_faults:``
and the seed, or ``live`` from the control topic). :class:`FaultOverlay` applies the faults
active at a tick to that tick's link state: failed links and nodes disappear from the graph (so
routes avoid them) and are listed with the fault that removed them, so that frames lost to a
fault are dropped with reason ``fault`` and the fault's id; degraded links get extra delay, extra
loss and a rate cap.

``worker_kill`` and ``broker_outage`` act on processes; the launcher carries them out. While a
killed worker is down the controller treats its nodes as failed by that fault.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from orbitmesh.core.fault_spec import FaultSpec, MtbfSpec
from orbitmesh.core.links import LinkState, make_state
from orbitmesh.core.scenario import Scenario
from orbitmesh.core.topology import (
    LINK_CLASSES,
    OPS_CENTRE,
    SATELLITE,
    STATION,
    Topology,
    great_circle_km,
)

BoolArray = NDArray[np.bool_]
PROCESS_KINDS = ("worker_kill", "broker_outage", "container_kill", "container_pause",
                 "container_unpause", "container_restart")
CONTAINER_KINDS = PROCESS_KINDS[2:]
NODE_RESTART_DEFAULT_S = 5.0


@dataclass(frozen=True)
class Fault:
    """A fault placed in scenario time."""

    id: str
    spec: FaultSpec
    start_s: float
    end_s: float | None
    origin: str  # scheduled | random | live

    def active(self, t_s: float) -> bool:
        """True while the fault is in force at scenario time ``t_s``."""
        return self.start_s <= t_s and (self.end_s is None or t_s < self.end_s)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (for the summary and the faults topic)."""
        target = {k: v for k, v in self.spec.model_dump(exclude_none=True).items()
                  if k not in ("kind", "id", "at_s", "at", "for_s")
                  and not (k in ("restart",) and v is False)
                  and not (k in ("extra_loss", "extra_delay_ms") and v == 0.0)}
        return {"id": self.id, "kind": self.spec.kind, "target": target,
                "start_s": round(self.start_s, 3),
                "end_s": None if self.end_s is None else round(self.end_s, 3),
                "origin": self.origin}


def place_fault(spec: FaultSpec, scenario: Scenario, fault_id: str, origin: str,
                now_s: float = 0.0) -> Fault:
    """Turn a spec into a fault: start at ``at_s``/``at`` (else ``now_s``), heal after for_s."""
    if spec.at is not None:
        start = (spec.at - scenario.epoch).total_seconds()
    elif spec.at_s is not None:
        start = spec.at_s
    else:
        start = now_s
    duration = spec.for_s
    if duration is None and spec.kind == "node_restart":
        duration = NODE_RESTART_DEFAULT_S
    return Fault(spec.id or fault_id, spec, start, None if duration is None else start + duration,
                 origin)


def scheduled_faults(scenario: Scenario) -> list[Fault]:
    """The scenario's ``faults:`` list, ids ``f1``, ``f2``, ... unless given."""
    return [place_fault(spec, scenario, f"f{i + 1}", "scheduled")
            for i, spec in enumerate(scenario.faults)]


def random_faults(topology: Topology, duration_s: float) -> list[Fault]:
    """Failures drawn from ``random_faults:`` MTBF/MTTR and the seed: same seed, same timeline."""
    scenario = topology.scenario
    spec = scenario.random_faults
    if spec is None:
        return []
    ids = topology.node_ids
    elements: list[tuple[str, MtbfSpec | None, list[dict[str, Any]]]] = [
        ("isl", spec.isl, [{"kind": "link_down", "a": ids[a], "b": ids[b], "link_class": "isl"}
                           for a, b in topology.isl_pairs.tolist()]),
        ("gsl", spec.gsl, [{"kind": "link_down", "a": g.name, "link_class": "gsl"}
                           for g in scenario.stations]),
        ("terrestrial", spec.terrestrial,
         [{"kind": "link_down", "a": ids[a], "b": ids[b], "link_class": "terrestrial"}
          for a, b in zip(topology.terrestrial[0].tolist(), topology.terrestrial[1].tolist(),
                          strict=True)]),
        ("satellite", spec.satellite, [{"kind": "node_down", "node": ids[i]}
                                       for i in np.flatnonzero(topology.kind == SATELLITE)]),
        ("station", spec.station, [{"kind": "node_down", "node": ids[i]}
                                   for i in np.flatnonzero(topology.kind == STATION)]),
        ("ops_centre", spec.ops_centre, [{"kind": "node_down", "node": ids[i]}
                                         for i in np.flatnonzero(topology.kind == OPS_CENTRE)]),
    ]
    out: list[Fault] = []
    for stream, (cls, rates, targets) in enumerate(elements):
        if rates is None:
            continue
        rng = np.random.default_rng([scenario.seed, 0xFA017, stream])
        for target in targets:
            t = float(rng.exponential(rates.mtbf_s))
            while t < duration_s:
                repair = float(rng.exponential(rates.mttr_s))
                fault_id = f"r-{cls}-{len(out) + 1}"
                out.append(Fault(fault_id, FaultSpec(**target, id=fault_id, for_s=repair), t,
                                 t + repair, "random"))
                t += repair + float(rng.exponential(rates.mtbf_s))
    out.sort(key=lambda f: (f.start_s, f.id))
    return out


class CommandError(ValueError):
    """A live control command was malformed or unknown."""


def parse_command(payload: bytes) -> dict[str, Any]:
    """Decode a control message (JSON object with ``cmd``); raises CommandError with the reason."""
    try:
        command = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"not JSON: {exc}") from exc
    if not isinstance(command, dict) or not isinstance(command.get("cmd"), str):
        raise CommandError('expected a JSON object with a "cmd" key, e.g. '
                           '{"cmd": "fault", "kind": "link_down", "a": "gs1", "for_s": 10}')
    if command["cmd"] not in ("fault", "clear", "list", "finish", "stop_traffic"):
        raise CommandError(f"unknown cmd {command['cmd']!r}; expected fault, clear, list or "
                           "finish")
    return command


def fault_from_command(command: dict[str, Any], scenario: Scenario, fault_id: str,
                       now_s: float) -> Fault:
    """A live ``{"cmd": "fault", ...}`` command as a fault starting now (or at at_s)."""
    body = {k: v for k, v in command.items() if k != "cmd"}
    try:
        spec = FaultSpec.model_validate(body)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'fault'}: "
                            f"{str(e['msg']).removeprefix('Value error, ')}"
                            for e in exc.errors())
        raise CommandError(f"invalid fault: {reasons}") from exc
    return place_fault(spec, scenario, fault_id, "live", now_s)


@dataclass(frozen=True)
class Overlay:
    """A tick's link state after faults, and what each fault took away."""

    state: LinkState
    down_nodes: dict[int, str] = field(default_factory=dict)  # node -> fault id
    cut: list[tuple[int, int, str]] = field(default_factory=list)  # live link cut by fault
    degraded: list[tuple[int, int, float, float, float, str]] = field(default_factory=list)
    # (a, b, extra_loss, extra_delay_s, rate_cap_bps or 0, fault id)


class FaultOverlay:
    """Applies active faults to link states."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._globs: dict[str, BoolArray] = {}

    def match(self, pattern: str) -> BoolArray:
        """Nodes whose id matches a glob (``*``, ``?``, ``[...]``), as a mask ``(N,)``."""
        mask = self._globs.get(pattern)
        if mask is None:
            ids = self.topology.node_ids
            if not any(c in pattern for c in "*?["):
                mask = np.zeros(len(ids), dtype=bool)
                index = self.topology.index.get(pattern)
                if index is not None:
                    mask[index] = True
            else:
                mask = np.fromiter((fnmatch.fnmatchcase(n, pattern) for n in ids), dtype=bool,
                                   count=len(ids))
            self._globs[pattern] = mask
        return mask

    def nodes_of(self, fault: Fault) -> BoolArray | None:
        """Nodes a node-type fault takes down; None for link faults and process faults."""
        spec, topo = fault.spec, self.topology
        kind = spec.kind
        if kind in ("node_down", "node_restart"):
            assert spec.node is not None
            return self.match(spec.node)
        if kind == "station_outage":
            assert spec.station is not None
            return self.match(spec.station)
        if kind == "operator_withdrawal":
            if spec.operator not in topo.operators:
                return np.zeros(topo.n_nodes, dtype=bool)
            return np.asarray(topo.operator == topo.operators.index(str(spec.operator)))
        if kind == "plane_outage":
            mask = np.zeros(topo.n_nodes, dtype=bool)
            for shell in topo.shells:
                if shell.constellation.name == spec.constellation:
                    members = shell.first + np.flatnonzero(shell.plane == spec.plane)
                    mask[members] = True
            return mask
        if kind == "region_outage":
            mask = np.zeros(topo.n_nodes, dtype=bool)
            for g, station in enumerate(topo.scenario.stations):
                distance = great_circle_km(float(spec.lat_deg or 0.0), float(spec.lon_deg or 0.0),
                                           station.lat_deg, station.lon_deg)
                if distance <= float(spec.radius_km or 0.0):
                    mask[topo.n_satellites + g] = True
            return mask
        return None

    def failed_nodes(self, active: Iterable[Fault], extra_down: dict[int, str] | None = None
                     ) -> BoolArray:
        """Every node a set of faults takes down, as a mask ``(N,)``."""
        mask = np.zeros(self.topology.n_nodes, dtype=bool)
        for fault in active:
            nodes = self.nodes_of(fault)
            if nodes is not None:
                mask |= nodes
        if extra_down:
            mask[np.fromiter(extra_down, dtype=np.int64)] = True
        return mask

    def links_of(self, fault: Fault, state: LinkState) -> BoolArray:
        """Links of ``state`` a link fault applies to."""
        spec = fault.spec
        ma = self.match(spec.a or "*")
        mb = self.match(spec.b or "*")
        a, b = state.a, state.b
        hit = (ma[a] & mb[b]) | (ma[b] & mb[a])
        if spec.link_class is not None:
            hit &= state.kind == LINK_CLASSES.index(spec.link_class)
        return np.asarray(hit, dtype=bool)

    def apply(self, state: LinkState, active: Iterable[Fault],
              extra_down: dict[int, str] | None = None) -> Overlay:
        """The state with the active faults applied; ``extra_down`` adds failed nodes."""
        down: dict[int, str] = dict(extra_down or {})
        cut_mask = np.zeros(len(state), dtype=bool)
        cut_by = np.full(len(state), "", dtype=object)
        extra_delay = np.zeros(len(state))
        degraded: list[tuple[int, int, float, float, float, str]] = []
        for fault in active:
            nodes = self.nodes_of(fault)
            if nodes is not None:
                for node in np.flatnonzero(nodes).tolist():
                    down.setdefault(node, fault.id)
                continue
            if fault.spec.kind == "link_down":
                hit = self.links_of(fault, state) & ~cut_mask
                cut_mask |= hit
                cut_by[hit] = fault.id
            elif fault.spec.kind == "link_degrade":
                hit = self.links_of(fault, state)
                extra = fault.spec.extra_delay_ms / 1000.0
                extra_delay[hit] += extra
                degraded += [(int(state.a[i]), int(state.b[i]), fault.spec.extra_loss, extra,
                              fault.spec.rate_cap_bps or 0.0, fault.id)
                             for i in np.flatnonzero(hit)]
        if down:
            nodes = np.fromiter(down, dtype=np.int64)
            dn = np.zeros(state.n_nodes, dtype=bool)
            dn[nodes] = True
            hit = (dn[state.a] | dn[state.b]) & ~cut_mask
            cut_mask |= hit
            for i in np.flatnonzero(hit).tolist():
                a, b = int(state.a[i]), int(state.b[i])
                cut_by[i] = down.get(a) or down[b]
        cut = [(int(state.a[i]), int(state.b[i]), str(cut_by[i]))
               for i in np.flatnonzero(cut_mask).tolist()]
        keep = ~cut_mask
        new_state = make_state(state.t_s, state.n_nodes, state.a[keep], state.b[keep],
                               state.kind[keep], state.delay_s[keep] + extra_delay[keep])
        return Overlay(new_state, down, cut, [d for d in degraded if (d[0], d[1]) not in
                                              {(c[0], c[1]) for c in cut}])


def down_mask(overlay: Overlay, n_nodes: int) -> BoolArray:
    """Failed nodes as a mask."""
    mask = np.zeros(n_nodes, dtype=bool)
    if overlay.down_nodes:
        mask[np.fromiter(overlay.down_nodes, dtype=np.int64)] = True
    return mask


def active_at(faults: Sequence[Fault], t_s: float) -> list[Fault]:
    """Faults in force at ``t_s`` that act on the graph (process faults excluded)."""
    return [f for f in faults if f.active(t_s) and f.spec.kind not in PROCESS_KINDS]
