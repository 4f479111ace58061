"""Solver properties: SVD error = tail singular values, SNMF nonnegativity and monotone error, random scale."""

from __future__ import annotations

import pytest
import torch

from hf_sparse.methods.greenformer.solvers import factorize, random_factors, snmf_factors, svd_factors


def _matrix(m: int = 48, n: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("rank", [1, 5, 16, 32])
def test_svd_error_equals_tail_singular_values(rank):
    w = _matrix()
    u, v = svd_factors(w, rank)
    assert u.shape == (48, rank) and v.shape == (rank, 32)
    s = torch.linalg.svdvals(w)
    expected = s[rank:].square().sum().sqrt()
    assert torch.allclose(torch.linalg.matrix_norm(w - u @ v), expected, rtol=1e-10, atol=1e-10)


def test_svd_splits_sqrt_s_evenly():
    u, v = svd_factors(_matrix(), 8)
    assert torch.allclose(u.norm(dim=0), v.norm(dim=1), rtol=1e-10)


def test_randomized_svd_matches_exact_on_low_rank_and_is_seeded():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(64, 6, generator=gen) @ torch.randn(6, 40, generator=gen)
    u, v = svd_factors(w, 6, algorithm="randomized", num_iter=4, seed=5)
    assert torch.linalg.matrix_norm(w - u @ v) / torch.linalg.matrix_norm(w) < 1e-4
    u2, v2 = svd_factors(w, 6, algorithm="randomized", num_iter=4, seed=5)
    assert torch.equal(u, u2) and torch.equal(v, v2)


def test_snmf_nonnegative_error_falls_and_deterministic():
    w = _matrix(40, 30).float()
    errors = []
    for iters in (1, 10, 100):
        u, h = snmf_factors(w, 8, num_iter=iters, seed=3)
        assert (h >= 0).all()
        errors.append(torch.linalg.matrix_norm(w - u @ h).item())
    assert errors[0] > errors[1] > errors[2]
    u_a, h_a = snmf_factors(w, 8, num_iter=20, seed=3)
    u_b, h_b = snmf_factors(w, 8, num_iter=20, seed=3)
    assert torch.equal(u_a, u_b) and torch.equal(h_a, h_b)
    _, h_c = snmf_factors(w, 8, num_iter=20, seed=4)
    assert not torch.equal(h_a, h_c)


def test_snmf_no_worse_than_rank_r_bound_and_exact_on_nonneg_structure():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(30, 4, generator=gen) @ torch.rand(4, 25, generator=gen)  # exactly U H with H >= 0
    u, h = snmf_factors(w, 4, num_iter=500, seed=0)
    assert torch.linalg.matrix_norm(w - u @ h) / torch.linalg.matrix_norm(w) < 0.05


def test_random_keeps_shapes_and_init_scale():
    u, v = random_factors((512, 256), 32, weight_std=0.02, seed=0)
    assert u.shape == (512, 32) and v.shape == (32, 256)
    std = (u @ v).std().item()
    assert 0.018 < std < 0.022
    w = torch.randn(300, 200) * 0.05
    u, v = factorize(w, 16, "random", seed=1)
    assert abs((u @ v).std().item() / 0.05 - 1) < 0.1


def test_factorize_validates():
    with pytest.raises(ValueError, match="2-D"):
        factorize(torch.randn(2, 3, 4), 2)
    with pytest.raises(ValueError, match="rank must be in"):
        factorize(torch.randn(5, 4), 5)
    with pytest.raises(ValueError, match="solver"):
        factorize(torch.randn(5, 4), 2, solver="qr")


def test_bfloat16_weights_are_factorized_in_float32():
    w = _matrix().to(torch.bfloat16)
    u, v = factorize(w, 4)
    assert u.dtype == torch.float32 and torch.isfinite(u).all()
