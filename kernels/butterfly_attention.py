"""Triton block-sparse flash attention for the butterfly layout (forward and backward).

Same layout as the PyTorch path (``hf_sparse.methods.pixelfly.attention``): query block ``i`` reads key blocks
``i XOR d`` for the layout's offsets ``d`` (skipping those past the last block and, when causal, those after
``i``). One program per (query block, batch x head) runs an online softmax over those key blocks, so no
``T x T`` matrix exists; the backward recomputes the block scores from the saved row logsumexp:

* ``dq`` per query block, over its key blocks;
* ``dk, dv`` per key block, over the query blocks that read it (``i -> i ^ d`` is its own inverse, so these are
  the key block's own XOR partners): no atomics.

Masks: causal, plus a key padding mask ``(B, T)``. The model's 4-D mask is reduced to those when it is exactly
"key padding" or "causal and key padding" (the usual cases); anything else (arbitrary or per-head masks,
additive biases, global blocks) is reported as unsupported and runs on the PyTorch path. Importing this module
registers ``"butterfly_attention"`` in ``TRITON_KERNELS``. Warps and pipeline stages are autotuned per
``(block size, head dim, causal)`` and dtype (one config in the interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

from .backend import TRITON_KERNELS
from .common import cast_out, dot, precision


@triton.jit
def _scores(q, k_ptr, keep_ptr, i, j, rows, cols, rd, D, s_kt, s_kd, s_keep, scale, IS_CAUSAL: tl.constexpr,
            BS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Masked scores ``(BS, BS)`` (float32, ``-inf`` where not allowed) of query block ``i`` against key block
    ``j``; also returns the key block ``(BS, BLOCK_D)``."""
    k_pos = j * BS + cols
    k = tl.load(k_ptr + k_pos[:, None] * s_kt + rd[None, :] * s_kd, mask=rd[None, :] < D, other=0.0)
    s = dot(q, tl.trans(k), tl.zeros((BS, BS), dtype=tl.float32), PRECISION, UPCAST) * scale
    allowed = tl.load(keep_ptr + k_pos * s_keep) != 0
    allowed = allowed[None, :] & (rows[:, None] >= 0)
    if IS_CAUSAL:
        allowed = allowed & (k_pos[None, :] <= (i * BS + rows)[:, None])
    return tl.where(allowed, s, float("-inf")), k


@triton.jit
def _forward_kernel(q_ptr, k_ptr, v_ptr, keep_ptr, off_ptr, o_ptr, lse_ptr, H, NB, D, K, scale,
                    s_qb, s_qh, s_qt, s_qd, s_keep_b, s_keep_t,
                    IS_CAUSAL: tl.constexpr, BS: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                    UPCAST: tl.constexpr):
    """Program ``(i, b * H + h)``: query block ``i``. q, k, v, o share strides ``s_q*``; lse is ``(B * H, T)``."""
    i, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    base = b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    rows, rd = tl.arange(0, BS), tl.arange(0, BLOCK_D)
    q_pos = i * BS + rows
    q = tl.load(q_ptr + base + q_pos[:, None] * s_qt + rd[None, :] * s_qd, mask=rd[None, :] < D, other=0.0)
    m = tl.full((BS,), float("-inf"), dtype=tl.float32)
    denom = tl.zeros((BS,), dtype=tl.float32)
    acc = tl.zeros((BS, BLOCK_D), dtype=tl.float32)
    for kk in range(K):
        j = i ^ tl.load(off_ptr + kk)
        valid = j < NB
        if IS_CAUSAL:
            valid = valid & (j <= i)
        if valid:
            s, _ = _scores(q, k_ptr + base, keep_ptr + b * s_keep_b, i, j, rows, rows, rd, D, s_qt, s_qd,
                           s_keep_t, scale, IS_CAUSAL, BS, PRECISION, UPCAST)
            v = tl.load(v_ptr + base + (j * BS + rows)[:, None] * s_qt + rd[None, :] * s_qd,
                        mask=rd[None, :] < D, other=0.0)
            m_new = tl.maximum(m, tl.max(s, 1))
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m - shift)
            p = tl.exp(s - shift[:, None])
            denom = denom * alpha + tl.sum(p, 1)
            acc = dot(cast_out(p, v.dtype, UPCAST), v, acc * alpha[:, None], PRECISION, UPCAST)
            m = m_new
    out = acc / tl.maximum(denom, 1e-30)[:, None]
    lse = tl.where(denom > 0, m + tl.log(tl.maximum(denom, 1e-30)), float("-inf"))
    tl.store(o_ptr + base + q_pos[:, None] * s_qt + rd[None, :] * s_qd, cast_out(out, o_ptr.dtype.element_ty, UPCAST),
             mask=rd[None, :] < D)
    tl.store(lse_ptr + bh.to(tl.int64) * NB * BS + q_pos, lse)


