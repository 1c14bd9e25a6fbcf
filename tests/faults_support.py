"""Shared helpers and fixtures of the fault tests (tests/test_faults.py, test_fault_plans.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orbitmesh.core.faults import (
    Fault,
    Overlay,
    place_fault,
)
from orbitmesh.core.links import LinkState
from orbitmesh.core.scenario import FaultSpec, load_scenario
from orbitmesh.core.topology import Topology, build_topology

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "faults"
ONE_NANOSECOND_S = 1e-9
ONE_MICROSECOND_S = 1e-6
ONE_KILOMETRE = 1.0
MEAN_EARTH_RADIUS_KM = 6371.0



# --- helpers ------------------------------------------------------------------------------------

def topology_of(name: str) -> Topology:
    """Topology of ``tests/data/faults/<name>``."""
    return build_topology(load_scenario(DATA / name))


def fault(topology: Topology, fault_id: str = "x", **spec: Any) -> Fault:
    """A fault in force from t = 0 on."""
    return place_fault(FaultSpec(**spec), topology.scenario, fault_id, "scheduled")


def ids(topology: Topology, nodes: Any) -> set[str]:
    """Node ids of indices, or of a mask."""
    nodes = np.asarray(nodes)
    index = np.flatnonzero(nodes) if nodes.dtype == bool else nodes
    return {topology.node_ids[int(i)] for i in index}


def links(topology: Topology, state: LinkState, kind: int | None = None) -> set[tuple[str, str]]:
    """Links of a state as sorted pairs of node ids (optionally of one class)."""
    keep = np.ones(len(state), dtype=bool) if kind is None else state.kind == kind
    return {tuple(sorted((topology.node_ids[a], topology.node_ids[b])))
            for a, b in zip(state.a[keep].tolist(), state.b[keep].tolist(), strict=True)}


def cut_links(topology: Topology, overlay: Overlay) -> dict[tuple[str, str], str]:
    """What the overlay cut: sorted id pair -> fault id."""
    return {tuple(sorted((topology.node_ids[a], topology.node_ids[b]))): f  # type: ignore[misc]
            for a, b, f in overlay.cut}


def great_circle_km(lat1_deg: float, lon1_deg: float, lat2_deg: float, lon2_deg: float) -> float:
    """Central angle from the dot product of unit vectors (independent of the haversine)."""
    def unit(lat: float, lon: float) -> np.ndarray:
        la, lo = np.radians(lat), np.radians(lon)
        return np.array([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])
    cosine = float(np.clip(unit(lat1_deg, lon1_deg) @ unit(lat2_deg, lon2_deg), -1.0, 1.0))
    return MEAN_EARTH_RADIUS_KM * float(np.arccos(cosine))
