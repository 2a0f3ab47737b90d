"""benchmarks/rm_ensemble.py: members on different scales count equally in the ensemble's mean."""

from __future__ import annotations

import pytest

from benchmarks.rm_ensemble import ensemble, standardise


def test_members_are_standardised_before_the_mean() -> None:
    c, r = standardise([3.0, 1.0], [1.0, 3.0])
    assert list(c) == pytest.approx([1.0, -1.0]) and list(r) == pytest.approx([-1.0, 1.0])
    # member A prefers the chosen answer of pair 0 by a hair on a tiny scale; member B prefers the rejected answer
    # of pair 0 by a lot on a large scale. Unstandardised, B's scale would decide; standardised, the votes count
    # as z-scores: A's pair-0 margin is as large as B's, so the ensemble ties pair 0.
    a = ([0.02, 0.0], [0.0, 0.02])  # pair 0: +0.02, pair 1: -0.02 (z: +2, -2 in its own spread)
    b = ([0.0, 100.0], [100.0, 0.0])  # pair 0: -100, pair 1: +100
    chosen, rejected = ensemble([a, b])
    assert chosen[0] - rejected[0] == pytest.approx(0.0, abs=1e-9)
    assert chosen[1] - rejected[1] == pytest.approx(0.0, abs=1e-9)
