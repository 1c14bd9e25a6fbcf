"""The Python API for notebooks and scripts: the same functions the `orbitmesh` command calls.

>>> import orbitmesh
>>> sc = orbitmesh.load("scenarios/demo.yaml")          # doctest: +SKIP
>>> sc.path("tokyo", "brussels")[0]["one_way_ms"]       # doctest: +SKIP
>>> tr = orbitmesh.open_trace("runs/demo-...")          # doctest: +SKIP
>>> tr.summary["flows"][0]["delivery_ratio"]            # doctest: +SKIP

Everything returned is plain data that pandas takes as it is: a list of dicts (one per row) or
a dict of equal-length numpy arrays (one per column); ``pandas.DataFrame(rows)`` works on both.
pandas itself is not needed. Times are UTC ``datetime``s or ISO-8601 strings ending in ``Z``;
``t_s`` columns are scenario seconds after the epoch. docs/python-api.md has worked examples.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from orbitmesh.core.scenario import Scenario, load_scenario
from orbitmesh.core.topology import LINK_CLASSES, Topology, build_topology
from orbitmesh.errors import ScenarioError

__all__ = ["ScenarioHandle", "TraceHandle", "load", "open_trace"]

When = datetime | float | int | None
"""A time: an aware UTC datetime, scenario seconds after the epoch, or None (the epoch)."""


def _iso_z(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class ScenarioHandle:
    """A loaded, validated scenario and its topology, with the questions the CLI answers."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        """The frozen scenario model (orbitmesh.core.scenario.Scenario)."""

    @cached_property
    def topology(self) -> Topology:
        """Every node and candidate link (node ids in ``topology.node_ids``)."""
        return build_topology(self.scenario)

    def __repr__(self) -> str:
        t = self.topology
        return (f"<orbitmesh scenario {self.scenario.name!r}: {t.n_satellites} satellites, "
                f"{t.n_stations} stations, {t.n_nodes - t.n_satellites - t.n_stations} ops "
                "centres>")

    def time(self, when: When) -> datetime:
        """``when`` as a UTC datetime (seconds count from the scenario epoch)."""
        if when is None:
            return self.scenario.epoch
        if isinstance(when, datetime):
            return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        return self.scenario.epoch + timedelta(seconds=float(when))

    def times(self, at: When = None, start: When = None, end: When = None,
              step_s: float = 60.0) -> list[datetime]:
        """One time (``at``) or samples every ``step_s`` from ``start`` to ``end`` inclusive."""
        if at is not None and (start is not None or end is not None):
            raise ScenarioError("give either at= or start=/end=, not both")
        if start is None and end is None:
            return [self.time(at)]
        if not step_s > 0:
            raise ScenarioError(f"step {step_s}: expected a positive number of seconds")
        first = self.time(start)
        last = self.time(end) if end is not None else first + timedelta(
            seconds=self.scenario.duration_s)
        if last < first:
            raise ScenarioError("end is before start")
        count = int((last - first).total_seconds() // step_s) + 1
        return [first + timedelta(seconds=i * step_s) for i in range(count)]

    def path(self, src: str, dst: str, at: When = None, *, start: When = None,
             end: When = None, step_s: float = 60.0, policy: str | None = None,
             on_sample: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """The route from ``src`` to ``dst`` at each time: one row per time.

        Row keys: ``time`` (ISO UTC), ``path`` (node ids, empty when there is no route),
        ``hop_delays_ms``, ``one_way_ms`` and ``rtt_ms`` (None without a route). Faults are not
        applied. ``policy`` names a routing policy of the scenario (None: unrestricted).
        """
        from orbitmesh.core.engine import TickEngine

        topology, scenario = self.topology, self.scenario
        s, d = topology.node(src), topology.node(dst)
        if policy is not None and policy not in scenario.routing.policies:
            raise ScenarioError(f"unknown policy {policy!r}; the scenario defines "
                                f"{sorted(scenario.routing.policies) or 'none'}")
        times = self.times(at, start, end, step_s)
        if times[0] < scenario.epoch:
            raise ScenarioError(f"times must not precede the scenario epoch "
                                f"{_iso_z(scenario.epoch)}")
        # Trees are rooted at destinations, so root one at dst.
        engine = TickEngine(topology, destinations=[d], policies=[policy] if policy else [])
        engine.warm_up((times[0] - scenario.epoch).total_seconds())
        rows: list[dict[str, Any]] = []
        for i, when in enumerate(times):
            tick = engine.step((when - scenario.epoch).total_seconds())
            hops = tick.routes[policy].path(s, d)
            delays = [tick.state.delay_of(a, b) or 0.0 for a, b in itertools.pairwise(hops)]
            one_way = sum(delays) * 1000.0 if hops else None
            rows.append({"time": _iso_z(when), "path": [topology.node_ids[n] for n in hops],
                         "hop_delays_ms": [round(x * 1000.0, 3) for x in delays],
                         "one_way_ms": None if one_way is None else round(one_way, 3),
                         "rtt_ms": None if one_way is None else round(2 * one_way, 3)})
            if on_sample is not None:
                on_sample(i + 1, len(times))
        return rows

    def links(self, at: When = None) -> dict[str, np.ndarray[Any, Any]]:
        """Every live link at one time (faults not applied), as columns.

        Keys: ``a``, ``b`` (node ids, a before b in node order), ``class`` (isl, gsl,
        terrestrial) and ``delay_ms`` (one-way propagation delay).
        """
        from orbitmesh.core.engine import TickEngine

        t_s = (self.time(at) - self.scenario.epoch).total_seconds()
        if t_s < 0:
            raise ScenarioError("at= must not precede the scenario epoch")
        engine = TickEngine(self.topology, destinations=[], policies=[])
        engine.warm_up(t_s)  # sticky handover depends on the GSL history
        state = engine.links.state_at(t_s)
        ids = np.array(self.topology.node_ids, dtype=object)
        return {"a": ids[state.a], "b": ids[state.b],
                "class": np.array(LINK_CLASSES, dtype=object)[state.kind],
                "delay_ms": state.delay_s * 1000.0}

    def contacts(self, start: When = None, end: When = None, *,
                 stations: Sequence[str] | None = None,
                 satellites: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Passes of satellites over stations between ``start`` and ``end``.

        One row per pass: ``station``, ``satellite``, ``aos``, ``tca``, ``los`` (UTC datetimes),
        ``duration_s``, ``max_elevation_deg``, ``tca_range_km``. ``end`` defaults to the
        scenario duration after ``start``.
        """
        from orbitmesh.core.geometry import Propagator, Stations
        from orbitmesh.core.passes import find_passes

        topo, scenario = self.topology, self.scenario
        first = self.time(start)
        last = self.time(end) if end is not None else first + timedelta(
            seconds=scenario.duration_s)
        if last <= first:
            raise ScenarioError("end must be after start")
        names = [g.name for g in scenario.stations]
        picked = list(range(len(names)))
        if stations is not None:
            unknown = [n for n in stations if n not in names]
            if unknown:
                raise ScenarioError(f"unknown station(s) {unknown}; expected one of {names}")
            picked = [names.index(n) for n in stations]
        sats = list(range(topo.n_satellites))
        if satellites is not None:
            sats = [topo.node(n) for n in satellites]
            if any(i >= topo.n_satellites for i in sats):
                raise ScenarioError("satellites= takes satellite ids")
        st = scenario.stations
        passes = find_passes(
            Propagator([topo.satrecs[i] for i in sats]), [topo.node_ids[i] for i in sats],
            Stations.from_geodetic([st[g].lat_deg for g in picked],
                                   [st[g].lon_deg for g in picked],
                                   [st[g].alt_m / 1000.0 for g in picked]),
            [st[g].name for g in picked], [st[g].min_elevation_deg for g in picked],
            first, last)
        return [{"station": p.station, "satellite": p.satellite, "aos": p.aos, "tca": p.tca,
                 "los": p.los, "duration_s": p.duration_s,
                 "max_elevation_deg": p.max_elevation_deg, "tca_range_km": p.tca_range_km}
                for p in passes]


