"""References between a scenario's sections: unique names, known stations, constellations,
policies, operators and endpoint nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orbitmesh.core.endpoint_spec import endpoint_problems
from orbitmesh.core.mcs_spec import mcs_problems
from orbitmesh.core.yaml_load import dotted as _dotted

if TYPE_CHECKING:
    from orbitmesh.core.scenario import Scenario


def cross_check(s: Scenario) -> list[tuple[tuple[str | int, ...], str]]:
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
            if node not in stations | centres and not is_satellite_ref(s, node):
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
                                  lambda n: n in known or is_satellite_ref(s, n))
    return problems


def is_satellite_ref(s: Scenario, node: str) -> bool:
    """Whether ``node`` names a satellite of one of the scenario's constellations."""
    return any(node.startswith(f"{c.name}-") for c in s.constellations)
