"""Stable rank, scaled stable rank and the convergence test that decides when Cuttlefish switches.

``stable_rank(W) = sum(s_i^2) / max(s_i)^2`` (singular values ``s`` only). The scaled stable rank multiplies it
by ``beta = full_rank / stable_rank(W_init)``, measured once at the start, so an untrained layer counts as full
rank: ``rank_t = ceil(beta * stable_rank(W_t))``, capped at ``full_rank = min(out, in * prod(kernel))``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ...dense import weight_matrix

#: largest number of matrix elements stacked into one batched ``svdvals`` call
MAX_BATCH_ELEMENTS = 1 << 26


def stable_rank_from_svdvals(s: torch.Tensor) -> torch.Tensor:
    """Stable rank from singular values ``s (..., k)`` -> ``(...)``; 0 for an all-zero matrix."""
    top = s.amax(dim=-1)
    energy = s.square().sum(dim=-1)
    return torch.where(top > 0, energy / top.square().clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(top))


def _svd_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def stable_rank(weight: torch.Tensor) -> float:
    """Stable rank of a matrix ``(m, n)`` (``torch.linalg.svdvals`` on its own device)."""
    if weight.dim() != 2:
        raise ValueError(f"stable_rank expects a matrix, got shape {tuple(weight.shape)}")
    w = weight.detach().to(_svd_dtype(weight))
    return float(stable_rank_from_svdvals(torch.linalg.svdvals(w)))


@contextmanager
def _single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """LAPACK's SVD runs many short parallel regions: on CPU it is as fast single-threaded at these sizes and
    does not stall when another process holds a core."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def batched_stable_ranks(modules: dict[str, nn.Module],
                         max_batch_elements: int = MAX_BATCH_ELEMENTS) -> dict[str, float]:
    """Stable rank of every dense layer in ``modules`` (Linear, GPT-2 ``Conv1D`` transposed, ConvNd reshaped to
    ``(out, in * prod(kernel))``): one batched ``svdvals`` per group of equal shape, device and dtype (split so a
    batch holds at most ``max_batch_elements`` elements), computed on the weights' device. Wide matrices are
    transposed first (same singular values; LAPACK is several times faster on tall ones), and CPU SVDs run
    single-threaded."""
    groups: dict[tuple, list[str]] = {}
    matrices: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        matrix = weight_matrix(module).detach()
        if matrix.shape[0] < matrix.shape[1]:
            matrix = matrix.t()
        matrices[name] = matrix
        groups.setdefault((tuple(matrix.shape), matrix.device, matrix.dtype), []).append(name)
    out: dict[str, float] = {}
    for (shape, _, _), names in groups.items():
        per_batch = max(1, max_batch_elements // max(1, shape[0] * shape[1]))
        for start in range(0, len(names), per_batch):
            chunk = names[start:start + per_batch]
            stacked = torch.stack([matrices[n] for n in chunk]).to(_svd_dtype(matrices[chunk[0]]))
            with _single_thread_on_cpu(stacked.device):
                singular = torch.linalg.svdvals(stacked)
            ranks = stable_rank_from_svdvals(singular).tolist()
            out.update(zip(chunk, ranks, strict=True))
    return {name: out[name] for name in modules}


def full_rank(module: nn.Module) -> int:
    """``min(out, in * prod(kernel))`` of a dense layer."""
    return min(weight_matrix(module).shape)


def rank_scale(full: int, initial_stable_rank: float) -> float:
    """``beta = full_rank / stable_rank(W_init)`` (1 for an all-zero initial weight)."""
    return full / initial_stable_rank if initial_stable_rank > 0 else 1.0


def scaled_rank(stable: float, beta: float, full: int) -> int:
    """``ceil(beta * stable)`` capped at ``full`` and at least 1 (a 1e-9 tolerance absorbs rounding noise)."""
    return max(1, min(full, math.ceil(beta * stable - 1e-9)))


def smoothed_derivative(sequence: Sequence[float], window: int) -> float | None:
    """``|d/dt|`` of the moving average (width ``window``) of ``sequence`` at its last point, per check:
    ``|r_t - r_{t-window}| / window``; None until the sequence has ``window + 1`` values."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(sequence) < window + 1:
        return None
    return abs(sequence[-1] - sequence[-1 - window]) / window


def has_converged(sequence: Sequence[float], epsilon: float, window: int, min_checks: int) -> bool:
    """True when ``sequence`` (the initial measurement followed by one value per rank check) has at least
    ``min_checks`` checks and its smoothed derivative is below ``epsilon``."""
    derivative = smoothed_derivative(sequence, window)
    return len(sequence) - 1 >= min_checks and derivative is not None and derivative < epsilon
