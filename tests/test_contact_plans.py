"""Contact plans: routable by contact-graph routing, faithful to the emulator's link states.

The plans are parsed back from their text (ION ``ionrc``, HDTN JSON), the way a DTN tool reads
them, and checked against an independent earliest-arrival search, the scenario's antenna
counts, and ranges recomputed from SGP4 positions.
"""

from __future__ import annotations

import heapq
import io
import json
import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgpack
import numpy as np
import pytest

from orbitmesh.core.contact_plans import (
    ContactPlan,
    build_plan,
    merge_contacts,
    node_numbers,
    write_hdtn,
    write_ion,
    write_node_map,
)
from orbitmesh.core.geometry import C_KM_S, elevation_deg
from orbitmesh.core.links import LinkEngine, LinkTracker, make_state
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import GSL, ISL, TERRESTRIAL, Topology, build_topology
from orbitmesh.run.cli import main as cli_main
from orbitmesh.run.trace import LinkTimeline

DEMO = Path(__file__).resolve().parents[1] / "scenarios" / "demo.yaml"
SPAN = timedelta(minutes=20)
STEP_S = 5.0


@pytest.fixture(scope="module")
def demo() -> Topology:
    return build_topology(load_scenario(DEMO))


@pytest.fixture(scope="module")
def plan(demo: Topology) -> ContactPlan:
    epoch = demo.scenario.epoch
    return build_plan(demo, epoch, epoch + SPAN, step_s=STEP_S)


Contact = tuple[int, int, int, int, int]  # start, stop, from, to, rate


def _parse_ion(text: str) -> tuple[datetime, list[Contact], dict[tuple[int, int, int, int], int]]:
    """(reference time, contacts, ranges keyed by (start, stop, low, high) -> owlt)."""
    ref, contacts, ranges = None, [], {}
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] == "#":
            continue
        if words[0] == "@":
            ref = datetime.strptime(words[1], "%Y/%m/%d-%H:%M:%S").replace(tzinfo=UTC)
            continue
        assert words[:2] in (["a", "contact"], ["a", "range"]), line
        assert words[2][0] == "+" and words[3][0] == "+", line
        t0, t1, x, y, v = int(words[2][1:]), int(words[3][1:]), *map(int, words[4:7])
        if words[1] == "contact":
            contacts.append((t0, t1, x, y, v))
        else:
            assert x < y, "ranges are written lower node first (symmetric in ION)"
            ranges[(t0, t1, x, y)] = v
    assert ref is not None
    return ref, contacts, ranges


def _ion(plan: ContactPlan) -> str:
    out = io.StringIO()
    write_ion(plan, node_numbers(plan.topology.node_ids), out)
    return out.getvalue()


def _earliest_arrival(contacts: list[Contact], owlt: dict[tuple[int, int, int, int], int],
                      src: int, dst: int, t0: int) -> tuple[float, list[int]] | None:
    """Contact-graph routing in miniature: Dijkstra on arrival time over one-way contacts."""
    out_of: dict[int, list[Contact]] = defaultdict(list)
    for c in contacts:
        out_of[c[2]].append(c)
    best = {src: float(t0)}
    came: dict[int, int] = {}
    queue = [(float(t0), src)]
    while queue:
        t, node = heapq.heappop(queue)
        if node == dst:
            path = [dst]
            while path[-1] != src:
                path.append(came[path[-1]])
            return t, path[::-1]
        if t > best.get(node, math.inf):
            continue
        for start, stop, x, y, _rate in out_of[node]:
            if stop <= t:
                continue
            arrive = max(t, start) + owlt[(start, stop, min(x, y), max(x, y))]
            if arrive < best.get(y, math.inf):
                best[y], came[y] = arrive, node
                heapq.heappush(queue, (arrive, y))
    return None


