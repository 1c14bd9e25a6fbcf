"""Which worker hosts which node.

Placement modes (every process computes the same placement from the topology alone):

* ``blocks`` (default for local processes): satellites split into contiguous blocks, one per
  worker (they are numbered plane-major, so a block holds whole planes and most ISL hops stay
  inside one process); ground stations and operations centres dealt round-robin;
* ``planes`` (default for containers): one worker per orbital plane, then one worker for all
  ground stations and operations centres;
* ``chunks:N``: consecutive runs of N nodes (``--nodes-per-container N``).
"""

from __future__ import annotations

import numpy as np

from orbitmesh.core.topology import IntArray, Topology
from orbitmesh.errors import RunError


def place(topology: Topology, workers: int, mode: str = "blocks") -> IntArray:
    """Worker index of every node ``(N,)``."""
    s = topology.n_satellites
    owner = np.empty(topology.n_nodes, dtype=np.int64)
    if mode == "planes":
        planes = np.concatenate([shell.plane + sum(x.planes for x in topology.shells[:i])
                                 for i, shell in enumerate(topology.shells)]).astype(np.int64)
        owner[:s] = planes
        owner[s:] = int(planes.max(initial=-1)) + 1
        return owner
    if mode.startswith("chunks:"):
        try:
            per = int(mode.split(":", 1)[1])
        except ValueError:
            per = 0
        if per < 1:
            raise RunError(f"placement {mode!r}: expected chunks:N with N >= 1")
        return np.arange(topology.n_nodes, dtype=np.int64) // per
    if mode != "blocks":
        raise RunError(f"unknown placement {mode!r}; expected blocks, planes or chunks:N")
    if workers < 1:
        raise RunError(f"need at least one worker, got {workers}")
    owner[:s] = np.arange(s) * workers // max(s, 1)
    owner[s:] = np.arange(topology.n_nodes - s) % workers
    return owner


def worker_count(topology: Topology, mode: str, workers: int) -> int:
    """How many workers a placement mode needs (``blocks`` takes ``workers`` as given)."""
    if mode == "blocks":
        return workers
    return int(place(topology, workers, mode).max()) + 1
