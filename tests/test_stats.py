"""Statistics: Wilson intervals, the exact McNemar test and the paired bootstrap, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from evalharness.stats import (Paired, mcnemar_exact, paired_bootstrap_ci, paired_counts, two_proportion_exact,
                               wilson_ci)

Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal


def wilson_by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def mcnemar_by_hand(b: int, c: int) -> float:
    """Two-sided exact test: twice the smaller binomial tail of the discordant pairs at p = 1/2, capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (5, 10), (1, 3), (81, 263), (600, 600), (1, 1319)])
def test_wilson_matches_the_formula(k, n):
    low, high = wilson_ci(k, n)
    exp_low, exp_high = wilson_by_hand(k, n)
    assert low == pytest.approx(max(0.0, exp_low), abs=1e-12)
    assert high == pytest.approx(min(1.0, exp_high), abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_known_values():
    # 0 of 10: the upper bound is z^2 / (n + z^2); 10 of 10 mirrors it
    assert wilson_ci(0, 10) == pytest.approx((0.0, Z95 ** 2 / (10 + Z95 ** 2)))
    assert wilson_ci(10, 10) == pytest.approx((10 / (10 + Z95 ** 2), 1.0))
    # symmetric around 1/2
    low, high = wilson_ci(5, 10)
    assert low + high == pytest.approx(1.0)
    assert low == pytest.approx(0.2365931, abs=1e-6)


def test_wilson_other_confidence_is_narrower():
    l95, h95 = wilson_ci(30, 100)
    l80, h80 = wilson_ci(30, 100, confidence=0.80)
    assert l95 < l80 < 0.3 < h80 < h95


def test_wilson_empty_is_none():
    assert wilson_ci(0, 0) is None


@pytest.mark.parametrize("b,c,expected", [
    (0, 0, 1.0),            # no discordant pairs: nothing to test
    (3, 3, 1.0),            # tie
    (0, 1, 1.0),
    (2, 0, 0.5),            # 2 * (1/2)^2
    (0, 5, 0.0625),         # 2 * (1/2)^5
    (1, 9, 22 / 1024),      # 2 * (1 + 10) / 2^10
    (9, 1, 22 / 1024),      # symmetric
    (10, 0, 2 / 1024),
    (4, 12, None), (30, 5, None), (50, 60, None),
])
def test_mcnemar_exact_against_the_binomial(b, c, expected):
    p = mcnemar_exact(b, c)
    assert p == pytest.approx(mcnemar_by_hand(b, c), rel=1e-12)
    if expected is not None:
        assert p == pytest.approx(expected, rel=1e-12)
    assert 0.0 < p <= 1.0


def test_paired_counts_and_delta():
    a = [True, True, False, False, True, False]
    b = [True, False, True, False, False, False]
    p = paired_counts(a, b)
    assert p == Paired(n=6, both=1, only_a=2, only_b=1, neither=2)
    assert p.delta == pytest.approx((1 - 2) / 6)
    assert p.delta == pytest.approx(sum(b) / 6 - sum(a) / 6)


def test_paired_counts_all_equal_and_empty():
    same = [True, False, True]
    p = paired_counts(same, same)
    assert (p.only_a, p.only_b, p.delta) == (0, 0, 0.0)
    assert mcnemar_exact(p.only_a, p.only_b) == 1.0
    empty = paired_counts([], [])
    assert empty.n == 0 and math.isnan(empty.delta)


def test_paired_counts_length_mismatch():
    with pytest.raises(ValueError):
        paired_counts([True], [True, False])


def test_bootstrap_degenerate_cases():
    assert paired_bootstrap_ci([], []) is None
    assert paired_bootstrap_ci([True], [False]) is None
    # every pair differs by the same amount: the interval is that point
    assert paired_bootstrap_ci([True] * 5, [True] * 5) == (0.0, 0.0)
    assert paired_bootstrap_ci([True] * 5, [False] * 5) == (-1.0, -1.0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([True], [True, False])


def test_bootstrap_brackets_the_observed_difference_and_is_seeded():
    a = [True] * 60 + [False] * 40
    b = [True] * 45 + [False] * 15 + [True] * 5 + [False] * 35  # b loses 15, gains 5: delta -0.10
    low, high = paired_bootstrap_ci(a, b, n_resamples=4000, seed=1)
    assert low < -0.10 < high
    assert high < 0  # a clear loss: the interval excludes zero
    assert -0.3 < low
    assert paired_bootstrap_ci(a, b, n_resamples=4000, seed=1) == (low, high)


def test_two_proportion_exact():
    assert two_proportion_exact(0, 0, 3, 10) == 1.0
    assert two_proportion_exact(5, 10, 5, 10) == pytest.approx(1.0)
    # Fisher's exact test on [[10, 0], [0, 10]]: 2 / C(20, 10)
    assert two_proportion_exact(10, 10, 0, 10) == pytest.approx(2 / math.comb(20, 10))
