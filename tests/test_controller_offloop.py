"""The controller computes ticks off its event loop: the loop publishes and takes control commands
while a tick computes, and a command that arrives meanwhile still reaches that tick.

A slow tick is made by holding the controller's job on a gate that only this test's own task on
the loop can open: inline, that task could never run and the gate would open by its timeout, so
every test here fails on the old controller instead of hanging. Nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import Topology, build_topology
from orbitmesh.protocol.clock import FakeWallClock
from orbitmesh.protocol.state import TickSnapshot, decode_state
from orbitmesh.protocol.transport import MemoryBroker, MemoryTransport
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.controller import Controller

SCENARIO = Path(__file__).parent / "data" / "faults" / "detour.yaml"
SPEED = 20.0
"""Fast enough for a short test; the gates below, not the clock, decide what happens when."""
GATE_TIMEOUT_S = 60.0
"""How long a held job waits before opening by itself (only when the loop was blocked)."""
PERTH_DOWN = (b'{"cmd": "fault", "kind": "node_down", "node": "perth", "for_s": 30, '
              b'"id": "perth-down"}')


@pytest.fixture(scope="module")
def topology() -> Topology:
    return build_topology(load_scenario(SCENARIO))


class Gate:
    """Holds a job on the controller's thread until the test opens it (or the timeout does)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()
        self.by_timeout = False
        self.threads: list[str] = []

    def hold(self) -> None:
        self.threads.append(threading.current_thread().name)
        self.reached.set()
        self.by_timeout = not self.opened.wait(GATE_TIMEOUT_S)


