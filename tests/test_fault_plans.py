"""Fault timelines (scheduled, random from the seed) and live control commands."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections import Counter
from typing import Any

import numpy as np
import pytest

from orbitmesh.core.faults import (
    CommandError,
    Fault,
    fault_from_command,
    parse_command,
    random_faults,
    scheduled_faults,
)
from orbitmesh.core.scenario import Scenario, parse_scenario
from orbitmesh.core.topology import Topology
from orbitmesh.errors import ScenarioError
from orbitmesh.protocol.transport import MemoryBroker, MemoryTransport
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.controller import Controller
from tests.faults_support import (
    DATA,
)

# --- scheduled and random fault timelines ------------------------------------------------------

def test_scheduled_faults_get_ids_and_times(mixed: Topology) -> None:
    text = (DATA / "overlay.yaml").read_text() + (
        "faults:\n"
        "  - {kind: link_down, a: west, at_s: 3, for_s: 2}\n"
        "  - {kind: node_down, node: east, id: east-down, at: 2026-01-01T00:00:10Z}\n"
        "  - {kind: station_outage, station: west}\n")
    scenario = parse_scenario(text, DATA / "overlay.yaml")
    planned = scheduled_faults(scenario)
    assert [(f.id, f.start_s, f.end_s, f.origin) for f in planned] == [
        ("f1", 3.0, 5.0, "scheduled"), ("east-down", 10.0, None, "scheduled"),
        ("f3", 0.0, None, "scheduled")]
    assert planned[0].describe() == {"id": "f1", "kind": "link_down", "target": {"a": "west"},
                                     "start_s": 3.0, "end_s": 5.0, "origin": "scheduled"}


@pytest.mark.parametrize(("entry", "complaint"), [
    ("{kind: station_outage, station: nowhere}", "unknown station 'nowhere'"),
    ("{kind: plane_outage, constellation: nope, plane: 0}", "unknown constellation 'nope'"),
    ("{kind: operator_withdrawal, operator: nobody}", "unknown operator 'nobody'"),
    ("{kind: link_down}", "a link_down fault needs a"),
    ("{kind: region_outage, lat_deg: 1, lon_deg: 2}", "needs radius_km"),
    ("{kind: node_down, node: west, at_s: 1, at: 2026-01-01T00:00:01Z}", "either at_s or at"),
    ("{kind: node_down, node: west, at: 2025-01-01T00:00:00Z}", "before the scenario epoch"),
    ("{kind: node_down, node: west, colour: red}", "unknown key"),
])
def test_bad_scheduled_faults_are_scenario_errors(entry: str, complaint: str) -> None:
    text = (DATA / "overlay.yaml").read_text() + f"faults:\n  - {entry}\n"
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, DATA / "overlay.yaml")
    assert complaint in str(err.value) + " ".join(err.value.problems)


def test_duplicate_fault_ids_are_refused() -> None:
    text = (DATA / "overlay.yaml").read_text() + (
        "faults:\n  - {kind: node_down, node: west, id: same}\n"
        "  - {kind: node_down, node: east, id: same}\n")
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, DATA / "overlay.yaml")
    assert "already used" in str(err.value) + " ".join(err.value.problems)


def with_random(topology: Topology, seed: int, **rates: dict[str, float]) -> Topology:
    """The topology with ``random_faults`` rates and a seed swapped into its scenario."""
    scenario = Scenario.model_validate({**topology.scenario.model_dump(), "seed": seed,
                                        "random_faults": rates})
    return dataclasses.replace(topology, scenario=scenario)


def timeline(faults: list[Fault]) -> list[tuple[str, str, str, float, float | None]]:
    """What a fault timeline is made of, comparable across runs."""
    return [(f.id, f.spec.kind, json.dumps(f.describe()["target"], sort_keys=True), f.start_s,
             f.end_s) for f in faults]


RATES: dict[str, dict[str, float]] = {
    "isl": {"mtbf_s": 600.0, "mttr_s": 60.0}, "gsl": {"mtbf_s": 900.0, "mttr_s": 30.0},
    "terrestrial": {"mtbf_s": 1200.0, "mttr_s": 120.0},
    "satellite": {"mtbf_s": 3000.0, "mttr_s": 300.0},
    "station": {"mtbf_s": 2000.0, "mttr_s": 100.0},
    "ops_centre": {"mtbf_s": 5000.0, "mttr_s": 500.0}}


def test_random_faults_same_seed_same_timeline(mixed: Topology) -> None:
    first = random_faults(with_random(mixed, 7, **RATES), 3600.0)
    again = random_faults(with_random(mixed, 7, **RATES), 3600.0)
    other = random_faults(with_random(mixed, 8, **RATES), 3600.0)
    assert len(first) > 50
    assert timeline(first) == timeline(again)
    assert timeline(first) != timeline(other)
    assert {f.origin for f in first} == {"random"}
    assert len({f.id for f in first}) == len(first)
    assert [f.start_s for f in first] == sorted(f.start_s for f in first)
    assert random_faults(mixed, 3600.0) == []  # none configured


def test_random_faults_target_every_element_class(mixed: Topology) -> None:
    faults = random_faults(with_random(mixed, 3, **RATES), 20_000.0)
    kinds = Counter((f.spec.kind, f.spec.link_class, mixed.kind[mixed.node(
        f.spec.node or f.spec.a or "")]) for f in faults)
    assert {k[:2] for k in kinds} == {("link_down", "isl"), ("link_down", "gsl"),
                                      ("link_down", "terrestrial"), ("node_down", None)}
    for f in faults:
        if f.spec.link_class == "gsl":  # all GSLs of one station
            assert f.spec.b is None and f.spec.a in {g.name for g in mixed.scenario.stations}
        elif f.spec.link_class in ("isl", "terrestrial"):
            assert f.spec.b is not None
        assert f.end_s is not None and f.spec.for_s == pytest.approx(f.end_s - f.start_s)
    down = {f.spec.node for f in faults if f.spec.kind == "node_down"}
    assert down == set(mixed.node_ids)  # over 20,000 s every node fails at least once


def test_random_faults_follow_mtbf_and_mttr(mixed: Topology) -> None:
    mtbf_s, mttr_s, duration_s = 200.0, 50.0, 100_000.0
    faults = random_faults(with_random(mixed, 11, isl={"mtbf_s": mtbf_s, "mttr_s": mttr_s}),
                           duration_s)
    per_link: dict[tuple[str | None, str | None], list[Fault]] = {}
    for f in faults:
        per_link.setdefault((f.spec.a, f.spec.b), []).append(f)
    assert len(per_link) == len(mixed.isl_pairs)  # every +Grid candidate, live or not
    ups, repairs = [], []
    for history in per_link.values():
        history.sort(key=lambda f: f.start_s)
        ups.append(history[0].start_s)
        for prev, nxt in itertools.pairwise(history):
            assert prev.end_s is not None and prev.end_s <= nxt.start_s  # one failure at a time
            ups.append(nxt.start_s - prev.end_s)
        repairs += [f.end_s - f.start_s for f in history if f.end_s is not None]
    # ~24,000 draws of each: the sample means are within 2% (1 sigma ~0.65%).
    assert len(repairs) > 20_000
    assert np.mean(ups) == pytest.approx(mtbf_s, rel=0.02)
    assert np.mean(repairs) == pytest.approx(mttr_s, rel=0.02)
    # Exponential: the standard deviation equals the mean.
    assert np.std(repairs) == pytest.approx(mttr_s, rel=0.05)
    expected_count = len(per_link) * duration_s / (mtbf_s + mttr_s)
    assert len(faults) == pytest.approx(expected_count, rel=0.03)


def test_random_isl_faults_do_not_depend_on_other_classes(mixed: Topology) -> None:
    isl_only = random_faults(with_random(mixed, 5, isl=RATES["isl"]), 3600.0)
    everything = random_faults(with_random(mixed, 5, **RATES), 3600.0)
    def isl(faults: list[Fault]) -> list[tuple[str, float, float | None]]:
        return [(json.dumps(f.describe()["target"]), f.start_s, f.end_s) for f in faults
                if f.spec.link_class == "isl"]
    assert isl(isl_only) == isl(everything)


# --- control commands ---------------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "reason"), [
    (b"link_down tokyo", "not JSON"),
    (b"\xff\xfe{", "not JSON"),
    (b"[1, 2]", 'expected a JSON object with a "cmd" key'),
    (b'{"kind": "link_down"}', 'expected a JSON object with a "cmd" key'),
    (b'{"cmd": 3}', 'expected a JSON object with a "cmd" key'),
    (b'{"cmd": "faul"}', "unknown cmd 'faul'"),
])
def test_parse_command_refuses_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(CommandError) as err:
        parse_command(payload)
    assert reason in str(err.value)


@pytest.mark.parametrize("cmd", ["fault", "clear", "list", "finish", "stop_traffic"])
def test_parse_command_accepts_the_documented_commands(cmd: str) -> None:
    assert parse_command(json.dumps({"cmd": cmd}).encode())["cmd"] == cmd


@pytest.mark.parametrize(("command", "reasons"), [
    ({"kind": "link_cut", "a": "west"}, ["kind: Input should be 'link_down'", "'plane_outage'"]),
    ({"kind": "link_down"}, ["a link_down fault needs a"]),
    ({"kind": "region_outage", "lat_deg": 1.0}, ["needs lon_deg, radius_km"]),
    ({"kind": "plane_outage", "constellation": "eq"}, ["needs plane"]),
    ({"kind": "node_down", "node": "west", "colour": "red"}, ["colour", "Extra inputs"]),
    ({"kind": "node_down", "node": "west", "for_s": -1}, ["for_s", "greater than 0"]),
    ({"kind": "link_degrade", "a": "west", "extra_loss": 2}, ["extra_loss"]),
    ({}, ["kind", "Field required"]),
])
def test_fault_from_command_refuses_with_a_reason(mixed: Topology, command: dict[str, Any],
                                                  reasons: list[str]) -> None:
    with pytest.raises(CommandError) as err:
        fault_from_command({"cmd": "fault", **command}, mixed.scenario, "live1", 0.0)
    message = str(err.value)
    assert message.startswith("invalid fault: ")
    for reason in reasons:
        assert reason in message


def test_fault_from_command_starts_now_or_at_at_s(mixed: Topology) -> None:
    now = fault_from_command({"cmd": "fault", "kind": "node_down", "node": "west", "for_s": 4},
                             mixed.scenario, "live1", 12.5)
    assert (now.id, now.start_s, now.end_s, now.origin) == ("live1", 12.5, 16.5, "live")
    later = fault_from_command({"cmd": "fault", "kind": "node_down", "node": "west",
                                "at_s": 20, "id": "mine"}, mixed.scenario, "live2", 12.5)
    assert (later.id, later.start_s, later.end_s) == ("mine", 20.0, None)


# --- the controller's control topic (in-memory transport) --------------------------------------

async def control_replies(topology: Topology, payloads: list[bytes], wall: Any = None
                          ) -> tuple[Controller, list[dict[str, Any]]]:
    """Feed payloads to a controller's control handler; collect what it answers on control/error."""
    bus = MemoryBroker()
    topics = Topics("unit")
    async with MemoryTransport(bus, "controller") as transport, \
            MemoryTransport(bus, "client") as client:
        await client.subscribe(topics.control_error)
        controller = Controller(topology, transport, topics, duration_s=60.0, speed=1.0,
                                out_dir=None, wall=wall)
        for payload in payloads:
            controller.handle_control(payload)
        replies: list[dict[str, Any]] = []
        if controller.control_errors:
            async with asyncio.timeout(1.0):
                async for batch in client.batches():
                    replies += [json.loads(m.payload) for m in batch]
                    if len(replies) >= controller.control_errors:
                        break
    return controller, replies


