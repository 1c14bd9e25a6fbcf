"""LinkTracker's diff (matched by one binary search) equals the diff by numpy set operations."""

from __future__ import annotations

import numpy as np

from orbitmesh.core.links import LinkState, LinkTracker, make_state


def random_state(rng: np.random.Generator, t_s: float, n_nodes: int) -> LinkState:
    keys = rng.choice(n_nodes * n_nodes, size=int(rng.integers(0, 200)), replace=False)
    a, b = keys // n_nodes, keys % n_nodes
    ok = a < b
    return make_state(t_s, n_nodes, a[ok], b[ok], np.zeros(int(ok.sum()), np.int8),
                      rng.uniform(0.0, 1e-2, int(ok.sum())))


def test_diff_equals_the_set_operations_answer() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        before, after = random_state(rng, 0.0, 60), random_state(rng, 1.0, 60)
        tracker = LinkTracker(1e-3)
        tracker.update(before)
        diff = tracker.update(after)
        _, ip, ic = np.intersect1d(before.key, after.key, assume_unique=True,
                                   return_indices=True)
        up = np.setdiff1d(np.arange(len(after)), ic, assume_unique=True)
        down = np.setdiff1d(np.arange(len(before)), ip, assume_unique=True)
        drift = np.abs(after.delay_s[ic] - before.delay_s[ip]) > 1e-3
        np.testing.assert_array_equal(diff.up, up)
        np.testing.assert_array_equal(diff.down_a, before.a[down])
        np.testing.assert_array_equal(diff.down_b, before.b[down])
        np.testing.assert_array_equal(diff.delay_changed, ic[drift])