@triton.jit
def _grad_query_kernel(q_ptr, k_ptr, v_ptr, keep_ptr, off_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, H, NB, D, K,
                       scale, s_qb, s_qh, s_qt, s_qd, s_keep_b, s_keep_t,
                       IS_CAUSAL: tl.constexpr, BS: tl.constexpr, BLOCK_D: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Program ``(i, b * H + h)``: ``dq`` of query block ``i`` (all of q, k, v, do, dq share strides)."""
    i, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    base = b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    rows, rd = tl.arange(0, BS), tl.arange(0, BLOCK_D)
    q_pos = i * BS + rows
    tile = q_pos[:, None] * s_qt + rd[None, :] * s_qd
    q = tl.load(q_ptr + base + tile, mask=rd[None, :] < D, other=0.0)
    do = tl.load(do_ptr + base + tile, mask=rd[None, :] < D, other=0.0)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * NB * BS + q_pos)
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # fully masked rows: probabilities 0
    delta = tl.load(delta_ptr + bh.to(tl.int64) * NB * BS + q_pos)
    dq = tl.zeros((BS, BLOCK_D), dtype=tl.float32)
    for kk in range(K):
        j = i ^ tl.load(off_ptr + kk)
        valid = j < NB
        if IS_CAUSAL:
            valid = valid & (j <= i)
        if valid:
            s, k = _scores(q, k_ptr + base, keep_ptr + b * s_keep_b, i, j, rows, rows, rd, D, s_qt, s_qd,
                           s_keep_t, scale, IS_CAUSAL, BS, PRECISION, UPCAST)
            v = tl.load(v_ptr + base + (j * BS + rows)[:, None] * s_qt + rd[None, :] * s_qd,
                        mask=rd[None, :] < D, other=0.0)
            p = tl.exp(s - lse[:, None])
            dp = dot(do, tl.trans(v), tl.zeros((BS, BS), dtype=tl.float32), PRECISION, UPCAST)
            ds = p * (dp - delta[:, None]) * scale
            dq = dot(cast_out(ds, k.dtype, UPCAST), k, dq, PRECISION, UPCAST)
    tl.store(dq_ptr + base + tile, cast_out(dq, dq_ptr.dtype.element_ty, UPCAST), mask=rd[None, :] < D)


@triton.jit
def _grad_key_value_kernel(q_ptr, k_ptr, v_ptr, keep_ptr, off_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                           H, NB, D, K, scale, s_qb, s_qh, s_qt, s_qd, s_keep_b, s_keep_t,
                           IS_CAUSAL: tl.constexpr, BS: tl.constexpr, BLOCK_D: tl.constexpr,
                           PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Program ``(j, b * H + h)``: ``dk, dv`` of key block ``j``, over the query blocks ``j ^ d`` reading it."""
    j, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    base = b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    rows, rd = tl.arange(0, BS), tl.arange(0, BLOCK_D)
    k_tile = (j * BS + rows)[:, None] * s_qt + rd[None, :] * s_qd
    v = tl.load(v_ptr + base + k_tile, mask=rd[None, :] < D, other=0.0)
    dk = tl.zeros((BS, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BS, BLOCK_D), dtype=tl.float32)
    for kk in range(K):
        i = j ^ tl.load(off_ptr + kk)
        valid = i < NB
        if IS_CAUSAL:
            valid = valid & (j <= i)
        if valid:
            q_pos = i * BS + rows
            tile = q_pos[:, None] * s_qt + rd[None, :] * s_qd
            q = tl.load(q_ptr + base + tile, mask=rd[None, :] < D, other=0.0)
            do = tl.load(do_ptr + base + tile, mask=rd[None, :] < D, other=0.0)
            lse = tl.load(lse_ptr + bh.to(tl.int64) * NB * BS + q_pos)
            lse = tl.where(lse == float("-inf"), float("inf"), lse)
            delta = tl.load(delta_ptr + bh.to(tl.int64) * NB * BS + q_pos)
            s, k = _scores(q, k_ptr + base, keep_ptr + b * s_keep_b, i, j, rows, rows, rd, D, s_qt, s_qd,
                           s_keep_t, scale, IS_CAUSAL, BS, PRECISION, UPCAST)
            p = tl.exp(s - lse[:, None])
            dv = dot(tl.trans(cast_out(p, do.dtype, UPCAST)), do, dv, PRECISION, UPCAST)
            dp = dot(do, tl.trans(v), tl.zeros((BS, BS), dtype=tl.float32), PRECISION, UPCAST)
            ds = p * (dp - delta[:, None]) * scale
            dk = dot(tl.trans(cast_out(ds, q.dtype, UPCAST)), q, dk, PRECISION, UPCAST)
    tl.store(dk_ptr + base + k_tile, cast_out(dk, dk_ptr.dtype.element_ty, UPCAST), mask=rd[None, :] < D)
    tl.store(dv_ptr + base + k_tile, cast_out(dv, dv_ptr.dtype.element_ty, UPCAST), mask=rd[None, :] < D)


def _configs() -> list[triton.Config]:
    """Warps and pipeline depth (the tile is the layout's block: one query or key block per program)."""
    return [triton.Config({}, num_warps=warps, num_stages=stages) for warps in (4, 8) for stages in (1, 2, 3)]


def _prune(configs, named_args, **kwargs):
    """In the interpreter keep one config (no benchmarking): 8 warps for head dims over 64, else 4."""
    if not knobs.runtime.interpret:
        return configs
    warps = 8 if {**named_args, **kwargs}["BLOCK_D"] > 64 else 4
    return [next(c for c in configs if c.num_warps == warps)]


_KEY = ["BS", "BLOCK_D", "IS_CAUSAL"]
forward_tuned, grad_query_tuned, grad_key_value_tuned = (
    triton.autotune(_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})(kernel)
    for kernel in (_forward_kernel, _grad_query_kernel, _grad_key_value_kernel))