async def test_controller_answers_and_counts_bad_commands(mixed: Topology) -> None:
    controller, replies = await control_replies(mixed, [
        b"nonsense",
        b'{"cmd": "fault", "kind": "link_down"}',
        b'{"cmd": "fault", "kind": "node_down", "node": "west", "id": "w"}',
        b'{"cmd": "fault", "kind": "node_down", "node": "east", "id": "w"}',
        b'{"cmd": "fault", "kind": "station_outage", "station": "atlantis"}',
        b'{"cmd": "fault", "kind": "link_down", "a": "west", "b": "mars"}',
        b'{"cmd": "fault", "kind": "plane_outage", "constellation": "eq", "plane": 9}',
        b'{"cmd": "clear", "id": "nope"}',
        b'{"cmd": "clear", "id": "w"}',
    ])
    assert controller.control_errors == 7
    assert [r["errors_so_far"] for r in replies] == list(range(1, 8))
    assert [r["error"].removeprefix("control: ").split(":")[0] for r in replies] == [
        "not JSON", "invalid fault", "fault id 'w' is already in use", "station_outage",
        "link_down", "plane_outage", "no active fault with id 'nope'; active"]
    assert "matches no node" in replies[3]["error"]
    assert replies[0]["command"] == "nonsense"
    # The good command went in (origin live) and was cleared at t = 0, its end now.
    assert [(f.id, f.origin, f.end_s) for f in controller.faults] == [("w", "live", 0.0)]