def load(path: str | Path) -> ScenarioHandle:
    """Load and validate a scenario file (ScenarioError names the file, field and problem)."""
    return ScenarioHandle(load_scenario(Path(path)))


def validation_report(path: str | Path) -> dict[str, Any]:
    """What `orbitmesh validate --format json` prints: ``ok``, and counts or the ``error``."""
    try:
        handle = load(path)
        topo = handle.topology
    except ScenarioError as exc:
        return {"ok": False, "file": str(path), "error": str(exc)}
    s = handle.scenario
    return {"ok": True, "file": str(path), "name": s.name,
            "epoch": _iso_z(s.epoch), "duration_s": s.duration_s, "tick_s": s.tick_s,
            "seed": s.seed, "nodes": topo.n_nodes, "satellites": topo.n_satellites,
            "stations": topo.n_stations,
            "ops_centres": topo.n_nodes - topo.n_satellites - topo.n_stations,
            "constellations": [{"name": sh.constellation.name,
                                "operator": sh.constellation.operator, "satellites": sh.count,
                                "planes": sh.planes} for sh in topo.shells],
            "operators": list(topo.operators), "isl_candidates": len(topo.isl_pairs),
            "traffic": [{"name": f.name, "source": f.source, "destination": f.destination}
                        for f in s.traffic],
            "faults": len(getattr(s, "faults", ()) or ()), "warnings": list(topo.warnings)}


