"""Per-flow figures for the worker heartbeat (the live map and /metrics read them).

Counts are cumulative since the worker started, so that a reader that missed heartbeats (or
joined late) still sums the workers' latest figures into the run's totals.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nodes.stats import FlowStats
from orbitmesh.core.histogram import LOW, RATIO, Histogram
from orbitmesh.protocol.messages import LATENCY_BOUNDS_MS, FlowProgress

_BOUNDS = np.asarray(LATENCY_BOUNDS_MS)


def latency_le(hist: Histogram) -> tuple[tuple[int, ...], float]:
    """Samples <= each of LATENCY_BOUNDS_MS, and their sum (ms).

    Exact while the histogram holds its samples; once folded, a bucket counts below a bound when
    its upper edge is (so within the histogram's 2 % bucket width of the bound).
    """
    if hist.exact:
        values = np.sort(np.maximum(np.asarray(hist.samples(), dtype=np.float64), 0.0))
        counts = np.searchsorted(values, _BOUNDS, side="right")
        return tuple(int(c) for c in counts), float(values.sum())
    body = hist.to_dict()  # folds pending samples into the buckets
    index = np.array([int(k) for k in body["buckets"]], dtype=np.int64)
    n = np.array(list(body["buckets"].values()), dtype=np.int64)
    upper = np.where(index == 0, LOW, LOW * RATIO ** index.astype(np.float64))
    counts = (n[None, :] * (upper[None, :] <= _BOUNDS[:, None])).sum(axis=1)
    return tuple(int(c) for c in counts), float(body["sum"])


def flow_progress(flows: Mapping[int, FlowStats]) -> tuple[FlowProgress, ...]:
    """Every flow's cumulative counters, for one heartbeat."""
    out = []
    for flow, fs in sorted(flows.items()):
        le, total_ms = latency_le(fs.latency_ms)
        out.append(FlowProgress(flow, fs.offered, fs.delivered, tuple(sorted(fs.dropped.items())),
                                total_ms, le))
    return tuple(out)