async def test_controller_answers_a_withdrawal_of_an_unknown_operator(mixed: Topology) -> None:
    controller, replies = await control_replies(
        mixed, [b'{"cmd": "fault", "kind": "operator_withdrawal", "operator": "nobody"}'])
    assert controller.control_errors == 1
    assert "nobody" in replies[0]["error"]



async def test_a_flood_of_fault_commands_is_refused_past_the_rate_limit(mixed: Topology) -> None:
    """7,700 link_degrade commands once stretched a 30 s run to 6.5 minutes: now a burst past
    the limit is answered on control/error and never applied."""
    from orbitmesh.protocol.clock import FakeWallClock
    from orbitmesh.run.control_commands import CONTROL_BURST

    flood = [json.dumps({"cmd": "fault", "kind": "node_down", "node": "west", "for_s": 1,
                         "id": f"f{i}"}).encode() for i in range(CONTROL_BURST + 50)]
    controller, replies = await control_replies(mixed, flood, wall=FakeWallClock())
    applied = [f for f in controller.faults if f.origin == "live"]
    # The clock does not move in this test: the burst is all it gets.
    assert len(applied) == CONTROL_BURST
    assert controller.control_errors == 50
    assert all("too many control commands" in r["error"] for r in replies)


async def test_workers_that_do_not_exist_are_refused(mixed: Topology) -> None:
    bus = MemoryBroker()
    async with MemoryTransport(bus, "controller") as transport:
        controller = Controller(mixed, transport, Topics("unit"), duration_s=60.0, speed=1.0,
                                out_dir=None, workers=2)
        controller.handle_control(b'{"cmd": "fault", "kind": "container_kill", "worker": 99}')
        controller.handle_control(b'{"cmd": "fault", "kind": "worker_kill", "worker": 1}')
    assert controller.control_errors == 1
    assert [f.spec.worker for f in controller.faults if f.origin == "live"] == [1]