class TraceHandle:
    """A run directory (finished or still going) read as rows and columns."""

    def __init__(self, run_dir: Path, salvage: bool = False) -> None:
        from orbitmesh.run.trace import read_manifest

        self.run_dir = Path(run_dir)
        self.salvage = salvage
        """Read past damaged records instead of raising TraceError."""
        self.manifest: dict[str, Any] = read_manifest(self.run_dir)
        """``trace.json``: run id, epoch, speed, node ids, flows, faults."""

    def __repr__(self) -> str:
        return f"<orbitmesh trace {self.manifest.get('run_id')!r} at {self.run_dir}>"

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json`` of the run (RunError while the run has not written it)."""
        from orbitmesh.run.report import read_summary

        path = self.run_dir / "summary.json"
        if not path.is_file():
            from orbitmesh.errors import RunError

            raise RunError(f"{self.run_dir}: no summary.json yet (the run has not finished)")
        return read_summary(path)

    def iter_events(self) -> Iterator[dict[str, Any]]:
        """Frame events in scenario-time order, one dict each (columns of `trace export`)."""
        from orbitmesh.run.export import iter_event_rows

        yield from iter_event_rows(self.run_dir, salvage=self.salvage)

    def events(self, kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Frame events (offer, hop, deliver, drop) as rows; ``kinds`` keeps only those."""
        keep = None if kinds is None else set(kinds)
        return [r for r in self.iter_events() if keep is None or r["event"] in keep]

    def deliveries(self) -> dict[str, np.ndarray[Any, Any]]:
        """Every delivered frame as columns: t_s, flow (name), latency_ms, late_ms."""
        from orbitmesh.run.report_data import read_run

        data = read_run(self.run_dir, salvage=self.salvage)
        names = np.array([data.flows.get(int(f), str(f)) for f in data.deliver_flow],
                         dtype=object)
        return {"t_s": data.deliver_t_s, "flow": names, "latency_ms": data.deliver_latency_ms,
                "late_ms": data.deliver_late_ms}

    def links(self) -> list[dict[str, Any]]:
        """The link timeline, one row per change: t_s, event (up/down/changed), a, b, class,
        delay_ms (None for down)."""
        from orbitmesh.run.export import link_rows

        return list(link_rows(self.run_dir, salvage=self.salvage))


def open_trace(run: str | Path, *, salvage: bool = False) -> TraceHandle:
    """Open a run directory, or a bare run id under ``runs/``, as a :class:`TraceHandle`."""
    from orbitmesh.run.run_report import resolve_run

    return TraceHandle(resolve_run(str(run)), salvage=salvage)
