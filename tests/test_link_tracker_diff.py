"""LinkTracker's diff (one merge when compiled, else one binary search) equals the diff by numpy set
operations, and the compiled diff the numpy one tick after tick."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_compiled_diff_equals_the_numpy_diff_tick_after_tick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from orbitmesh.core import links

    if not links.HAVE_NUMBA:
        return
    rng = np.random.default_rng(6)
    compiled, plain = LinkTracker(2e-3), LinkTracker(2e-3)
    state = random_state(rng, 0.0, 40)
    for step in range(60):
        # links drift (announced delays build up), some go, some come; now and then a state
        # whose keys are out of order (a recorded timeline need not sort them)
        keep = rng.random(len(state)) > 0.1
        extra = random_state(rng, float(step), 40)
        state = make_state(float(step), 40, np.r_[state.a[keep], extra.a],
                           np.r_[state.b[keep], extra.b], np.r_[state.kind[keep], extra.kind],
                           np.r_[state.delay_s[keep] + rng.normal(0, 1e-3, keep.sum()),
                                 extra.delay_s])
        _, first = np.unique(state.key, return_index=True)
        state = make_state(float(step), 40, state.a[first], state.b[first], state.kind[first],
                           state.delay_s[first])
        shown = state
        if step % 13 == 5:
            flip = rng.permutation(len(state))
            shown = LinkState(state.t_s, 40, state.a[flip], state.b[flip], state.kind[flip],
                              state.delay_s[flip])
        got = compiled.update(shown)
        with monkeypatch.context() as patch:
            patch.setattr(links, "HAVE_NUMBA", False)
            want = plain.update(shown)
        for name in ("up", "down_a", "down_b", "down_kind", "delay_changed"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        np.testing.assert_array_equal(compiled._announced_delay, plain._announced_delay)
