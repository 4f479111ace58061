"""Triton block-sparse matmul for the block-butterfly weight of :class:`PixelflyLinear`.

Same contract as the PyTorch path (``hf_sparse.methods.pixelfly.ops.ButterflyMatmul``): ``x (N, G * in_tile)``,
``weight (G, out_tile, K * in_tile)`` (the nonzero tiles, tile ``k`` of output group ``g`` multiplies input
group ``g XOR offsets[k]``) -> ``(G, N, out_tile)`` group-major. Three kernels, each touching only the nonzero
tiles and accumulating in float32:

* forward     ``y[g] = sum_k x[:, g ^ d_k] @ W[g, :, k]^T``  (+ ``h @ U[g]^T`` + bias)
* grad input  ``dx[:, j] = sum_k dy[j ^ d_k] @ W[j ^ d_k, :, k]``  (+ ``dh @ V[:, j]``) (``i -> i ^ d`` is its
  own inverse, so every input group gathers its contributions: no atomics)
* grad weight ``dW[g, :, k] = dy[g]^T @ x[:, g ^ d_k]`` (sampled dense-dense product, nonzero tiles only)

The optional terms in parentheses let :mod:`.pixelfly_linear` fuse a whole Pixelfly layer (low-rank term, bias,
unpadded features, token-major output) into these launches; the output / incoming gradient is addressed by
``(group, token, column)`` strides, so the same kernels write group-major or token-major tensors.

Tile configs are autotuned per ``(out_tile, in_tile, K, R)`` and dtype; under ``TRITON_INTERPRET=1`` one config
is kept (no benchmarking). Importing this module registers ``"butterfly_matmul"`` in ``TRITON_KERNELS``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

from .backend import TRITON_KERNELS, autocast_operands
from .common import cast_out, dot, precision

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


def _prune(n_dim: str, k_dim: str | None):
    """Drop configs whose N/K blocks exceed the tile dimensions (``k_dim=None``: K is the token count, which is
    not part of the tuning key, so it must not narrow the choice); in the interpreter keep only the largest."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        n_max, k_max = _fits(args[n_dim]), _fits(args[k_dim]) if k_dim else 1 << 30
        kept = [c for c in configs if c.kwargs["BLOCK_N"] <= n_max and c.kwargs["BLOCK_K"] <= k_max]
        kept = kept or [configs[-1]]
        if knobs.runtime.interpret:
            kept = [max(kept, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"]))]
        return kept

    return prune


@triton.jit
def _add_lowrank(acc, a_ptr, b_ptr, rows, cols, col_ok, N, R, s_an, s_ar, s_br, s_bc, PRECISION: tl.constexpr,
                 UPCAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc + A[rows, :R] @ B[:R, cols]`` for ``A (N, R)`` and ``B (R, *)`` given by their strides (the low-rank
    term of the forward, ``h U^T``, and of the grad input, ``dh V``)."""
    rk = tl.arange(0, BLOCK_K)
    for r0 in range(0, R, BLOCK_K):
        rr = r0 + rk
        a = tl.load(a_ptr + rows[:, None] * s_an + rr[None, :] * s_ar, mask=(rows[:, None] < N) & (rr[None, :] < R),
                    other=0.0)
        b = tl.load(b_ptr + rr[:, None] * s_br + cols[None, :] * s_bc, mask=(rr[:, None] < R) & col_ok[None, :],
                    other=0.0)
        acc = dot(a, b, acc, PRECISION, UPCAST)
    return acc


@triton.jit
def _forward_kernel(x_ptr, w_ptr, off_ptr, h_ptr, u_ptr, bias_ptr, y_ptr, N, IN_FEATURES, OUT_FEATURES, OUT_TILE,
                    IN_TILE, K, R, s_xn, s_xc, s_wg, s_wo, s_wc, s_hn, s_hr, s_uo, s_ur, s_yg, s_yn, s_yo,
                    HAS_LOWRANK: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                    UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program ``(m, n, g)``: rows ``m`` of tokens, columns ``n`` of output group ``g``; adds ``h @ U^T`` and
    the bias of those columns when given (output column ``g * OUT_TILE + n`` of ``(N, OUT_FEATURES)``)."""
    pid_m, pid_n, g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    out_cols = g * OUT_TILE + rn
    col_ok = (rn < OUT_TILE) & (out_cols < OUT_FEATURES)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(K):
        src = g ^ tl.load(off_ptr + k)
        for c0 in range(0, IN_TILE, BLOCK_K):
            cols = c0 + rk
            in_cols = src * IN_TILE + cols
            a = tl.load(x_ptr + rm[:, None] * s_xn + in_cols[None, :] * s_xc,
                        mask=(rm[:, None] < N) & (cols[None, :] < IN_TILE) & (in_cols[None, :] < IN_FEATURES),
                        other=0.0)
            b = tl.load(w_ptr + g * s_wg + rn[None, :] * s_wo + (k * IN_TILE + cols)[:, None] * s_wc,
                        mask=(rn[None, :] < OUT_TILE) & (cols[:, None] < IN_TILE), other=0.0)
            acc = dot(a, b, acc, PRECISION, UPCAST)
    if HAS_LOWRANK:  # + h[rows] @ U[cols]^T, h = x V^T (N, R)
        acc = _add_lowrank(acc, h_ptr, u_ptr, rm, out_cols, col_ok, N, R, s_hn, s_hr, s_ur, s_uo, PRECISION, UPCAST,
                           BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + out_cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + g.to(tl.int64) * s_yg + rm[:, None] * s_yn + rn[None, :] * s_yo,
             cast_out(acc, y_ptr.dtype.element_ty, UPCAST), mask=(rm[:, None] < N) & col_ok[None, :])


@triton.jit
def _grad_input_kernel(dy_ptr, w_ptr, off_ptr, dh_ptr, v_ptr, dx_ptr, N, IN_FEATURES, OUT_FEATURES, OUT_TILE,
                       IN_TILE, K, R, s_dg, s_dn, s_do, s_wg, s_wo, s_wc, s_hn, s_hr, s_vr, s_vc, s_xn, s_xc,
                       HAS_LOWRANK: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program ``(m, n, j)``: rows ``m`` of tokens, columns ``n`` of input group ``j``; adds ``dh @ V`` of those
    columns when given (``dh = dy U``, ``(N, R)``)."""
    pid_m, pid_n, j = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_cols = j * IN_TILE + rn
    col_ok = (rn < IN_TILE) & (in_cols < IN_FEATURES)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(K):
        g = j ^ tl.load(off_ptr + k)
        for o0 in range(0, OUT_TILE, BLOCK_K):
            outs = o0 + rk
            out_ok = (outs < OUT_TILE) & (g * OUT_TILE + outs < OUT_FEATURES)
            a = tl.load(dy_ptr + g.to(tl.int64) * s_dg + rm[:, None] * s_dn + outs[None, :] * s_do,
                        mask=(rm[:, None] < N) & out_ok[None, :], other=0.0)
            b = tl.load(w_ptr + g * s_wg + outs[:, None] * s_wo + (k * IN_TILE + rn)[None, :] * s_wc,
                        mask=(outs[:, None] < OUT_TILE) & (rn[None, :] < IN_TILE), other=0.0)
            acc = dot(a, b, acc, PRECISION, UPCAST)
    if HAS_LOWRANK:  # + dh[rows] @ V[:, cols], dh = dy U (N, R)
        acc = _add_lowrank(acc, dh_ptr, v_ptr, rm, in_cols, col_ok, N, R, s_hn, s_hr, s_vr, s_vc, PRECISION, UPCAST,
                           BLOCK_K)
    tl.store(dx_ptr + rm[:, None] * s_xn + in_cols[None, :] * s_xc, cast_out(acc, dx_ptr.dtype.element_ty, UPCAST),
             mask=(rm[:, None] < N) & col_ok[None, :])


@triton.jit
def _grad_weight_kernel(dy_ptr, x_ptr, off_ptr, dw_ptr, N, IN_FEATURES, OUT_FEATURES, OUT_TILE, IN_TILE, K,
                        s_dg, s_dn, s_do, s_xn, s_xc, s_wg, s_wo, s_wc,
                        PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    """Program ``(m, n, g * K + k)``: rows ``m`` (outputs) and columns ``n`` (inputs) of nonzero tile ``(g, k)``
    (padded rows / columns of the tile, beyond the layer's features, get zero)."""
    pid_m, pid_n, gk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g, k = gk // K, gk % K
    src = g ^ tl.load(off_ptr + k)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = (rm < OUT_TILE) & (g * OUT_TILE + rm < OUT_FEATURES)
    col_ok = (rn < IN_TILE) & (src * IN_TILE + rn < IN_FEATURES)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_K):
        toks = (n0 + rk).to(tl.int64)
        a = tl.load(dy_ptr + g.to(tl.int64) * s_dg + rm[:, None] * s_do + toks[None, :] * s_dn,
                    mask=row_ok[:, None] & (toks[None, :] < N), other=0.0)
        b = tl.load(x_ptr + toks[:, None] * s_xn + (src * IN_TILE + rn)[None, :] * s_xc,
                    mask=(toks[:, None] < N) & col_ok[None, :], other=0.0)
        acc = dot(a, b, acc, PRECISION, UPCAST)
    tl.store(dw_ptr + g * s_wg + rm[:, None] * s_wo + (k * IN_TILE + rn)[None, :] * s_wc,
             cast_out(acc, dw_ptr.dtype.element_ty, UPCAST), mask=(rm[:, None] < OUT_TILE) & (rn[None, :] < IN_TILE))


_KEY = ["OUT_TILE", "IN_TILE", "K", "R"]
forward_tuned = triton.autotune(_configs(), key=_KEY, prune_configs_by={
    "early_config_prune": _prune("OUT_TILE", "IN_TILE")})(_forward_kernel)
grad_input_tuned = triton.autotune(_configs(), key=_KEY, prune_configs_by={
    "early_config_prune": _prune("IN_TILE", "OUT_TILE")})(_grad_input_kernel)
grad_weight_tuned = triton.autotune(_configs(), key=["OUT_TILE", "IN_TILE", "K"], prune_configs_by={
    "early_config_prune": _prune("IN_TILE", None)})(_grad_weight_kernel)


def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Output allocation (tests replace it with a NaN-filled one so that unwritten tiles fail)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _launch(kernel, grid_fn, args: tuple, config: dict | None, **constants) -> None:
    """Run the autotuned ``kernel`` or, with ``config`` (``BLOCK_M/N/K`` and optional ``num_warps``), its jit
    function directly with those blocks (used by tests to force several K steps and partial tiles)."""
    if config is None:
        kernel[grid_fn](*args, **constants)
    else:
        config = dict(config)
        warps = config.pop("num_warps", 4)
        kernel.fn[grid_fn(config)](*args, **constants, **config, num_warps=warps)


_offset_cache: dict[tuple, torch.Tensor] = {}


def _offsets_tensor(offsets: tuple[int, ...], device: torch.device) -> torch.Tensor:
    key = (offsets, str(device))
    if key not in _offset_cache:
        _offset_cache[key] = torch.tensor(offsets, dtype=torch.int32, device=device)
    return _offset_cache[key]


def check_inputs(x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...], padded_input: bool = False
                 ) -> tuple[int, int, int, int, int]:
    """Validate shapes; returns ``(N, G, out_tile, in_tile, K)``. ``padded_input``: ``x`` may have fewer columns
    than ``G * in_tile`` (the missing ones read as zero)."""
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
    if x.shape[1] > g * in_tile or (x.shape[1] != g * in_tile and not padded_input):
        raise ValueError(f"butterfly_matmul: x has {x.shape[1]} columns, expected G * in_tile = {g * in_tile}"
                         + (" or fewer" if padded_input else ""))
    if x.dtype != weight.dtype or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"butterfly_matmul: x and weight must share one dtype among float32/float16/bfloat16, got "
                        f"{x.dtype} and {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"butterfly_matmul: x on {x.device} but weight on {weight.device}")
    return x.shape[0], g, out_tile, in_tile, k


def _lowrank_args(h: torch.Tensor | None, factor: torch.Tensor | None, like: torch.Tensor) -> tuple:
    """``(h, factor, R, *h.stride(), *factor.stride())``; placeholders with ``R = 0`` without a low-rank term."""
    if h is None:
        return like, like, 0, 0, 0, 0, 0
    return h, factor, h.shape[1], *h.stride(), *factor.stride()


def run_forward(x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...], y: torch.Tensor,
                y_strides: tuple[int, int, int], out_features: int, h: torch.Tensor | None = None,
                u: torch.Tensor | None = None, bias: torch.Tensor | None = None, config: dict | None = None) -> None:
    """Write ``x B^T (+ h U^T) (+ bias)`` into ``y``: element (group ``g``, token ``n``, column ``o`` of the
    group) at ``g * s_g + n * s_n + o * s_o`` for ``y_strides = (s_g, s_n, s_o)``, columns ``>= out_features``
    (padding) skipped. ``x (N, <= G * in_tile)``; ``h (N, R)``, ``u (out_features, R)``."""
    n, g, out_tile, in_tile, k = check_inputs(x, weight, offsets, padded_input=True)
    low = _lowrank_args(h, u, x)
    args = (x, weight, _offsets_tensor(offsets, x.device), low[0], low[1], bias if bias is not None else x, y, n,
            x.shape[1], out_features, out_tile, in_tile, k, low[2], *x.stride(), *weight.stride(), *low[3:],
            *y_strides)
    prec, upcast = precision(x.dtype)
    _launch(forward_tuned, lambda m: (triton.cdiv(n, m["BLOCK_M"]), triton.cdiv(out_tile, m["BLOCK_N"]), g), args,
            config, HAS_LOWRANK=h is not None, HAS_BIAS=bias is not None, PRECISION=prec, UPCAST=upcast)


def run_grad_input(grad_out: torch.Tensor, grad_strides: tuple[int, int, int], weight: torch.Tensor,
                   offsets: tuple[int, ...], dx: torch.Tensor, out_features: int, dh: torch.Tensor | None = None,
                   v: torch.Tensor | None = None, config: dict | None = None) -> None:
    """Write ``dy B (+ dh V)`` into ``dx (N, in_features)``; ``dy`` addressed by ``grad_strides = (s_g, s_n,
    s_o)`` as in :func:`run_forward` (its columns ``>= out_features`` read as zero); ``dh (N, R)``, ``v (R, in)``."""
    n, in_features = dx.shape
    g, out_tile, kt = weight.shape
    in_tile = kt // len(offsets)
    low = _lowrank_args(dh, v, dx)
    args = (grad_out, weight, _offsets_tensor(offsets, weight.device), low[0], low[1], dx, n, in_features,
            out_features, out_tile, in_tile, len(offsets), low[2], *grad_strides, *weight.stride(), *low[3:],
            *dx.stride())
    prec, upcast = precision(weight.dtype)
    _launch(grad_input_tuned, lambda m: (triton.cdiv(n, m["BLOCK_M"]), triton.cdiv(in_tile, m["BLOCK_N"]), g), args,
            config, HAS_LOWRANK=dh is not None, PRECISION=prec, UPCAST=upcast)


def run_grad_weight(grad_out: torch.Tensor, grad_strides: tuple[int, int, int], x: torch.Tensor,
                    offsets: tuple[int, ...], dw: torch.Tensor, out_features: int, config: dict | None = None) -> None:
    """Write ``dy^T x`` on the nonzero tiles into ``dw (G, out_tile, K * in_tile)`` (``x (N, <= G * in_tile)``)."""
    n = x.shape[0]
    g, out_tile, kt = dw.shape
    k = len(offsets)
    in_tile = kt // k
    args = (grad_out, x, _offsets_tensor(offsets, x.device), dw, n, x.shape[1], out_features, out_tile, in_tile, k,
            *grad_strides, *x.stride(), *dw.stride())
    prec, upcast = precision(x.dtype)
    _launch(grad_weight_tuned,
            lambda m: (triton.cdiv(out_tile, m["BLOCK_M"]), triton.cdiv(in_tile, m["BLOCK_N"]), g * k), args, config,
            PRECISION=prec, UPCAST=upcast)


def forward(x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...], config: dict | None = None
            ) -> torch.Tensor:
    """``(N, G * in_tile), (G, out_tile, K * in_tile) -> (G, N, out_tile)`` (no autograd)."""
    n, g, out_tile, _, _ = check_inputs(x, weight, offsets)
    y = _empty((g, n, out_tile), x)
    run_forward(x, weight, offsets, y, y.stride(), g * out_tile, config=config)
    return y


def grad_input(grad_out: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...], config: dict | None = None
               ) -> torch.Tensor:
    """``dy (G, N, out_tile)`` (any strides) -> ``dx (N, G * in_tile)``."""
    g, n, out_tile = grad_out.shape
    dx = _empty((n, g * (weight.shape[2] // len(offsets))), weight)
    run_grad_input(grad_out, grad_out.stride(), weight, offsets, dx, g * out_tile, config=config)
    return dx


def grad_weight(grad_out: torch.Tensor, x: torch.Tensor, offsets: tuple[int, ...], config: dict | None = None
                ) -> torch.Tensor:
    """``dy (G, N, out_tile)``, ``x (N, G * in_tile)`` -> ``dW (G, out_tile, K * in_tile)`` on the nonzero tiles."""
    g, n, out_tile = grad_out.shape
    dw = _empty((g, out_tile, len(offsets) * (x.shape[1] // g)), x)
    run_grad_weight(grad_out, grad_out.stride(), x, offsets, dw, g * out_tile, config=config)
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
    x, weight = autocast_operands(x, weight)
    offsets = tuple(int(d) for d in offsets)
    check_inputs(x, weight, offsets)
    return TritonButterflyMatmul.apply(x, weight, offsets)


TRITON_KERNELS["butterfly_matmul"] = butterfly_matmul_triton
