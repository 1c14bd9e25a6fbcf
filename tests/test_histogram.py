"""The streaming histogram: exact while small, within its stated error after, memory flat."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orbitmesh.core.histogram import BUCKETS, EXACT_SAMPLES, RATIO, Histogram, merged

RELATIVE_ERROR = (RATIO - 1.0) / 2.0 + 1e-9


def test_exact_while_small() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    h = Histogram()
    h.extend(values)
    assert h.exact
    assert h.percentiles([50, 100]) == [3.0, 5.0]
    assert h.summary() == {"p50": 3.0, "p99": pytest.approx(4.96), "max": 5.0, "samples": 5}


@pytest.mark.parametrize("scale", [0.05, 30.0, 2_000.0])
def test_percentiles_within_one_percent_once_folded(scale: float) -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(0.0, 1.0, 50_000) * scale
    h = Histogram()
    h.extend(values.tolist())
    assert not h.exact
    assert h.n == len(values)
    for q, got in zip((50, 90, 99, 99.9), h.percentiles([50, 90, 99, 99.9]), strict=True):
        want = float(np.percentile(values, q, method="inverted_cdf"))
        assert got == pytest.approx(want, rel=RELATIVE_ERROR)
    assert h.maximum == pytest.approx(values.max())


def test_memory_does_not_grow_with_samples() -> None:
    h = Histogram()
    h.extend([1.0] * (EXACT_SAMPLES * 10 + 5))
    assert h.counts is not None and len(h.counts) == BUCKETS
    assert len(json.dumps(h.to_dict())) < 200  # one bucket in use: a few numbers, not 40k


def test_merge_and_round_trip_agree_with_one_histogram() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.exponential(10.0, n).tolist() for n in (10, 5000, 20_000)]
    whole = Histogram()
    for p in parts:
        whole.extend(p)
    pieces = []
    for p in parts:
        h = Histogram()
        h.extend(p)
        pieces.append(Histogram.from_dict(json.loads(json.dumps(h.to_dict()))))
    together = merged(pieces)
    assert together.n == whole.n
    assert together.percentiles([50, 99]) == pytest.approx(whole.percentiles([50, 99]),
                                                           rel=RELATIVE_ERROR)


def test_small_merges_stay_exact() -> None:
    a, b = Histogram(), Histogram()
    a.extend([1.0, 2.0])
    b.extend([3.0])
    assert merged([a, b]).samples() == [1.0, 2.0, 3.0]


def test_empty() -> None:
    h = Histogram()
    assert h.summary() == {"p50": None, "p99": None, "max": None, "samples": 0}
    assert Histogram.from_dict([]).n == 0
