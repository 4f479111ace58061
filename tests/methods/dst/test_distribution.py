"""ERK / uniform budgets: exact global count, ERK proportions, the capacity check and its redistribution."""

from __future__ import annotations

import math

import pytest

from hf_sparse.methods.dst.distribution import active_counts, erk_densities, erk_scores, round_to_total

SHAPES = [(256, 64), (256, 256), (10, 256), (32, 16, 3, 3), (512, 1024)]


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_budget_is_exact(sparsity, distribution):
    counts = active_counts(SHAPES, sparsity, distribution)
    sizes = [math.prod(s) for s in SHAPES]
    assert sum(counts) == round((1 - sparsity) * sum(sizes))
    assert all(1 <= c <= n for c, n in zip(counts, sizes, strict=True))


def test_erk_density_is_proportional_to_sum_over_prod():
    densities, dense = erk_densities(SHAPES, 0.05)
    assert dense == {2}  # the 10 x 256 head would exceed density 1
    eps = densities[0] / erk_scores(SHAPES[0])
    counts = active_counts(SHAPES, 0.95, "erk")
    for i, (c, s) in enumerate(zip(counts, SHAPES, strict=True)):
        if i in dense:
            assert c == math.prod(s)
        else:  # one eps for every sparse layer, up to the rounding of one weight
            assert abs(c - eps * erk_scores(s) * math.prod(s)) < 1, (s, c)
    assert erk_scores((10, 256)) == pytest.approx(266 / 2560)
    assert erk_scores((32, 16, 3, 3)) == pytest.approx((32 + 16 + 6) / (32 * 16 * 9))


def test_capacity_check_makes_small_layers_dense_and_redistributes():
    # a tiny layer (4 x 4, ERK score 0.5) would get density eps * 0.5 > 1 at 50% sparsity
    shapes = [(4, 4), (1000, 1000)]
    densities, dense = erk_densities(shapes, 0.5)
    assert dense == {0} and densities[0] == 1.0
    # the big layer takes the rest of the budget: 0.5 * 1_000_016 - 16 weights
    assert densities[1] * 1_000_000 == pytest.approx(0.5 * 1_000_016 - 16)
    counts = active_counts(shapes, 0.5, "erk")
    assert counts[0] == 16 and sum(counts) == round(0.5 * 1_000_016)


def test_capacity_check_repeats_until_valid():
    shapes = [(2, 2), (8, 8), (3000, 3000)]
    densities, dense = erk_densities(shapes, 0.3)
    assert dense == {0, 1}
    assert all(d <= 1 for d in densities)
    assert sum(d * math.prod(s) for d, s in zip(densities, shapes, strict=True)) == pytest.approx(0.3 * 9_000_068)


def test_round_to_total_uses_largest_remainders():
    assert round_to_total([1.4, 2.6, 3.5], [10, 10, 10], 8) == [1, 3, 4]
    assert round_to_total([1.4, 2.6, 3.5], [10, 10, 10], 7) == [1, 3, 3]
    assert round_to_total([0.2, 5.0], [3, 9], 6) == [1, 5]  # every layer keeps at least one weight
    with pytest.raises(ValueError, match="cannot place"):
        round_to_total([1.0], [3], 4)
