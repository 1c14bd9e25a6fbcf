"""One tick of the core pipeline: propagate -> links -> GSL assignment -> routes -> diff.

:class:`TickEngine` is what the controller, ``orbitmesh path`` and the geometry benchmark drive.
It is pure computation (no I/O); call :meth:`TickEngine.step` with increasing scenario times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from orbitmesh.faults import Fault, FaultOverlay, Overlay
from orbitmesh.links import LinkDiff, LinkEngine, LinkState, LinkTracker
from orbitmesh.routing import (
    LinkGraph,
    RouteTrees,
    RoutingPolicy,
    compute_routes,
    get_strategy,
    route_changes,
)
from orbitmesh.topology import IntArray, Topology


class LinkSource(Protocol):
    """Where link states come from: geometry (LinkEngine) or a recorded timeline."""

    last_handovers: int

    def state_at(self, t_s: float) -> LinkState:
        """The live links at ``t_s`` (called with increasing times)."""
        ...


WARM_UP_S = 900.0
"""GSL history replayed before a requested time: longer than any LEO pass above a mask."""


@dataclass(frozen=True)
class Tick:
    """Everything the core computes for one scenario time."""

    t_s: float
    state: LinkState
    diff: LinkDiff
    routes: dict[str | None, RouteTrees]  # None = unrestricted; else policy name
    handovers: int
    route_changes: int
    overlay: Overlay | None = None


class TickEngine:
    """Propagates, builds links and routes toward ``destinations`` tick after tick."""

    def __init__(self, topology: Topology, destinations: Sequence[int] | IntArray | None = None,
                 policies: Sequence[str] | None = None,
                 link_source: LinkSource | None = None) -> None:
        self.topology = topology
        self.links: LinkSource = link_source or LinkEngine(topology)
        scenario = topology.scenario
        self.tracker = LinkTracker(scenario.links.delay_change_threshold_ms / 1000.0)
        self.strategy = get_strategy(scenario.routing.strategy)
        self.destinations = (topology.ground_endpoints if destinations is None
                             else np.asarray(destinations, dtype=np.int64))
        op_index = {name: i for i, name in enumerate(topology.operators)}
        names = scenario.routing.policies if policies is None else policies
        self.policies = {
            name: RoutingPolicy(name, frozenset(op_index[o] for o in
                                                scenario.routing.policies[name].allowed_operators))
            for name in names}
        self.overlay = FaultOverlay(topology)
        self._previous: dict[str | None, RouteTrees] = {}
        self.route_changes_total = 0

    def graph(self, state: LinkState) -> LinkGraph:
        """The routing graph of a link state."""
        return LinkGraph(self.topology.n_nodes, state.a, state.b, state.delay_s)

    def step(self, t_s: float, faults: Sequence[Fault] = (),
             extra_down: dict[int, str] | None = None) -> Tick:
        """Compute tick ``t_s`` (seconds after the epoch); call with increasing times.

        ``faults`` in force at ``t_s`` (and nodes in ``extra_down``) are applied before routing.
        """
        state = self.links.state_at(t_s)
        overlay = None
        if faults or extra_down:
            overlay = self.overlay.apply(state, faults, extra_down)
            state = overlay.state
        diff = self.tracker.update(state)
        routes = compute_routes(self.graph(state), self.destinations, self.strategy,
                                self.policies, self.topology.operator)
        changes = 0
        if self._previous:
            changes = sum(route_changes(self._previous.get(k), v) for k, v in routes.items())
            self.route_changes_total += changes
        self._previous = routes
        return Tick(t_s, state, diff, routes, self.links.last_handovers, changes, overlay)

    def warm_up(self, until_s: float) -> None:
        """Replay GSL history up to (not including) ``until_s`` so sticky handover is right."""
        tick = self.topology.scenario.tick_s
        t = max(0.0, until_s - WARM_UP_S)
        t = tick * np.floor(t / tick)
        while t < until_s - 1e-9:
            self.links.state_at(float(t))
            t += tick
