"""Which worker hosts which node.

Satellites are split into contiguous blocks (they are numbered plane-major, so a block holds
whole planes and most ISL hops stay inside one process); ground stations and operations centres
are dealt round-robin. Every process computes the same placement from the topology alone.
"""

from __future__ import annotations

import numpy as np

from orbitmesh.errors import RunError
from orbitmesh.topology import IntArray, Topology


def place(topology: Topology, workers: int) -> IntArray:
    """Worker index of every node ``(N,)``."""
    if workers < 1:
        raise RunError(f"need at least one worker, got {workers}")
    s = topology.n_satellites
    owner = np.empty(topology.n_nodes, dtype=np.int64)
    owner[:s] = np.arange(s) * workers // max(s, 1)
    owner[s:] = np.arange(topology.n_nodes - s) % workers
    return owner
