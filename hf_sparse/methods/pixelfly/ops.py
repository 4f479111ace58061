"""Block-butterfly matrix product on the PyTorch fast path, with a custom backward.

The butterfly part of a Pixelfly weight is ``butterfly_size`` groups of output rows; group ``i`` reads the
input groups ``i XOR d`` for the offsets ``d`` of the layout. Gathering those input groups side by side turns
the whole product into one batched GEMM (``torch.bmm`` over the groups); the backward is two more batched
GEMMs plus the same gather run in reverse (``i -> i XOR d`` is its own inverse). The dense weight is never
built. :func:`butterfly_groups` is the dispatch point for the GPU kernels (``hf_sparse.kernels.backend``).
"""

from __future__ import annotations

import torch

from ...kernels.backend import TRITON_KERNELS, autocast_operands, select_backend


def partner_index(butterfly_size: int, offsets: list[int], device: torch.device | None = None) -> torch.Tensor:
    """``(butterfly_size, len(offsets))`` long tensor: input group ``i XOR d`` read by output group ``i``."""
    groups = torch.arange(butterfly_size, device=device)
    return groups[:, None] ^ torch.tensor(offsets, device=device)[None, :]


def _xor_gather(x: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
    """``(N, G, t)`` -> ``(N, G, K, t)`` with ``out[:, i, k] = x[:, i XOR offsets[k]]``.

    XOR with ``d = 2^f`` swaps neighbouring runs of ``d`` groups, so each offset is two strided copies
    (no index tensors, one pass over the output).
    """
    n, g, t = x.shape
    out = x.new_empty(n, g, len(offsets), t)
    for k, d in enumerate(offsets):
        dst = out[:, :, k]
        if d == 0:
            dst.copy_(x)
            continue
        src5, dst5 = x.view(n, g // (2 * d), 2, d, t), dst.view(n, g // (2 * d), 2, d, t)
        dst5[:, :, 0].copy_(src5[:, :, 1])
        dst5[:, :, 1].copy_(src5[:, :, 0])
    return out


def _xor_scatter(grad: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
    """Adjoint of :func:`_xor_gather`: ``(N, G, K, t)`` -> ``(N, G, t)``, ``out[:, j] = sum_k grad[:, j XOR d_k, k]``
    (``i -> i XOR d`` is its own inverse)."""
    n, g, _, t = grad.shape
    out = grad[:, :, 0].clone(memory_format=torch.contiguous_format) if offsets[0] == 0 else grad.new_zeros(n, g, t)
    for k, d in enumerate(offsets):
        if d == 0:
            continue
        src5, dst5 = grad[:, :, k].view(n, g // (2 * d), 2, d, t), out.view(n, g // (2 * d), 2, d, t)
        dst5[:, :, 0] += src5[:, :, 1]
        dst5[:, :, 1] += src5[:, :, 0]
    return out


class ButterflyMatmul(torch.autograd.Function):
    """``x @ B^T`` for a block butterfly ``B`` stored as its nonzero tiles, returned group-major.

    Shapes: ``x (N, in_padded)``, ``weight (G, out_tile, K * in_tile)``, ``offsets``: the ``K`` XOR offsets;
    returns ``(G, N, out_tile)`` (output group first, as the batched GEMM produces it: callers fuse the
    transpose into their next elementwise op).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
        g, _, kt = weight.shape
        n = x.shape[0]
        gathered = _xor_gather(x.reshape(n, g, kt // len(offsets)), offsets).view(n, g, kt)
        ctx.save_for_backward(gathered, weight)
        ctx.offsets = offsets
        return torch.bmm(gathered.transpose(0, 1), weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad_groups: torch.Tensor):
        gathered, weight = ctx.saved_tensors
        n, g, kt = gathered.shape
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_gathered = gathered.new_empty(n, g, kt)
            torch.bmm(grad_groups, weight, out=grad_gathered.transpose(0, 1))
            k = len(ctx.offsets)
            grad_x = _xor_scatter(grad_gathered.view(n, g, k, kt // k), ctx.offsets).view(n, -1)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad_groups.transpose(1, 2), gathered.transpose(0, 1))
        return grad_x, grad_weight, None


def butterfly_groups(x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
    """``(N, in_padded) -> (G, N, out_tile)`` block-butterfly product: the Triton kernel where
    ``hf_sparse.kernels.backend`` selects it, else the PyTorch path (:class:`ButterflyMatmul`). Under autocast
    both operands run in the autocast dtype."""
    x, weight = autocast_operands(x, weight)
    if select_backend("butterfly_matmul", x) == "triton":
        return TRITON_KERNELS["butterfly_matmul"](x, weight, tuple(offsets))
    return ButterflyMatmul.apply(x, weight, tuple(offsets))


def butterfly_matmul(x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
    """``(*, in_padded) -> (*, G * out_tile)`` block-butterfly product (PyTorch fast path)."""
    lead = x.shape[:-1]
    groups = butterfly_groups(x.reshape(-1, x.shape[-1]), weight, offsets)
    return groups.transpose(0, 1).reshape(*lead, -1)


def butterfly_to_dense(weight: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
    """The ``(G * out_tile, G * in_tile)`` dense matrix of a block butterfly (for ``to_dense`` and tests)."""
    g, out_tile, kt = weight.shape
    k = partners.shape[1]
    in_tile = kt // k
    dense = weight.new_zeros(g, out_tile, g, in_tile)
    tiles = weight.reshape(g, out_tile, k, in_tile)
    for j in range(k):
        dense[torch.arange(g), :, partners[:, j]] = tiles[:, :, j]
    return dense.reshape(g * out_tile, g * in_tile)
