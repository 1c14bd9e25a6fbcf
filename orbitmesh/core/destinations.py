"""Which nodes a run's frames can be addressed to, so a tick grows route trees only toward them.

A tick's routing work grows with destinations x nodes (:mod:`orbitmesh.core.routing`); routing
toward every ground node (105 trees on Starlink shell 1 + 100 stations) when a run addresses five
of them is CPU the workers on the same cores do not get. :func:`addressable_destinations` is the
set the controller routes toward; ``TickEngine`` without it keeps routing toward every ground
node (``Topology.ground_endpoints``), as ``orbitmesh path`` and ``bench/geometry.py`` do.

Satellites are never roots: every frame to a satellite is source-routed along the tree rooted
at its *sender* (a ground node), so the sender is what must be in the set. A frame that reaches
a worker for a ground node outside the set is dropped as :data:`UNROUTED_DESTINATION`, never as
an ordinary ``no_route``, and the run exits 1: the set was wrong for the run, not the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from orbitmesh.core.scenario import Scenario
from orbitmesh.core.topology import IntArray, Topology

UNROUTED_DESTINATION = "unrouted_destination"
"""Drop reason: no table toward this ground node because the run's destination set left it out
(a frame no source the scenario declares could make, e.g. injected on ``node/<id>/in``)."""


def addressable_destinations(scenario: Scenario, topology: Topology) -> IntArray:
    """Sorted node indices a run's frames can be addressed to (each a route tree's root).

    Every source of a frame's destination in a run, and what it puts in the set:

    * telemetry goes to the ops centre operating the satellite's constellation, telecommands
      are source-routed along the tree rooted at the ops centre that sends them, their acks go
      back to that centre, and an MCS bridge (``ops_centres[].mcs``) only feeds TM to its centre
      and TCs out of it: **every ops centre** (a handful; one that operates nothing costs a tree
      and keeps a stray frame to it routed);
    * scenario flows, including ``replay`` flows (traces and imported CSV/pcap traffic replayed
      with ``orbitmesh replay`` become scenario flows; each replayed frame uses its flow's two
      ends): **both ground ends of every flow** (the destination's tree routes it; a satellite
      destination is source-routed from the source's tree);
    * IP endpoints (``endpoints.ip`` and ``run --endpoints``, already in ``scenario``): a program
      can reach only the addresses of endpoint nodes (any other address of the prefix is answered
      with ICMP unreachable at the entry node, without a frame; ICMP errors are written back
      into the sender's own TUN), echo replies and TCP return to the sender, itself an endpoint,
      and packets to a satellite endpoint are source-routed from the sender's tree: **every
      ground IP endpoint node**;
    * UDP pipes (``endpoints.udp``) carry datagrams ``node -> to`` and the replies back ``to ->
      node``: **both ground ends of every pipe**;
    * MQTT endpoints (``endpoints.mqtt``): the node's application injects on ``node/<id>/in``
      frames that may name any node: **every ground node** when the scenario has one;
    * live control commands (``orbitmesh fault``: fault, clear, list) and fault plans make no
      frames, and a ``worker_kill`` restart replays the retained state: nothing.

    Not covered: any MQTT client with the operator credential may still inject frames into any
    node's inbox (docs/topics.md) naming a ground node no source above names. Those are dropped
    as :data:`UNROUTED_DESTINATION` (counted per flow, and the run exits 1), not as ``no_route``.
    """
    index = topology.index
    ground = topology.n_satellites
    if scenario.endpoints.mqtt:
        return np.array(topology.ground_endpoints, dtype=np.int64)
    names: set[str] = {o.name for o in scenario.ops_centres}
    names.update(n for f in scenario.traffic for n in (f.source, f.destination))
    names.update(e.node for e in scenario.endpoints.ip)
    names.update(n for p in scenario.endpoints.udp for n in (p.node, p.to))
    nodes = {index[n] for n in names if n in index}
    return np.array(sorted(n for n in nodes if n >= ground), dtype=np.int64)


def route_destinations(topology: Topology, chosen: Literal["used", "all"] | Sequence[int]
                       ) -> IntArray:
    """The set a run routes toward: ``used`` (:func:`addressable_destinations` of
    ``topology.scenario``), ``all`` (every ground node, as before) or given node indices."""
    if isinstance(chosen, str):
        if chosen == "all":
            return np.array(topology.ground_endpoints, dtype=np.int64)
        if chosen != "used":
            raise ValueError(f"destinations {chosen!r}: expected 'used', 'all' or node indices")
        return addressable_destinations(topology.scenario, topology)
    given = np.asarray(chosen, dtype=np.int64).reshape(-1)
    check_destinations(given, topology)
    return given


def check_destinations(destinations: IntArray, topology: Topology) -> None:
    """ValueError unless ``destinations`` are distinct ground nodes of ``topology``."""
    if destinations.size and (int(destinations.min()) < topology.n_satellites
                              or int(destinations.max()) >= topology.n_nodes):
        raise ValueError(f"route destinations must be ground nodes "
                         f"{topology.n_satellites}..{topology.n_nodes - 1}")
    if np.unique(destinations).size != destinations.size:
        raise ValueError("route destinations repeat a node")
