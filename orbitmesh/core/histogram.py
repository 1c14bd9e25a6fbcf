"""A streaming histogram: exact count, sum, min and max; percentiles exact up to a few thousand
samples and within 1 % after that; memory that does not grow with the run.

Workers keep one per figure (latency per flow, hop lateness, telemetry age, ...) instead of every
sample, so that an hour of shell-1 traffic holds the same memory as a minute. Samples are kept
as they are until :data:`EXACT_SAMPLES`; from then on they are folded into logarithmic buckets
``[LOW * RATIO**(i-1), LOW * RATIO**i)`` (bucket 0 holds everything below ``LOW``), and a
percentile is the geometric middle of its bucket: at most ``(RATIO - 1) / 2`` (1 %) off, and
never outside the exact min/max. Values below zero are counted as zero (they do not occur:
lateness, latency and age are never negative).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

LOW = 1e-3
"""Smallest resolved value (1 µs when the unit is ms)."""
RATIO = 1.02
BUCKETS = 1400
"""Enough for values up to ``LOW * RATIO**1400`` (~1e9 with the defaults)."""
EXACT_SAMPLES = 4096
_LOG_RATIO = math.log(RATIO)


class Histogram:
    """Streaming summary of non-negative samples (see the module docstring)."""

    __slots__ = ("_pending", "count", "counts", "max", "min", "sum")

    def __init__(self) -> None:
        # Doubles in an array, not a list of float objects: 8 bytes a sample instead of 32, so a
        # slow figure filling its exact part (a 3-pps flow's latency: 23 minutes) grows a worker
        # by a quarter as much (bench/soak_virtual.py).
        self._pending: array[float] = array("d")
        self.counts: np.ndarray | None = None
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        """Record one sample."""
        pending = self._pending
        pending.append(value)
        if len(pending) >= EXACT_SAMPLES:
            self._fold()

    def add_many(self, values: np.ndarray) -> None:
        """Record an array of samples (one fold per EXACT_SAMPLES, not one call per sample)."""
        pending = self._pending
        pending.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())
        if len(pending) >= EXACT_SAMPLES:
            self._fold()

    def extend(self, values: Iterable[float]) -> None:
        """Record many samples."""
        for value in values:
            self.add(value)

    def _fold(self) -> None:
        pending = self._pending
        if not pending:
            return
        values = np.maximum(np.array(pending, dtype=np.float64), 0.0)
        self._pending = array("d")
        self.count += len(values)
        self.sum += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        index = np.zeros(len(values), dtype=np.int64)
        big = values >= LOW
        index[big] = np.minimum(
            BUCKETS - 1, 1 + np.floor(np.log(values[big] / LOW) / _LOG_RATIO).astype(np.int64))
        folded = np.bincount(index, minlength=BUCKETS)
        self.counts = folded if self.counts is None else self.counts + folded

    @property
    def n(self) -> int:
        """Samples recorded."""
        return self.count + len(self._pending)

    @property
    def exact(self) -> bool:
        """True while every sample is still held as it was."""
        return self.counts is None

    def samples(self) -> list[float]:
        """The samples themselves (only while :attr:`exact`)."""
        if not self.exact:
            raise ValueError("this histogram has folded its samples into buckets")
        return list(self._pending)

    def percentiles(self, qs: Sequence[float]) -> list[float | None]:
        """Percentiles ``qs`` (0..100); None when empty."""
        if self.n == 0:
            return [None] * len(qs)
        if self.exact:
            values = np.percentile(np.maximum(np.asarray(self._pending), 0.0), list(qs))
            return [float(v) for v in values]
        self._fold()
        assert self.counts is not None
        cumulative = np.cumsum(self.counts)
        out: list[float | None] = []
        for q in qs:
            rank = max(1, math.ceil(q / 100.0 * self.count))
            i = int(np.searchsorted(cumulative, rank))
            middle = 0.0 if i == 0 else LOW * RATIO ** (i - 0.5)
            out.append(min(self.max, max(self.min, middle)))
        return out

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s samples to this one."""
        if other.exact and self.n + other.n < EXACT_SAMPLES and self.exact:
            self._pending.extend(other._pending)
            return
        self.extend(other._pending)
        self._fold()
        if other.counts is not None:
            self.counts = other.counts.copy() if self.counts is None else self.counts + other.counts
            self.count += other.count
            self.sum += other.sum
            self.min = min(self.min, other.min)
            self.max = max(self.max, other.max)

    def summary(self, qs: Sequence[int] = (50, 99)) -> dict[str, float | int | None]:
        """``{"p50": .., "p99": .., "max": .., "samples": n}`` rounded to µs."""
        values = self.percentiles(qs)
        out: dict[str, float | int | None] = {
            f"p{q}": None if v is None else round(v, 3) for q, v in zip(qs, values, strict=True)}
        top = self.maximum
        out["max"] = None if top is None else round(top, 3)
        out["samples"] = self.n
        return out

    @property
    def maximum(self) -> float | None:
        """Largest sample, or None."""
        if self.n == 0:
            return None
        pending_max = max(self._pending, default=-math.inf)
        return max(0.0, self.max, pending_max)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (a worker's stats file)."""
        if self.exact:
            return {"samples": list(self._pending)}
        self._fold()
        assert self.counts is not None
        nonzero = np.flatnonzero(self.counts)
        return {"count": self.count, "sum": self.sum, "min": self.min, "max": self.max,
                "buckets": {str(int(i)): int(self.counts[i]) for i in nonzero}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Sequence[float]) -> Histogram:
        """Inverse of :meth:`to_dict` (a plain list of samples is accepted too)."""
        h = cls()
        if not isinstance(data, Mapping):
            h.extend(float(v) for v in data)
            return h
        if "samples" in data:
            h.extend(float(v) for v in data["samples"])
            return h
        counts = np.zeros(BUCKETS, dtype=np.int64)
        for index, n in data["buckets"].items():
            counts[int(index)] = int(n)
        h.counts = counts
        h.count = int(data["count"])
        h.sum = float(data["sum"])
        h.min = float(data["min"])
        h.max = float(data["max"])
        return h


def merged(histograms: Iterable[Histogram]) -> Histogram:
    """One histogram holding the samples of all of ``histograms``."""
    out = Histogram()
    for h in histograms:
        out.merge(h)
    return out
