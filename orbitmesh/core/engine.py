"""One tick of the core pipeline: propagate -> links -> GSL assignment -> routes -> diff.

:class:`TickEngine` is what the controller, ``orbitmesh path`` and the geometry benchmark drive.
It is pure computation (no I/O); call :meth:`TickEngine.step` with increasing scenario times.

What a tick costs (``bench/geometry.py``; CPU time, least of 150 ticks on a shared 2-core machine,
2026-12-02): shell 1 + 100 stations ~6.5 ms, of which SGP4 with the frame rotation ~1.1 ms (the
floor), links ~0.8 ms and routes ~4 ms; Gen1 + 1,000 stations ~13 ms (SGP4 ~2.5, links ~2.7,
routes ~7). Only the routes run on two threads (:data:`orbitmesh.core._sssp.THREADS`), the rest
on the caller's. In a live run that caller is the controller's tick thread, beside the worker
processes on the same two cores: for the ~2 ms (shell 1) or ~3.5 ms (Gen1) a tick's routes take
on two threads both cores are the tick's, and a worker's hop due then can be that much late when
no core is idle. At one tick a second that is ~0.3 % of two cores for shell 1 and ~0.7 % for
Gen1; a speed-10 run pays it ten times as often. The route slices are taken in turn, so when the
workers hold one core the tick goes on with the other instead of waiting for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from orbitmesh.core.faults import Fault, FaultOverlay, Overlay
from orbitmesh.core.links import LinkDiff, LinkEngine, LinkState, LinkTracker
from orbitmesh.core.route_trees import _spare_hints
from orbitmesh.core.routing import (
    LinkGraph,
    RouteTrees,
    RoutingPolicy,
    compute_routes,
    get_strategy,
    route_changes,
)
from orbitmesh.core.topology import IntArray, Topology


class LinkSource(Protocol):
    """Where link states come from: geometry (LinkEngine) or a recorded timeline."""

    last_handovers: int

    def state_at(self, t_s: float) -> LinkState:
        """The live links at ``t_s`` (called with increasing times)."""
        ...


def _first_fault(overlay: Overlay | None, faults: Sequence[Fault]) -> str | None:
    if overlay is None:
        return None
    if faults:
        return faults[0].id
    return next(iter(overlay.down_nodes.values()), None)


def compile_kernels() -> None:
    """Compile (or load from numba's cache) every kernel a tick uses, on toy inputs.

    The first tick otherwise pays for it: tens of seconds on a busy 2-core machine without a
    cache. Images call this at build time, so their controllers start warm.
    """
    from orbitmesh.core import _sssp, links

    if not (_sssp.HAVE_NUMBA and links.HAVE_NUMBA):
        return
    indptr, indices = np.array([0, 1, 2], np.int32), np.array([1, 0], np.int32)
    source = np.array([0])
    pred, _ = _sssp.shortest_path_trees(indptr, indices, np.ones(2), source, backend="numba")
    _sssp.shortest_path_trees(indptr, indices, np.ones(2), source, backend="numba", hints=pred)
    from orbitmesh.core._repair_kernel import arc_map

    graph_indptr, graph_indices, _ = LinkGraph(2, np.array([0]), np.array([1]),
                                               np.ones(1))._csr_arrays()
    arcs = np.zeros((1, 2), np.int32)
    _sssp.shortest_path_trees(indptr, indices, np.ones(2), source, backend="numba", hints=pred,
                              arcs=arcs, old_arc=arc_map(graph_indptr, graph_indices,
                                                         graph_indptr, graph_indices))
    one, pos = np.zeros(1, np.int64), np.array([[7000.0, 0.0, 0.0]])
    kernel = links._compiled()
    assert kernel is not None
    kernel.visible_pairs(pos, np.ones(1, bool), pos * 0.9, pos / 7000.0, np.ones(1, bool),
                         np.zeros(1), np.full(1, np.inf), 2000.0, np.ones((1, 1), bool), one,
                         False)
    kernel.in_previous(one, one, one, one, 1, 1)
    from orbitmesh.core import _gsl_near

    ok = np.ones(1, bool)
    seg, sats = _gsl_near.near_lists(pos, ok, pos * 0.9, 2000.0)
    _gsl_near.max_shift_km(pos, ok, pos, ok)
    _gsl_near.slant_km(pos, pos * 0.9, one, one)
    _gsl_near.visible_near(pos, ok, seg, sats, pos * 0.9, pos / 7000.0, ok, np.zeros(1),
                           np.full(1, np.inf), 2000.0, np.ones((1, 1), bool), one, False)
    from orbitmesh.core._csr_kernel import key_order

    LinkGraph(2, one, one + 1, np.ones(1))._layout  # noqa: B018 - the graph's (read-only) arrays
    key_order(one, one, 1)
    from orbitmesh.core._diff_kernel import diff_sorted

    diff_sorted(one, np.zeros(1), one, np.zeros(1), 1e-3)
    from orbitmesh.core._isl_kernel import live_isls

    live_isls(np.vstack([pos, -pos]), np.array([[0, 1]], np.int64), np.inf, 6378.0)
    links.assign_gsl(one, one, np.ones(1), np.zeros(1, bool), np.ones(1, np.int64),
                     np.ones(1, np.int64))


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
    raw_state: LinkState | None = None  # before faults
    blocked: dict[str | None, NDArray[np.bool_]] = field(default_factory=dict)
    """Per routing table, (D, N): unreachable only because of the faults in force."""
    blame: str | None = None
    """The fault id that ``blocked`` entries are charged to (the first graph fault in force)."""


class TickEngine:
    """Propagates, builds links and routes toward ``destinations`` tick after tick.

    ``destinations`` default to every ground node (``Topology.ground_endpoints``); the
    controller passes the set a run can address (:mod:`orbitmesh.core.destinations`), whose
    tables are the same rows of the full computation at a fraction of the work.
    """

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
        """The routing graph of a link state (``transit: false`` ground nodes relay nothing)."""
        return LinkGraph(self.topology.n_nodes, state.a, state.b, state.delay_s,
                         self.topology.transit)

    def step(self, t_s: float, faults: Sequence[Fault] = (),
             extra_down: dict[int, str] | None = None) -> Tick:
        """Compute tick ``t_s`` (seconds after the epoch); call with increasing times.

        ``faults`` in force at ``t_s`` (and nodes in ``extra_down``) are applied before routing;
        failed nodes are also kept out of GSL assignment, so stations turn to healthy satellites.
        """
        failed = self.overlay.failed_nodes(faults, extra_down) if faults or extra_down else None
        if failed is not None and isinstance(self.links, LinkEngine):
            raw = self.links.state_at(t_s, failed=failed)
        else:
            raw = self.links.state_at(t_s)
        return self.finish(raw, faults, extra_down)

    def finish(self, raw: LinkState, faults: Sequence[Fault] = (),
               extra_down: dict[int, str] | None = None) -> Tick:
        """Apply faults to a raw link state, route, and diff (``refresh`` reuses a raw state)."""
        state, overlay = raw, None
        if faults or extra_down:
            overlay = self.overlay.apply(raw, faults, extra_down)
            state = overlay.state
        diff = self.tracker.update(state)
        twin = overlay is not None and bool(overlay.cut or overlay.down_nodes)
        # A repair takes the hints it rewrites; the fault-free twin below gets copies.
        spare = {k: _spare_hints(v) for k, v in self._previous.items()} if twin else {}
        # The last tick's trees seed this tick's: same answer, a fraction of the work.
        routes = compute_routes(self.graph(state), self.destinations, self.strategy,
                                self.policies, self.topology.operator, self._previous)
        blocked: dict[str | None, NDArray[np.bool_]] = {}
        if twin:
            # Where a route exists without the faults but not with them, the fault is to blame.
            intact = compute_routes(self.graph(raw), self.destinations, self.strategy,
                                    self.policies, self.topology.operator, spare)
            blocked = {k: (intact[k].next_hop >= 0) & (v.next_hop < 0)
                       for k, v in routes.items()}
        changes = 0
        if self._previous:
            changes = sum(route_changes(self._previous.get(k), v) for k, v in routes.items())
            self.route_changes_total += changes
        self._previous = routes
        blame = _first_fault(overlay, faults)
        return Tick(raw.t_s, state, diff, routes, self.links.last_handovers, changes, overlay,
                    raw, blocked, blame)

    def warm_up(self, until_s: float) -> None:
        """Replay GSL history up to (not including) ``until_s`` so sticky handover is right."""
        tick = self.topology.scenario.tick_s
        t = max(0.0, until_s - WARM_UP_S)
        t = tick * np.floor(t / tick)
        while t < until_s - 1e-9:
            self.links.state_at(float(t))
            t += tick