def _empty(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Output allocation (tests replace it with a NaN-filled one so that unwritten tiles fail)."""
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)


def _launch_args(q: torch.Tensor, keep: torch.Tensor, offsets: torch.Tensor, block_size: int, scale: float):
    b, h, t, d = q.shape
    return (h, t // block_size, d, offsets.numel(), scale, *q.stride(), *keep.stride())


def _meta(q: torch.Tensor, block_size: int, is_causal: bool) -> dict:
    prec, upcast = precision(q.dtype)
    d = q.shape[-1]
    return {"IS_CAUSAL": is_causal, "BS": block_size, "BLOCK_D": max(16, triton.next_power_of_2(d)),
            "PRECISION": prec, "UPCAST": upcast}


class TritonButterflyAttention(torch.autograd.Function):
    """``q, k, v (B, H, T, D)`` (``T`` a multiple of ``block_size``), ``keep (B or 1, T)`` int8 key padding mask
    -> ``(B, H, T, D)``."""

    @staticmethod
    def forward(ctx, q, k, v, keep, block_size: int, offsets: torch.Tensor, is_causal: bool, scale: float):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b, h, t, _ = q.shape
        out = _empty(q.shape, q)
        lse = _empty((b * h, t), q, torch.float32)
        forward_tuned[(t // block_size, b * h)](q, k, v, keep, offsets, out, lse,
                                                *_launch_args(q, keep, offsets, block_size, scale),
                                                **_meta(q, block_size, is_causal))
        ctx.save_for_backward(q, k, v, keep, offsets, out, lse)
        ctx.block_size, ctx.is_causal, ctx.scale = block_size, is_causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, keep, offsets, out, lse = ctx.saved_tensors
        bs, causal, scale = ctx.block_size, ctx.is_causal, ctx.scale
        b, h, t, _ = q.shape
        grad_out = grad_out.to(q.dtype).contiguous()
        delta = (grad_out.float() * out.float()).sum(-1).reshape(b * h, t)  # rowwise, O(T * D)
        dq, dk, dv = _empty(q.shape, q), _empty(k.shape, k), _empty(v.shape, v)
        args = _launch_args(q, keep, offsets, bs, scale)
        meta = _meta(q, bs, causal)
        grad_query_tuned[(t // bs, b * h)](q, k, v, keep, offsets, grad_out, lse, delta, dq, *args, **meta)
        grad_key_value_tuned[(t // bs, b * h)](q, k, v, keep, offsets, grad_out, lse, delta, dk, dv, *args, **meta)
        return dq, dk, dv, None, None, None, None, None


def key_padding(mask: torch.Tensor | None, t: int, padded: int, is_causal: bool, device: torch.device
                ) -> tuple[torch.Tensor, bool] | None:
    """``(keep (B or 1, padded) int8, causal)`` such that "key ``j`` kept, and ``j <= i`` if causal" equals
    ``mask`` (bool, broadcast to ``(B, H, padded, padded)``) combined with ``is_causal`` and ``j < t`` on the
    ``t`` real query rows; None when there is no such pair (per-head or arbitrary masks, additive float masks)."""
    positions = torch.arange(padded, device=device)
    if mask is None:
        return (positions < t).to(torch.int8)[None], is_causal
    if mask.dtype != torch.bool:
        return None
    if mask.shape[1] > 1 and mask.stride(1) != 0 and not bool((mask == mask[:, :1]).all()):
        return None
    tril = positions[:, None] >= positions[None, :]
    total = (mask[:, 0] & (positions < t))[:, :t]
    if is_causal:
        total = total & tril[:t]
    keep = total.any(-2)
    for causal in (True,) if is_causal else (False, True):
        expected = keep[:, None, :] & tril[:t] if causal else keep[:, None, :].expand_as(total)
        if torch.equal(total, expected):
            return keep.to(torch.int8), causal
    return None


_offset_cache: dict[tuple, torch.Tensor] = {}


def butterfly_attention_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_size: int,
                               offsets: list[int], is_causal: bool, mask: torch.Tensor | None, t: int,
                               scale: float, global_blocks: int = 0) -> torch.Tensor | None:
    """Butterfly attention on the kernels. ``query, key, value``: ``(B, H, Tp, D)`` padded to a multiple of
    ``block_size`` (the real length is ``t``); ``mask``: None or the model's mask padded/expanded to
    ``(B, H, Tp, Tp)``. Returns ``(B, H, Tp, D)``, or None when the layout or mask is one the kernel does not
    handle (global blocks, a block size under 16, non-padding masks): the caller then uses the PyTorch path."""
    if global_blocks or block_size < 16 or block_size & (block_size - 1) or query.shape[-1] > 256:
        return None
    if query.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not (
            query.dtype == key.dtype == value.dtype):
        return None
    reduced = key_padding(mask, t, query.shape[2], is_causal, query.device)
    if reduced is None:
        return None
    keep, causal = reduced
    keep = keep.expand(query.shape[0], -1)  # stride 0 over the batch for a shared mask
    key_ = (tuple(offsets), str(query.device))
    if key_ not in _offset_cache:
        _offset_cache[key_] = torch.tensor(offsets, dtype=torch.int32, device=query.device)
    return TritonButterflyAttention.apply(query, key, value, keep, block_size, _offset_cache[key_], causal, scale)


TRITON_KERNELS["butterfly_attention"] = butterfly_attention_triton