def test_ion_plan_routes_tokyo_to_brussels(plan: ContactPlan, demo: Topology) -> None:
    ref, contacts, ranges = _parse_ion(_ion(plan))
    assert ref == demo.scenario.epoch
    numbers = node_numbers(demo.node_ids)
    assert len(contacts) == 2 * len(ranges) == 2 * len(plan)
    kinds = plan.counts()
    assert kinds["isl"] > 0 and kinds["gsl"] > 0 and kinds["terrestrial"] > 0
    found = _earliest_arrival(contacts, ranges, numbers["tokyo"], numbers["brussels"], 0)
    assert found is not None, "no contact-graph route from tokyo to brussels"
    arrival_s, path = found
    by_number = {v: k for k, v in numbers.items()}
    hops = [by_number[n] for n in path]
    assert hops[0] == "tokyo" and hops[-1] == "brussels"
    assert all(h.startswith("demo-") for h in hops[1:-1]), hops  # through the constellation
    assert arrival_s == len(hops) - 1  # all links live from t=0, 1 s light time per hop
    # An ops centre reached only by fibre is in the plan too.
    assert _earliest_arrival(contacts, ranges, numbers["darmstadt"], numbers["tokyo"], 0)


def test_antenna_limits_hold_and_bind(plan: ContactPlan, demo: Topology) -> None:
    _ref, contacts, _ranges = _parse_ion(_ion(plan))
    numbers = node_numbers(demo.node_ids)
    sat_numbers = {numbers[n] for n in demo.node_ids[:demo.n_satellites]}
    peak_seen = 0
    for station, antennas in zip(demo.scenario.stations, demo.station_antennas.tolist(),
                                 strict=True):
        me = numbers[station.name]
        spans = [(c[0], c[1]) for c in contacts if c[2] == me and c[3] in sat_numbers]
        events = sorted([(t0, 1) for t0, _ in spans] + [(t1, -1) for _, t1 in spans])
        live = peak = 0
        for _t, delta in events:  # ends sort before starts at the same second
            live += delta
            peak = max(peak, live)
        assert peak <= antennas, f"{station.name}: {peak} simultaneous GSL contacts"
        peak_seen = max(peak_seen, peak)
    assert peak_seen == demo.station_antennas.max()
    # Without the limit there would be more: a station sees more satellites than antennas.
    pos = LinkEngine(demo).positions_ecef_km(0.0)
    el = elevation_deg(demo.stations, pos)  # (G, S)
    visible = (el >= demo.station_mask_deg[:, None]).sum(axis=1)
    assert visible.max() > demo.station_antennas.max()


def test_node_numbers_survive_an_added_station(tmp_path: Path, demo: Topology) -> None:
    text = DEMO.read_text()
    marker = "stations:\n"
    edited = text.replace(marker, marker + "  - {name: aaa-new, operator: esa, lat_deg: 1.0, "
                          "lon_deg: 2.0, antennas: 1}\n", 1)
    path = tmp_path / "edited.yaml"
    path.write_text(edited)
    bigger = build_topology(load_scenario(path))
    assert bigger.index["darmstadt"] != demo.index["darmstadt"]  # positions did shift
    old, new = node_numbers(demo.node_ids), node_numbers(bigger.node_ids)
    assert {k: new[k] for k in old} == old
    assert len(set(new.values())) == len(new)
    assert node_numbers(reversed(demo.node_ids)) == old  # order never matters
    fh = io.StringIO()
    write_node_map(demo, old, fh)
    rows = fh.getvalue().splitlines()
    assert rows[0] == "node_id,number,kind"
    assert f"darmstadt,{old['darmstadt']},ops_centre" in rows
    assert f"tokyo,{old['tokyo']},station" in rows
    assert len(rows) == demo.n_nodes + 1


def test_hdtn_times_are_absolute_unix_seconds(plan: ContactPlan, demo: Topology) -> None:
    fh = io.StringIO()
    write_hdtn(plan, node_numbers(demo.node_ids), fh)
    contacts = json.loads(fh.getvalue())["contacts"]
    assert set(contacts[0]) == {"contact", "source", "dest", "startTime", "endTime",
                                "rateBitsPerSec", "owlt"}
    epoch_unix = int(demo.scenario.epoch.timestamp())
    assert epoch_unix == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    _ref, ion, _ = _parse_ion(_ion(plan))
    assert sorted((c["startTime"] - epoch_unix, c["endTime"] - epoch_unix, c["source"],
                   c["dest"]) for c in contacts) == sorted(c[:4] for c in ion)
    assert min(c["startTime"] for c in contacts) == epoch_unix
    assert max(c["endTime"] for c in contacts) == epoch_unix + int(SPAN.total_seconds())
    rates = {c["rateBitsPerSec"] for c in contacts}
    links = demo.scenario.links
    assert rates == {links.isl.rate_bps, links.gsl.rate_bps, links.terrestrial.rate_bps}