async def until(condition: Callable[[], bool], timeout_s: float = 180.0) -> None:
    """Poll ``condition`` on the loop (the loop must be free for this to return); the timeout
    only ends a failing test, so it is generous."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def run_with(topology: Topology, rig: Callable[[Controller], None],
                   during: Callable[[Controller, list[TickSnapshot]], Any]) -> tuple[
                       Controller, list[TickSnapshot]]:
    """A short real-time run on the memory broker; ``during`` drives it while it ticks."""
    broker, topics = MemoryBroker(), Topics("offloop")
    states: list[TickSnapshot] = []
    async with MemoryTransport(broker, "controller") as control, \
            MemoryTransport(broker, "probe") as probe, asyncio.TaskGroup() as tg:
        await probe.subscribe(topics.state)
        controller = Controller(topology, control, topics, duration_s=6.0, speed=SPEED,
                                out_dir=None)
        rig(controller)

        async def receive() -> None:
            async for batch in probe.batches():
                states.extend(decode_state(m.payload) for m in batch)

        receiver = tg.create_task(receive(), name="test.receive")
        ticking = tg.create_task(controller.run(), name="test.controller")
        await during(controller, states)
        await ticking
        await asyncio.sleep(0)
        receiver.cancel()
        controller.close()
    return controller, states


def last_by_tick(states: list[TickSnapshot]) -> dict[float, TickSnapshot]:
    """The state each tick ended with (a republished tick replaces what went out before)."""
    return {s.t_s: s for s in states}


def hold_step_at(controller: Controller, t_s: float, gate: Gate) -> None:
    """The step job for ``t_s`` waits at ``gate``."""
    step = controller._step_job

    def held(at_s: float, *args: Any) -> Any:
        if at_s == t_s:
            gate.hold()
        return step(at_s, *args)

    controller._step_job = held  # type: ignore[method-assign, assignment]


def test_real_runs_compute_off_the_loop_and_injected_clocks_inline(topology: Topology) -> None:
    transport = MemoryTransport(MemoryBroker(), "c")
    real = Controller(topology, transport, Topics("x"), duration_s=1.0, speed=1.0, out_dir=None)
    fake = Controller(topology, transport, Topics("x"), duration_s=1.0, speed=1.0, out_dir=None,
                      wall=FakeWallClock())
    assert (real.off_loop, fake.off_loop) == (True, False)


async def test_the_loop_publishes_and_takes_commands_while_a_tick_computes(
        topology: Topology) -> None:
    gate = Gate()
    perth = topology.index["perth"]

    async def during(controller: Controller, states: list[TickSnapshot]) -> None:
        # Tick 2 computes (held); tick 1, published before it, reaches the probe meanwhile.
        await until(lambda: gate.reached.is_set() and any(s.t_s == 1.0 for s in states))
        assert max(s.t_s for s in states) == 1.0
        # A live fault while the tick computes: answered at once, applied when it is done.
        controller.handle_control(PERTH_DOWN)
        assert controller.control_errors == 0 and controller.faults[-1].id == "perth-down"
        assert controller.upcoming is None  # tick 2 is still computing, without the fault
        gate.opened.set()
        await until(lambda: controller.upcoming is not None
                    and controller.upcoming.tick.overlay is not None)

    controller, states = await run_with(
        topology, lambda c: hold_step_at(c, 2.0, gate), during)
    assert not gate.by_timeout, "the loop was blocked while the tick computed"
    assert gate.threads == ["orbitmesh-tick_0"]
    # The fault reached the tick computing when it came (re-applied once it was done), the
    # states published already (republished with it), and every tick after.
    down_from = min(s.t_s for s in states if perth in s.down)
    assert down_from <= 1.0
    final = last_by_tick(states)
    assert set(final) >= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    assert all(perth in s.down for t_s, s in final.items() if t_s >= 2.0)
    assert controller.seq == max(s.seq for s in states)


async def test_a_slow_refresh_never_holds_back_the_next_publication(topology: Topology) -> None:
    gate = Gate()
    perth = topology.index["perth"]
    held_ticks: list[float] = []

    def rig(controller: Controller) -> None:
        loop = asyncio.get_running_loop()
        step, refresh = controller._step_job, controller._refresh_job
        sent = threading.Event()

        def command() -> None:
            controller.handle_control(PERTH_DOWN)
            sent.set()

        def step_then_command(t_s: float, *args: Any) -> Any:
            if t_s == 3.0:  # its inputs are read: the fault comes while tick 3 computes
                loop.call_soon_threadsafe(command)
                assert sent.wait(GATE_TIMEOUT_S)
            return step(t_s, *args)

        def held(items: list[Any], *args: Any) -> Any:
            held_ticks.extend(p.tick.t_s for p, _at_s in items)
            gate.hold()
            return refresh(items, *args)

        controller._step_job = step_then_command  # type: ignore[method-assign, assignment]
        controller._refresh_job = held  # type: ignore[method-assign, assignment]

    async def during(controller: Controller, states: list[TickSnapshot]) -> None:
        # The refresh starts right after tick 3 is computed (before tick 4 can be) and is held;
        # tick 3, computed without the fault, goes out on time all the same.
        await until(lambda: gate.reached.is_set() and any(s.t_s == 3.0 for s in states))
        assert held_ticks[-1] == 3.0
        assert all(perth not in s.down for s in states)
        gate.opened.set()

    controller, states = await run_with(topology, rig, during)
    assert not gate.by_timeout, "the loop was blocked while the faults were re-applied"
    threes = [s for s in states if s.t_s == 3.0]
    # Tick 3 went out without the fault, then again with it once the refresh was done (it had
    # moved on from 'upcoming' to 'published' meanwhile); tick 2, in force by then, went out
    # again with it; tick 1, which the refresh took up while it was in force, is out of force
    # by the time it is done, so it is not republished.
    assert (perth in threes[0].down, perth in threes[-1].down) == (False, True)
    assert all(perth in s.down for t_s, s in last_by_tick(states).items() if t_s >= 2.0)
    assert all(perth not in s.down for s in states if s.t_s < 2.0)
    assert [s.seq for s in states] == sorted(s.seq for s in states)
    assert controller.seq == states[-1].seq


async def test_inline_computes_on_the_loop_thread(topology: Topology) -> None:
    """The path for clocks that cannot time a thread: the same jobs, on the loop's own thread."""
    gate = Gate()
    gate.opened.set()  # inline, a held job would hold the loop: let it through

    def rig(controller: Controller) -> None:
        controller.off_loop = controller._runner.off_loop = False
        hold_step_at(controller, 2.0, gate)

    async def during(controller: Controller, states: list[TickSnapshot]) -> None:
        await until(gate.reached.is_set)

    _controller, states = await run_with(topology, rig, during)
    assert gate.threads == [threading.current_thread().name]
    assert set(last_by_tick(states)) >= {0.0, 1.0, 2.0, 3.0}
