"""Triton block-sparse matmul for the block-butterfly weight of :class:`PixelflyLinear`.

Same contract as the PyTorch path (``hf_sparse.methods.pixelfly.ops.ButterflyMatmul``): ``x (N, G * in_tile)``,
``weight (G, out_tile, K * in_tile)`` (the nonzero tiles, tile ``k`` of output group ``g`` multiplies input
group ``g XOR offsets[k]``) -> ``(G, N, out_tile)`` group-major. Three kernels, each touching only the nonzero
tiles and accumulating in float32:

* forward     ``y[g] = sum_k x[:, g ^ d_k] @ W[g, :, k]^T``
* grad input  ``dx[:, j] = sum_k dy[j ^ d_k] @ W[j ^ d_k, :, k]`` (``i -> i ^ d`` is its own inverse, so
  every input group gathers its contributions: no atomics)
* grad weight ``dW[g, :, k] = dy[g]^T @ x[:, g ^ d_k]`` (sampled dense-dense product, nonzero tiles only)

Tile configs are autotuned per ``(out_tile, in_tile, K, dtype)``; under ``TRITON_INTERPRET=1`` one config is
kept (no benchmarking). Importing this module registers ``"butterfly_matmul"`` in ``TRITON_KERNELS``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

from .backend import TRITON_KERNELS
from .common import dot, precision

#: block sizes (tile edge) the kernels are tuned for; other tile sizes run with masked edges
BLOCK_SIZES = (16, 32, 64, 128)


def _configs() -> list[triton.Config]:
    configs = []
    for bm, bn, bk, warps, stages in [
        (128, 128, 32, 8, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (64, 64, 64, 4, 3), (128, 128, 64, 8, 3),
        (64, 64, 32, 4, 4), (64, 32, 32, 4, 4), (32, 32, 32, 4, 2), (64, 32, 16, 4, 4), (32, 16, 16, 2, 2),
        (64, 16, 16, 4, 3),
    ]:
        configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps,
                                     num_stages=stages))
    return configs


def _fits(size: int) -> int:
    """Largest useful block edge for a tile dimension of ``size`` (at least 16, the ``tl.dot`` minimum)."""
    return max(16, triton.next_power_of_2(size))


def _prune(n_dim: str, k_dim: str):
    """Drop configs whose N/K blocks exceed the tile dimensions; in the interpreter keep only the largest."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        n_max, k_max = _fits(args[n_dim]), _fits(args[k_dim])
        kept = [c for c in configs if c.kwargs["BLOCK_N"] <= n_max and c.kwargs["BLOCK_K"] <= k_max]
        kept = kept or [configs[-1]]
        if knobs.runtime.interpret:
            kept = [max(kept, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"]))]
        return kept

    return prune


@triton.jit
def _forward_kernel(x_ptr, w_ptr, off_ptr, y_ptr, N, OUT_TILE, IN_TILE, K,
                    s_xn, s_xc, s_wg, s_wo, s_wc, s_yg, s_yn, s_yo,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """Program ``(m, n, g)``: rows ``m`` of tokens, columns ``n`` of output group ``g``."""
    pid_m, pid_n, g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(K):
        src = g ^ tl.load(off_ptr + k)
        for c0 in range(0, IN_TILE, BLOCK_K):
            cols = c0 + rk
            a = tl.load(x_ptr + rm[:, None] * s_xn + (src * IN_TILE + cols)[None, :] * s_xc,
                        mask=(rm[:, None] < N) & (cols[None, :] < IN_TILE), other=0.0)
            b = tl.load(w_ptr + g * s_wg + rn[None, :] * s_wo + (k * IN_TILE + cols)[:, None] * s_wc,
                        mask=(rn[None, :] < OUT_TILE) & (cols[:, None] < IN_TILE), other=0.0)
            acc = dot(a, b, acc, PRECISION, UPCAST)
    tl.store(y_ptr + g * s_yg + rm[:, None] * s_yn + rn[None, :] * s_yo, acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < N) & (rn[None, :] < OUT_TILE))


@triton.jit
def _grad_input_kernel(dy_ptr, w_ptr, off_ptr, dx_ptr, N, OUT_TILE, IN_TILE, K,
                       s_dg, s_dn, s_do, s_wg, s_wo, s_wc, s_xn, s_xc,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """Program ``(m, n, j)``: rows ``m`` of tokens, columns ``n`` of input group ``j``."""
    pid_m, pid_n, j = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(K):
        g = j ^ tl.load(off_ptr + k)
        for o0 in range(0, OUT_TILE, BLOCK_K):
            outs = o0 + rk
            a = tl.load(dy_ptr + g * s_dg + rm[:, None] * s_dn + outs[None, :] * s_do,
                        mask=(rm[:, None] < N) & (outs[None, :] < OUT_TILE), other=0.0)
            b = tl.load(w_ptr + g * s_wg + outs[:, None] * s_wo + (k * IN_TILE + rn)[None, :] * s_wc,
                        mask=(outs[:, None] < OUT_TILE) & (rn[None, :] < IN_TILE), other=0.0)
            acc = dot(a, b, acc, PRECISION, UPCAST)
    tl.store(dx_ptr + rm[:, None] * s_xn + (j * IN_TILE + rn)[None, :] * s_xc, acc.to(dx_ptr.dtype.element_ty),
             mask=(rm[:, None] < N) & (rn[None, :] < IN_TILE))


@triton.jit
def _grad_weight_kernel(dy_ptr, x_ptr, off_ptr, dw_ptr, N, OUT_TILE, IN_TILE, K,
                        s_dg, s_dn, s_do, s_xn, s_xc, s_wg, s_wo, s_wc,
                        PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    """Program ``(m, n, g * K + k)``: rows ``m`` (outputs) and columns ``n`` (inputs) of nonzero tile ``(g, k)``."""
    pid_m, pid_n, gk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g, k = gk // K, gk % K
    src = g ^ tl.load(off_ptr + k)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_K):
        toks = (n0 + rk).to(tl.int64)
        a = tl.load(dy_ptr + g * s_dg + rm[:, None] * s_do + toks[None, :] * s_dn,
                    mask=(rm[:, None] < OUT_TILE) & (toks[None, :] < N), other=0.0)
        b = tl.load(x_ptr + toks[:, None] * s_xn + (src * IN_TILE + rn)[None, :] * s_xc,
                    mask=(toks[:, None] < N) & (rn[None, :] < IN_TILE), other=0.0)
        acc = dot(a, b, acc, PRECISION, UPCAST)
    tl.store(dw_ptr + g * s_wg + rm[:, None] * s_wo + (k * IN_TILE + rn)[None, :] * s_wc,
             acc.to(dw_ptr.dtype.element_ty), mask=(rm[:, None] < OUT_TILE) & (rn[None, :] < IN_TILE))


_KEY = ["OUT_TILE", "IN_TILE", "K"]
forward_tuned = triton.autotune(_configs(), key=_KEY, prune_configs_by={
    "early_config_prune": _prune("OUT_TILE", "IN_TILE")})(_forward_kernel)
grad_input_tuned = triton.autotune(_configs(), key=_KEY, prune_configs_by={
    "early_config_prune": _prune("IN_TILE", "OUT_TILE")})(_grad_input_kernel)
grad_weight_tuned = triton.autotune(_configs(), key=_KEY, prune_configs_by={
    "early_config_prune": _prune("IN_TILE", "N")})(_grad_weight_kernel)


def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Output allocation (tests replace it with a NaN-filled one so that unwritten tiles fail)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _launch(kernel, grid_fn, args: tuple, config: dict | None) -> None:
    """Run the autotuned ``kernel`` or, with ``config`` (``BLOCK_M/N/K`` and optional ``num_warps``), its jit
    function directly with those blocks (used by tests to force several K steps and partial tiles)."""
    if config is None:
        kernel[grid_fn](*args)
    else:
        config = dict(config)
        warps = config.pop("num_warps", 4)
        kernel.fn[grid_fn(config)](*args, **config, num_warps=warps)


_offset_cache: dict[tuple, torch.Tensor] = {}


def _offsets_tensor(offsets: tuple[int, ...], device: torch.device) -> torch.Tensor:
    key = (offsets, str(device))
    if key not in _offset_cache:
        _offset_cache[key] = torch.tensor(offsets, dtype=torch.int32, device=device)
    return _offset_cache[key]


def check_inputs(x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...]) -> tuple[int, int, int, int, int]:
    """Validate shapes; returns ``(N, G, out_tile, in_tile, K)``."""
    if x.dim() != 2 or weight.dim() != 3:
        raise ValueError(f"butterfly_matmul: x must be (N, G * in_tile) and weight (G, out_tile, K * in_tile), got "
                         f"x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    g, out_tile, kt = weight.shape
    k = len(offsets)
    if k == 0 or kt % k:
        raise ValueError(f"butterfly_matmul: weight last dim {kt} must be a multiple of len(offsets)={k} (>= 1)")
    in_tile = kt // k
    if g & (g - 1) or any(not 0 <= d < g for d in offsets):
        raise ValueError(f"butterfly_matmul: groups G={g} must be a power of two and offsets in [0, {g}), got "
                         f"{list(offsets)}")
    if x.shape[1] != g * in_tile:
        raise ValueError(f"butterfly_matmul: x has {x.shape[1]} columns, expected G * in_tile = {g * in_tile}")
    if x.dtype != weight.dtype or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"butterfly_matmul: x and weight must share one dtype among float32/float16/bfloat16, got "
                        f"{x.dtype} and {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"butterfly_matmul: x on {x.device} but weight on {weight.device}")
    return x.shape[0], g, out_tile, in_tile, k


def forward(x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...], config: dict | None = None
            ) -> torch.Tensor:
    """``(N, G * in_tile), (G, out_tile, K * in_tile) -> (G, N, out_tile)`` (no autograd)."""
    n, g, out_tile, in_tile, k = check_inputs(x, weight, offsets)
    y = _empty((g, n, out_tile), x)
    args = (x, weight, _offsets_tensor(offsets, x.device), y, n, out_tile, in_tile, k, *x.stride(), *weight.stride(),
            *y.stride(), *precision(x.dtype))
    _launch(forward_tuned, lambda m: (triton.cdiv(n, m["BLOCK_M"]), triton.cdiv(out_tile, m["BLOCK_N"]), g), args,
            config)
    return y


def grad_input(grad_out: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...], config: dict | None = None
               ) -> torch.Tensor:
    """``dy (G, N, out_tile)`` (any strides) -> ``dx (N, G * in_tile)``."""
    g, n, out_tile = grad_out.shape
    in_tile = weight.shape[2] // len(offsets)
    dx = _empty((n, g * in_tile), weight)
    args = (grad_out, weight, _offsets_tensor(offsets, weight.device), dx, n, out_tile, in_tile, len(offsets),
            *grad_out.stride(), *weight.stride(), *dx.stride(), *precision(weight.dtype))
    _launch(grad_input_tuned, lambda m: (triton.cdiv(n, m["BLOCK_M"]), triton.cdiv(in_tile, m["BLOCK_N"]), g), args,
            config)
    return dx


def grad_weight(grad_out: torch.Tensor, x: torch.Tensor, offsets: tuple[int, ...], config: dict | None = None
                ) -> torch.Tensor:
    """``dy (G, N, out_tile)``, ``x (N, G * in_tile)`` -> ``dW (G, out_tile, K * in_tile)`` on the nonzero tiles."""
    g, n, out_tile = grad_out.shape
    k = len(offsets)
    in_tile = x.shape[1] // g
    dw = _empty((g, out_tile, k * in_tile), x)
    args = (grad_out, x, _offsets_tensor(offsets, x.device), dw, n, out_tile, in_tile, k, *grad_out.stride(),
            *x.stride(), *dw.stride(), *precision(x.dtype))
    _launch(grad_weight_tuned,
            lambda m: (triton.cdiv(out_tile, m["BLOCK_M"]), triton.cdiv(in_tile, m["BLOCK_N"]), g * k), args, config)
    return dw


class TritonButterflyMatmul(torch.autograd.Function):
    """Autograd wrapper of the three kernels (same shapes as ``ButterflyMatmul``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.offsets = offsets
        return forward(x, weight, offsets)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype)
        dx = grad_input(grad_out, weight, ctx.offsets) if ctx.needs_input_grad[0] else None
        dw = grad_weight(grad_out, x, ctx.offsets) if ctx.needs_input_grad[1] else None
        return dx, dw, None


def butterfly_matmul_triton(x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
    """``(N, G * in_tile) -> (G, N, out_tile)`` block-butterfly product on the Triton kernels (autograd).

    Under autocast the operands are cast to the autocast dtype first (as ``torch.bmm`` would be).
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
    offsets = tuple(int(d) for d in offsets)
    check_inputs(x, weight, offsets)
    return TritonButterflyMatmul.apply(x, weight, offsets)


TRITON_KERNELS["butterfly_matmul"] = butterfly_matmul_triton
