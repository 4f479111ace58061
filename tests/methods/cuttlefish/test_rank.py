"""Stable rank, scaled stable rank and the convergence rule on hand-built matrices and sequences."""

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_sparse.methods.cuttlefish.rank import (
    batched_stable_ranks,
    full_rank,
    has_converged,
    rank_scale,
    scaled_rank,
    smoothed_derivative,
    stable_rank,
    stable_rank_from_svdvals,
)


def test_stable_rank_of_hand_built_matrices():
    assert stable_rank(torch.diag(torch.tensor([4.0, 3.0]))) == pytest.approx((16 + 9) / 16)
    assert stable_rank(torch.eye(7)) == pytest.approx(7.0)
    rank_one = torch.outer(torch.arange(1.0, 6.0), torch.arange(1.0, 4.0))
    assert stable_rank(rank_one) == pytest.approx(1.0, rel=1e-5)
    assert stable_rank(torch.zeros(3, 5)) == 0.0
    # from singular values only: orthogonal factors do not change it
    q1, _ = torch.linalg.qr(torch.randn(6, 6))
    q2, _ = torch.linalg.qr(torch.randn(4, 4))
    w = q1[:, :4] @ torch.diag(torch.tensor([2.0, 1.0, 1.0, 0.5])) @ q2
    assert stable_rank(w) == pytest.approx((4 + 1 + 1 + 0.25) / 4, rel=1e-5)
    batched = stable_rank_from_svdvals(torch.tensor([[2.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(batched, torch.tensor([1.25, 2.0, 0.0]))
    with pytest.raises(ValueError, match="matrix"):
        stable_rank(torch.ones(2, 2, 2))


def test_batched_stable_ranks_match_per_layer_and_layouts():
    torch.manual_seed(0)
    modules = {"a": nn.Linear(8, 16), "b": nn.Linear(8, 16), "c": Conv1D(12, 8), "d": nn.Conv2d(3, 5, 3),
               "e": nn.Linear(5, 4)}
    got = batched_stable_ranks(modules, max_batch_elements=200)  # forces the same-shape group into chunks
    assert list(got) == list(modules)
    assert got["a"] == pytest.approx(stable_rank(modules["a"].weight), rel=1e-5)
    assert got["b"] == pytest.approx(stable_rank(modules["b"].weight), rel=1e-5)
    # GPT-2 Conv1D stores (in, out); the layer's matrix is its transpose, (out=12, in=8)
    assert got["c"] == pytest.approx(stable_rank(modules["c"].weight.t()), rel=1e-5)
    assert full_rank(modules["c"]) == 8
    # a conv is read as (out, in * k * k) = (5, 27), not any other reshape
    assert got["d"] == pytest.approx(stable_rank(modules["d"].weight.reshape(5, 27)), rel=1e-5)
    assert got["d"] != pytest.approx(stable_rank(modules["d"].weight.reshape(15, 9)), rel=1e-3)
    assert full_rank(modules["d"]) == 5


def test_scaled_rank():
    beta = rank_scale(64, 16.0)
    assert beta == 4.0
    assert scaled_rank(16.0, beta, 64) == 64  # the initial weight counts as full rank
    assert scaled_rank(5.1, beta, 64) == 21  # ceil(20.4)
    assert scaled_rank(5.0, beta, 64) == 20  # exact products are not bumped by rounding noise
    assert scaled_rank(30.0, beta, 64) == 64  # capped at full rank
    assert scaled_rank(0.0, beta, 64) == 1
    assert rank_scale(10, 0.0) == 1.0  # all-zero initial weight


def test_smoothed_derivative_and_convergence():
    seq = [10.0, 8.0, 7.0, 6.9, 6.85, 6.85]
    assert smoothed_derivative(seq[:2], window=2) is None
    assert smoothed_derivative(seq[:3], window=2) == pytest.approx(1.5)  # |7 - 10| / 2
    assert smoothed_derivative(seq, window=1) == pytest.approx(0.0)
    assert smoothed_derivative(seq, window=3) == pytest.approx(0.05)  # |6.85 - 7| / 3
    assert has_converged(seq, epsilon=0.1, window=3, min_checks=3)
    assert not has_converged(seq, epsilon=0.05, window=3, min_checks=3)  # strictly below epsilon
    assert not has_converged(seq, epsilon=0.1, window=3, min_checks=6)  # 5 checks after the initial value
    assert not has_converged(seq[:3], epsilon=10.0, window=3, min_checks=1)  # not enough values to smooth
    # noise around a settled value converges with a window; a steady drift never does
    noisy = [5.0 + 0.3 * (-1) ** i for i in range(9)]
    assert not has_converged(noisy, epsilon=0.1, window=1, min_checks=1)
    assert has_converged(noisy, epsilon=0.1, window=2, min_checks=1)
    drift = [10.0 - 0.2 * i for i in range(20)]
    assert not has_converged(drift, epsilon=0.1, window=5, min_checks=5)
    with pytest.raises(ValueError):
        smoothed_derivative(seq, window=0)
    assert math.isclose(smoothed_derivative([1.0, 1.0], 1), 0.0)