def test_owlt_is_range_over_c_rounded_up(demo: Topology) -> None:
    epoch = demo.scenario.epoch
    n = demo.n_nodes
    times = np.array([0.0, 10.0, 20.0, 30.0])
    delays = [[0.4, 1.2], [0.5, 2.0], [0.9, 2.5], [0.3, 0.0]]  # link 0-1 and 2-3 (s)
    states = [make_state(t, n, np.array([0, 2]), np.array([1, 3]), np.array([ISL, ISL]),
                         np.array(d)) for t, d in zip(times, delays, strict=True)]
    states[2] = make_state(20.0, n, np.array([0]), np.array([1]), np.array([ISL]),
                           np.array([0.9]))  # 2-3 goes down at t=20 and comes back at t=30
    merged = merge_contacts(states, times, 40.0, demo, epoch)
    got = sorted(zip(merged.a.tolist(), merged.b.tolist(), merged.start_s.tolist(),
                     merged.end_s.tolist(), merged.owlt_s.tolist(), strict=True))
    assert got == [(0, 1, 0, 40, 1), (2, 3, 0, 20, 2), (2, 3, 30, 40, 0)]
    # On the real plan: owlt = ceil(largest range over the contact / c), ranges from SGP4.
    plan = build_plan(demo, epoch, epoch + timedelta(minutes=5), step_s=STEP_S)
    engine = LinkEngine(demo)
    stations = demo.stations.positions_ecef_km
    for i in np.flatnonzero(plan.kind == GSL)[:40].tolist():
        sat, station = int(plan.a[i]), int(plan.b[i]) - demo.n_satellites
        samples = np.arange(plan.start_s[i], plan.end_s[i], STEP_S)
        range_km = max(float(np.linalg.norm(engine.positions_ecef_km(float(t))[sat]
                                            - stations[station])) for t in samples)
        assert plan.owlt_s[i] == math.ceil(range_km / C_KM_S)
        assert plan.delay_s[i] == pytest.approx(range_km / C_KM_S, rel=1e-9)
    assert np.all(plan.owlt_s[plan.kind == TERRESTRIAL] >= 1)


def test_plan_from_a_recorded_timeline_matches_geometry(tmp_path: Path, demo: Topology) -> None:
    epoch = demo.scenario.epoch
    engine, tracker, ids = LinkEngine(demo), LinkTracker(0.0), demo.node_ids
    with (tmp_path / "links.msgpack").open("wb") as fh:
        for t in np.arange(0.0, 600.0, demo.scenario.tick_s):
            s = engine.state_at(float(t))
            d = tracker.update(s)
            fh.write(msgpack.packb({
                "t_s": float(t),
                "up": [[ids[s.a[i]], ids[s.b[i]], int(s.kind[i]), float(s.delay_s[i])]
                       for i in d.up.tolist()],
                "changed": [[ids[s.a[i]], ids[s.b[i]], int(s.kind[i]), float(s.delay_s[i])]
                            for i in d.delay_changed.tolist()],
                "down": [[ids[a], ids[b], int(k)] for a, b, k in
                         zip(d.down_a.tolist(), d.down_b.tolist(), d.down_kind.tolist(),
                             strict=True)]}))
    end = epoch + timedelta(seconds=600)
    recorded = build_plan(demo, epoch, end, source=LinkTimeline(tmp_path, demo))
    computed = build_plan(demo, epoch, end)
    assert _ion(recorded) == _ion(computed)
    assert len(recorded) > len(build_plan(demo, epoch, epoch + timedelta(seconds=60)))


def test_cli_writes_plan_and_node_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    out, node_map = tmp_path / "plan.ionrc", tmp_path / "nodes.csv"
    assert cli_main(["contacts", str(DEMO), "--format", "ion", "--out", str(out),
                     "--node-map", str(node_map)]) == 0
    _ref, contacts, _ = _parse_ion(out.read_text())
    assert contacts and node_map.read_text().startswith("node_id,number,kind\n")
    assert cli_main(["contacts", str(DEMO), "--format", "ion", "--station", "tokyo"]) == 2
    assert cli_main(["contacts", str(DEMO), "--format", "json", "--step", "5"]) == 2
    assert cli_main(["contacts", str(DEMO), "--format", "hdtn", "--step", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--station/--satellite select passes" in err and "positive number" in err
