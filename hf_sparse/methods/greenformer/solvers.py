"""Factorization solvers: ``W (m x n) ~ U (m x r) @ V (r x n)``.

All solvers run on ``W``'s device in float32 (float64 when ``W`` is float64) and are deterministic given
the seed. They return ``(U, V)`` in that compute dtype; callers cast to the layer's dtype.
"""

from __future__ import annotations

import logging
import math

import torch

_EPS = 1e-12
logger = logging.getLogger("hf_sparse")


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def svd_factors(weight: torch.Tensor, rank: int, algorithm: str = "exact", num_iter: int = 4,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD ``W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``.

    ``algorithm="exact"`` uses ``torch.linalg.svd``: the Frobenius error then equals
    ``sqrt(sum of the dropped S^2)`` (Eckart-Young). ``"randomized"`` uses ``torch.svd_lowrank`` with
    ``num_iter`` power iterations and oversampling, seeded by ``seed``.
    """
    w = weight.detach().to(_compute_dtype(weight))
    if algorithm == "exact":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
    elif algorithm == "randomized":
        q = min(rank + 8, *w.shape)
        devices = [w.device] if w.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(w, q=q, niter=num_iter)
        vh = v.mT
    else:
        raise ValueError(f"svd algorithm must be 'exact' or 'randomized', got {algorithm!r}")
    return Decomposition(u, s, vh).factors(rank)


def random_factors(shape: tuple[int, int], rank: int, weight_std: float, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh Gaussian factors whose product has entries of standard deviation ``weight_std``.

    ``V ~ N(0, 1/n)`` keeps ``x V^T`` at the scale of ``x``; ``U ~ N(0, weight_std^2 * n / r)`` then gives
    ``Var((U V)_ij) = r * (1/n) * weight_std^2 * n / r = weight_std^2``, the variance of the dense init.
    """
    m, n = shape
    gen = _generator(torch.device(device), seed)
    v = torch.randn(rank, n, generator=gen, device=device, dtype=dtype) / math.sqrt(n)
    u = torch.randn(m, rank, generator=gen, device=device, dtype=dtype) * (weight_std * math.sqrt(n / rank))
    return u, v


def _pos(a: torch.Tensor) -> torch.Tensor:
    return (a.abs() + a) / 2


def _neg(a: torch.Tensor) -> torch.Tensor:
    return (a.abs() - a) / 2


def snmf_factors(weight: torch.Tensor, rank: int, num_iter: int = 100,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Semi-NMF ``W ~ U H`` with ``H >= 0`` and ``U`` unconstrained (Ding, Li & Jordan, 2010).

    Alternates the exact least-squares update ``U = W H^T (H H^T)^-1`` with the multiplicative update
    ``H <- H * sqrt(((U^T W)^+ + (U^T U)^- H) / ((U^T W)^- + (U^T U)^+ H))``, which never increases
    ``||W - U H||_F`` and keeps ``H`` nonnegative. ``H`` starts from seeded uniform noise in (0.1, 1.1).
    """
    w = weight.detach().to(_compute_dtype(weight))
    gen = _generator(w.device, seed)
    h = torch.rand(rank, w.shape[1], generator=gen, device=w.device, dtype=w.dtype) + 0.1
    u = _least_squares_left(w, h)
    for _ in range(num_iter):
        a = u.mT @ w
        b = u.mT @ u
        numer = _pos(a) + _neg(b) @ h
        denom = _neg(a) + _pos(b) @ h
        h = h * torch.sqrt(numer / denom.clamp_min(_EPS))
        u = _least_squares_left(w, h)
    return u, h


def _least_squares_left(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``argmin_U ||W - U H||_F = W H^T (H H^T)^-1`` with a tiny ridge for rank-deficient ``H``."""
    gram = h @ h.mT
    ridge = _EPS * gram.diagonal().mean().clamp_min(_EPS) * torch.eye(gram.shape[0], device=w.device, dtype=w.dtype)
    return torch.linalg.solve(gram + ridge, (w @ h.mT).mT).mT


def factorize(weight: torch.Tensor, rank: int, solver: str = "svd", num_iter: int | None = None,
              svd_algorithm: str = "exact", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Factorize an ``(m x n)`` matrix with the named solver; returns ``U (m x r)``, ``V (r x n)``."""
    if weight.ndim != 2:
        raise ValueError(f"factorize expects a 2-D weight matrix, got shape {tuple(weight.shape)}")
    if not 1 <= rank <= min(weight.shape) and solver != "random":
        raise ValueError(f"rank must be in [1, {min(weight.shape)}] for a {tuple(weight.shape)} matrix, got {rank}")
    if solver == "svd":
        return svd_factors(weight, rank, svd_algorithm, num_iter if num_iter is not None else 4, seed)
    if solver == "snmf":
        return snmf_factors(weight, rank, num_iter if num_iter is not None else 100, seed)
    if solver == "random":
        std = weight.detach().float().std().item() if weight.numel() > 1 else 0.02
        return random_factors(tuple(weight.shape), rank, std, weight.device, _compute_dtype(weight), seed)
    raise ValueError(f"solver must be one of ['random', 'svd', 'snmf'], got {solver!r}")


# --------------------------------------------------------------------------------------------- data-aware SVD
class Decomposition:
    """``W T = U diag(s) Vh`` for a right transform ``T`` (identity, a diagonal scale, or a whitening
    Cholesky factor). ``factors(r)`` truncates at rank ``r`` and folds ``T^-1`` back into ``V``, so one SVD
    serves every candidate rank.

    Shapes: ``u (m, k)``, ``s (k,)``, ``vh (k, n)``; ``scale (n,)`` for a diagonal ``T``; ``chol (n, n)`` lower
    triangular for a whitening ``T``.
    """

    def __init__(self, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, scale: torch.Tensor | None = None,
                 chol: torch.Tensor | None = None) -> None:
        self.u, self.s, self.vh, self.scale, self.chol = u, s, vh, scale, chol

    @property
    def max_rank(self) -> int:
        return self.s.numel()

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``U (m, r) = U_r sqrt(S_r)``, ``V (r, n) = sqrt(S_r) Vh_r T^-1``."""
        root = self.s[:rank].sqrt()
        u = self.u[:, :rank] * root
        v = root[:, None] * self.vh[:rank]
        if self.scale is not None:
            v = v / self.scale
        if self.chol is not None:
            v = torch.linalg.solve_triangular(self.chol, v, upper=False, left=False)
        return u, v

    def dropped_energy(self, rank: int) -> torch.Tensor:
        """``sum of s[rank:]^2``: the squared truncation error in the transformed space."""
        return self.s[rank:].square().sum()


def _svd(matrix: torch.Tensor, scale: torch.Tensor | None = None, chol: torch.Tensor | None = None) -> Decomposition:
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return Decomposition(u, s, vh, scale=scale, chol=chol)


def plain_decomposition(weight: torch.Tensor) -> Decomposition:
    """Plain truncated SVD of ``W`` (float64)."""
    return _svd(weight.detach().to(torch.float64))


def cholesky_with_jitter(gram: torch.Tensor, name: str = "layer", max_tries: int = 12) -> torch.Tensor:
    """Lower Cholesky factor of ``gram`` (float64); adds ``jitter * mean(diag) * I``, escalating from 1e-10 by 10x,
    when ``gram`` is not positive definite (logged)."""
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return factor
    scale = gram.diagonal().mean().clamp_min(1e-30)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    jitter = 1e-10
    for _ in range(max_tries):
        factor, info = torch.linalg.cholesky_ex(gram + jitter * scale * eye)
        if int(info) == 0:
            logger.warning("svd-llm: X^T X of %s is not positive definite; added jitter %.0e * mean(diag)",
                           name, jitter)
            return factor
        jitter *= 10
    raise ValueError(f"svd-llm: X^T X of {name} stays singular even with jitter {jitter / 10:.0e} * mean(diag); "
                     "check the calibration data (all-zero inputs?)")


def whitened_decomposition(weight: torch.Tensor, xtx: torch.Tensor, name: str = "layer") -> Decomposition:
    """SVD-LLM: ``X^T X = S S^T`` (Cholesky), SVD of ``W S``. Truncating at rank ``r`` then gives a layer-output
    error ``||X (W - W_r)^T||_F^2`` equal to the dropped squared singular values of ``W S``."""
    chol = cholesky_with_jitter(xtx.to(torch.float64), name)
    w = weight.detach().to(torch.float64)
    return _svd(w @ chol, chol=chol)


def scaled_decomposition(weight: torch.Tensor, scale: torch.Tensor, floor: float = 1e-6) -> Decomposition:
    """SVD of ``W diag(scale)`` (input channels scaled), unscaled in ``factors``. Scales below
    ``floor * max(scale)`` are raised to it so dead channels do not blow up ``1 / scale``."""
    scale = scale.to(torch.float64)
    scale = scale.clamp_min(floor * scale.max().clamp_min(1e-30))
    w = weight.detach().to(torch.float64)
    return _svd(w * scale, scale=scale)


def asvd_decomposition(weight: torch.Tensor, abs_mean: torch.Tensor, alpha: float = 0.5) -> Decomposition:
    """ASVD: scale input channel ``j`` by ``mean|x_j|^alpha`` before the SVD."""
    return scaled_decomposition(weight, abs_mean.to(torch.float64).pow(alpha))


def fisher_decomposition(weight: torch.Tensor, fisher: torch.Tensor) -> Decomposition:
    """FWSVD: scale input channel ``j`` by ``sqrt(sum_i F_ij)``, the Fisher information of its weights."""
    return scaled_decomposition(weight, fisher.to(torch.float64).sum(0).sqrt())
