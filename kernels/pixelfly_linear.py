"""A whole :class:`PixelflyLinear` layer (scalar gate) on the block-sparse kernels, low-rank term fused.

``y = x B_a^T + (x V_a^T) U^T + b`` with ``B_a = alpha * B`` and ``V_a = (1 - alpha) * V`` (the layer scales its
small weights, never its activations). One layer call is two launches instead of a string of small ones:

* forward: ``h = x V_a^T`` (one skinny GEMM, ``(N, R)``), then one kernel computing the butterfly product, adding
  ``h U^T`` and the bias on the same output tile and writing ``(N, out_features)`` token-major (no padding,
  transpose or add passes);
* backward: ``dh = dy U`` (GEMM), one kernel for ``dx = dy B_a + dh V_a`` and one for ``dB_a`` on the nonzero
  tiles; ``dU = dy^T h``, ``dV_a = dh^T x`` and ``db`` are dense GEMMs / a sum over tokens.

Autograd carries ``alpha`` through ``B_a`` and ``V_a``. Importing this module registers ``"pixelfly_linear"`` in
``TRITON_KERNELS``.
"""

from __future__ import annotations

import torch

from . import blocksparse_matmul as bsm
from .backend import TRITON_KERNELS, autocast_operands


class TritonPixelflyLinear(torch.autograd.Function):
    """``x (N, in)``, ``butterfly (G, out_tile, K * in_tile)`` (``alpha`` applied), ``u (out, R)``, ``v (R, in)``
    (``1 - alpha`` applied) or both ``None``, ``bias (out,)`` or ``None`` -> ``(N, out)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, butterfly: torch.Tensor, u: torch.Tensor | None, v: torch.Tensor | None,
                bias: torch.Tensor | None, offsets: tuple[int, ...], out_features: int) -> torch.Tensor:
        h = x @ v.t() if v is not None else None
        y = bsm._empty((x.shape[0], out_features), x)
        out_tile = butterfly.shape[1]
        bsm.run_forward(x, butterfly, offsets, y, (out_tile, out_features, 1), out_features, h, u, bias)
        ctx.save_for_backward(x, butterfly, u, v, h)
        ctx.offsets, ctx.out_features, ctx.has_bias = offsets, out_features, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, butterfly, u, v, h = ctx.saved_tensors
        offsets, out_features = ctx.offsets, ctx.out_features
        dy = grad_out.to(x.dtype)
        strides = (butterfly.shape[1] * dy.stride(1), dy.stride(0), dy.stride(1))  # (group, token, column)
        needs = ctx.needs_input_grad
        dh = dy @ u if u is not None and (needs[0] or needs[3]) else None
        dx = d_butterfly = du = dv = d_bias = None
        if needs[0]:
            dx = bsm._empty(x.shape, x)
            bsm.run_grad_input(dy, strides, butterfly, offsets, dx, out_features, dh, v)
        if needs[1]:
            d_butterfly = bsm._empty(butterfly.shape, butterfly)
            bsm.run_grad_weight(dy, strides, x, offsets, d_butterfly, out_features)
        if u is not None and needs[2]:
            du = dy.t() @ h
        if v is not None and needs[3]:
            dv = dh.t() @ x
        if ctx.has_bias and needs[4]:
            d_bias = dy.sum(0, dtype=torch.float32).to(dy.dtype)
        return dx, d_butterfly, du, dv, d_bias, None, None


def pixelfly_linear_triton(x: torch.Tensor, butterfly: torch.Tensor, offsets: tuple[int, ...],
                           u: torch.Tensor | None, v: torch.Tensor | None, bias: torch.Tensor | None,
                           out_features: int) -> torch.Tensor:
    """``(N, in) -> (N, out_features)``: ``x butterfly^T + (x v^T) u^T + bias`` (see the module docstring; pass
    ``u = v = None`` for no low-rank term). Under autocast every operand is cast to the autocast dtype first (as
    ``F.linear`` would); accumulation is float32."""
    x, butterfly, u, v, bias = autocast_operands(x, butterfly, u, v, bias)
    offsets = tuple(int(d) for d in offsets)
    n, groups, out_tile, _, _ = bsm.check_inputs(x, butterfly, offsets, padded_input=True)
    if (u is None) != (v is None):
        raise ValueError("pixelfly_linear: pass both low-rank factors u (out, R) and v (R, in) or neither")
    if not 0 < out_features <= groups * out_tile:
        raise ValueError(f"pixelfly_linear: out_features={out_features} must be in [1, {groups * out_tile}] for "
                         f"{groups} groups of {out_tile} rows (rows past out_features are padding)")
    if u is not None and (u.shape[0] != out_features or v.shape != (u.shape[1], x.shape[1])):
        raise ValueError(f"pixelfly_linear: u must be ({out_features}, R) and v (R, {x.shape[1]}), got "
                         f"{tuple(u.shape)} and {tuple(v.shape)}")
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"pixelfly_linear: bias must be ({out_features},), got {tuple(bias.shape)}")
    for name, t in (("u", u), ("v", v), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"pixelfly_linear: {name} is {t.dtype} on {t.device}, x is {x.dtype} on {x.device}")
    return TritonPixelflyLinear.apply(x, butterfly, u, v, bias, offsets, out_features)


TRITON_KERNELS["pixelfly_linear"] = pixelfly_linear_triton
