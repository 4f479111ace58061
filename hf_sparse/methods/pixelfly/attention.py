"""Butterfly sparse attention, registered through transformers' ``AttentionInterface``.

Sequence positions are cut into blocks of ``block_size``; query block ``i`` attends to key blocks
``i XOR d`` for the flat-butterfly offsets ``d`` (the diagonal ``d = 0`` always), so each query reads
``(1 + n_factors) * block_size`` keys (plus the optional global blocks) and no ``T x T`` score matrix
is formed. Causal and padding masks
(the model's own, in the ``sdpa`` mask format) are applied on the gathered blocks. Sequences shorter than
two blocks, and single-token decoding steps, use exact attention.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ...kernels.backend import TRITON_KERNELS, select_backend
from .butterfly import butterfly_offsets

NAME_PREFIX = "hf_sparse_butterfly"
#: transient score memory per step of the block loop (forward and backward), in bytes
CHUNK_BYTES = 2**19


def implementation_name(block_size: int, n_factors: int, global_blocks: int = 0) -> str:
    return f"{NAME_PREFIX}_b{block_size}_f{n_factors}" + (f"_g{global_blocks}" if global_blocks else "")


def grid_factors(n_blocks: int) -> int:
    """Factors of the smallest power-of-two grid holding ``n_blocks`` sequence blocks (``ceil(log2 nb)``)."""
    return max(0, math.ceil(math.log2(max(n_blocks, 1))))


def layout_offsets(n_blocks: int, n_factors: int) -> list[int]:
    """XOR offsets of the flat butterfly over ``n_blocks`` sequence blocks, ``n_factors`` capped by the grid."""
    return butterfly_offsets(min(n_factors, grid_factors(n_blocks)))


def block_partners(n_blocks: int, n_factors: int, device: torch.device,
                   offsets: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(partners (nb, K), valid (nb, K))``: key blocks ``i XOR d`` of each query block (clamped where they
    fall past the last block, and marked invalid there). The offsets are the flat butterfly's, ``n_factors``
    capped by the grid size, unless given explicitly (``range(grid)`` is the dense layout)."""
    if offsets is None:
        offsets = layout_offsets(n_blocks, n_factors)
    partners = torch.arange(n_blocks, device=device)[:, None] ^ torch.tensor(offsets, device=device)[None, :]
    valid = partners < n_blocks
    return partners.clamp(max=n_blocks - 1), valid


@dataclass
class _BlockPairs:
    """The query/key block pairs of one XOR offset: ``rows`` and ``cols`` (``(m,)`` block indices), ``allowed``
    (bool, broadcastable to ``(B, H, m, bs, bs)``) and an optional additive float ``bias`` of that shape."""

    rows: torch.Tensor
    cols: torch.Tensor
    allowed: torch.Tensor
    bias: torch.Tensor | None


def layout_with_globals(n_blocks: int, offsets: list[int], global_blocks: int,
                        device: torch.device | None = None) -> torch.Tensor:
    """Block layout ``(nb, nb)`` bool: query block ``i`` reads key block ``j`` if ``i ^ j`` is an offset, or if
    ``i`` or ``j`` is one of the first ``global_blocks`` blocks (global rows read everything, every row reads
    the global columns). Causality is applied separately."""
    blocks = torch.arange(n_blocks, device=device)
    xor = blocks[:, None] ^ blocks[None, :]
    layout = torch.isin(xor, torch.tensor(offsets, device=device))
    if global_blocks:
        layout[:global_blocks, :] = True
        layout[:, :global_blocks] = True
    return layout


def _pair_indices(nb: int, offsets: list[int], is_causal: bool, global_blocks: int,
                  device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows, cols)`` block index pairs, grouped so that rows are distinct within a group: one group per XOR
    offset, then one per key block for the global blocks the offsets do not already cover."""
    blocks = torch.arange(nb, device=device)
    groups = []
    for offset in offsets:
        partner = blocks ^ offset
        keep = (partner < nb) & ((partner <= blocks) if is_causal else True)
        if keep.any():
            groups.append((blocks[keep], partner[keep]))
    if global_blocks:
        extra = layout_with_globals(nb, offsets, global_blocks, device) & ~layout_with_globals(nb, offsets, 0, device)
        if is_causal:
            extra &= torch.ones(nb, nb, dtype=torch.bool, device=device).tril()
        for col in extra.any(0).nonzero().flatten().tolist():
            rows = extra[:, col].nonzero().flatten()
            groups.append((rows, torch.full_like(rows, col)))
    return groups


def _block_pairs(nb: int, block_size: int, t: int, offsets: list[int], is_causal: bool,
                 mask: torch.Tensor | None, device: torch.device, global_blocks: int = 0) -> list[_BlockPairs]:
    offs = torch.arange(block_size, device=device)
    pairs = []
    for rows, cols in _pair_indices(nb, offsets, is_causal, global_blocks, device):
        q_pos = (rows[:, None] * block_size + offs)[:, :, None]
        k_pos = (cols[:, None] * block_size + offs)[:, None, :]
        allowed = k_pos < t
        if is_causal:
            allowed = allowed & (k_pos <= q_pos)
        bias = None
        if mask is not None:
            picked = mask[:, :, q_pos, k_pos]
            if picked.dtype == torch.bool:
                allowed = allowed & picked
            else:
                bias = picked
        pairs.append(_BlockPairs(rows, cols, allowed, bias))
    return pairs


def _chunked(pairs: list[_BlockPairs], blocks_per_chunk: int) -> list[_BlockPairs]:
    """Split each offset's block pairs into chunks of at most ``blocks_per_chunk`` query blocks, so that the
    transient scores of one step stay small whatever the sequence length."""
    chunks = []
    for pair in pairs:
        for start in range(0, pair.rows.numel(), blocks_per_chunk):
            part = slice(start, start + blocks_per_chunk)
            allowed = pair.allowed[..., part, :, :] if pair.allowed.shape[-3] > 1 else pair.allowed
            bias = None if pair.bias is None else pair.bias[..., part, :, :]
            chunks.append(_BlockPairs(pair.rows[part], pair.cols[part], allowed, bias))
    return chunks


def _scores(q_b: torch.Tensor, k_b: torch.Tensor, pair: _BlockPairs, scale: float) -> torch.Tensor:
    """Masked scores ``(B, H, m, bs, bs)`` of one offset's block pairs, in float32 for half inputs."""
    scores = torch.matmul(q_b[:, :, pair.rows], k_b[:, :, pair.cols].transpose(-1, -2))
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    # in place: none of these ops needs its output for autograd, and each step's temporaries stay one tensor
    scores.mul_(scale)
    if pair.bias is not None:
        scores.add_(pair.bias.to(scores.dtype))
    return scores.masked_fill_(~pair.allowed, float("-inf"))


def _attend(q_b: torch.Tensor, k_b: torch.Tensor, v_b: torch.Tensor, pairs: list[_BlockPairs], scale: float,
            dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out (B, H, nb, bs, D), logsumexp (B, H, nb, bs))``: one softmax over all offsets of each query row,
    accumulated online (running row maximum and sum, rescaled as offsets arrive), so only one offset's block
    scores exist at a time. Fully masked rows get output 0 and logsumexp ``-inf``."""
    b, h, nb, bs, d = q_b.shape
    dtype = torch.float32 if q_b.dtype in (torch.float16, torch.bfloat16) else q_b.dtype
    row_max = torch.full((b, h, nb, bs), float("-inf"), device=q_b.device, dtype=dtype)
    row_sum = torch.zeros(b, h, nb, bs, device=q_b.device, dtype=dtype)
    out = torch.zeros(b, h, nb, bs, d, device=q_b.device, dtype=dtype)
    # Without autograd (the custom Function's forward) the accumulators are updated in place; under autograd
    # (the dropout path) each update makes a new tensor so the graph keeps the old values.
    in_place = not (torch.is_grad_enabled() and any(t.requires_grad for t in (q_b, k_b, v_b)))

    def put(acc: torch.Tensor, rows: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return acc.index_copy_(2, rows, value) if in_place else acc.index_copy(2, rows, value)

    for pair in pairs:
        rows = pair.rows  # distinct within one group
        scores = _scores(q_b, k_b, pair, scale)
        new_max = torch.maximum(row_max[:, :, rows], scores.detach().amax(-1))
        shift = new_max.nan_to_num(0.0, neginf=0.0)
        rescale = torch.exp(row_max[:, :, rows] - shift)  # 0 where nothing was seen yet
        weights = scores.sub_(shift[..., None]).exp_() if in_place else torch.exp(scores - shift[..., None])
        row_sum = put(row_sum, rows, row_sum[:, :, rows] * rescale + weights.sum(-1))
        if dropout:  # on the attention probabilities (the normalizer is unaffected)
            weights = F.dropout(weights, p=dropout)
        update = out[:, :, rows] * rescale[..., None] + torch.matmul(weights, v_b[:, :, pair.cols].to(dtype))
        out = put(out, rows, update)
        row_max = put(row_max, rows, new_max)
    norm = row_sum.clamp_min(torch.finfo(dtype).tiny)[..., None]
    out = out.div_(norm) if in_place else out / norm
    return out, row_max.nan_to_num(0.0, neginf=0.0) + row_sum.log()


class _ButterflyAttention(torch.autograd.Function):
    """Memory-lean butterfly attention: the forward keeps only ``q, k, v``, the output and the row
    logsumexp; the backward recomputes each offset's block scores (flash-attention style)."""

    @staticmethod
    def forward(ctx, q_b, k_b, v_b, scale: float, pairs: list[_BlockPairs]):
        out, lse = _attend(q_b, k_b, v_b, pairs, scale)
        ctx.save_for_backward(q_b, k_b, v_b, out, lse)
        ctx.scale, ctx.pairs = scale, pairs
        return out.to(v_b.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q_b, k_b, v_b, out, lse = ctx.saved_tensors
        scale, pairs = ctx.scale, ctx.pairs
        grad_out = grad_out.to(out.dtype)
        delta = torch.matmul(grad_out.unsqueeze(-2), out.unsqueeze(-1))[..., 0, 0]  # (B, H, nb, bs), no temp
        dq, dk, dv = (torch.zeros(t.shape, dtype=out.dtype, device=t.device) for t in (q_b, k_b, v_b))
        for pair in pairs:
            rows, cols = pair.rows, pair.cols
            probs = _scores(q_b, k_b, pair, scale).sub_(lse[:, :, rows, :, None]).exp_().nan_to_num_(0.0)
            g_rows = grad_out[:, :, rows]
            dv.index_add_(2, cols, torch.matmul(probs.transpose(-1, -2), g_rows))
            d_probs = torch.matmul(g_rows, v_b[:, :, cols].to(out.dtype).transpose(-1, -2))
            d_scores = d_probs.sub_(delta[:, :, rows, :, None]).mul_(probs).mul_(scale)
            dq.index_add_(2, rows, torch.matmul(d_scores, k_b[:, :, cols].to(out.dtype)))
            dk.index_add_(2, cols, torch.matmul(d_scores.transpose(-1, -2), q_b[:, :, rows].to(out.dtype)))
        return dq.to(q_b.dtype), dk.to(k_b.dtype), dv.to(v_b.dtype), None, None


def butterfly_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_size: int,
                        n_factors: int, is_causal: bool = False, attention_mask: torch.Tensor | None = None,
                        scaling: float | None = None, dropout: float = 0.0, training: bool = False,
                        offsets: list[int] | None = None, global_blocks: int = 0) -> torch.Tensor:
    """Block-butterfly softmax attention. ``query``, ``key``, ``value``: ``(B, H, T, D)`` (same ``T``);
    ``attention_mask``: None, or a bool (True = attend) / additive float mask broadcastable to
    ``(B, H, T, T)``. Returns ``(B, H, T, D)``. Memory and work grow as ``T * (1 + n_factors) * block_size``.
    ``offsets`` overrides the XOR offsets of the layout (see :func:`block_partners`). ``global_blocks``: the
    first blocks are global (they read every key block and every query block reads them), see
    :func:`layout_with_globals`.

    One XOR offset at a time: offset ``d`` pairs query block ``i`` with key block ``i ^ d``, so its scores are
    one batched product over the block pairs that exist (with ``is_causal``, only those with ``i ^ d <= i``).
    Without dropout the backward recomputes the scores instead of storing them.
    """
    b, h, t, d = query.shape
    nb = math.ceil(t / block_size)
    tp = nb * block_size
    if tp != t:
        pad = (0, 0, 0, tp - t)
        query, key, value = F.pad(query, pad), F.pad(key, pad), F.pad(value, pad)
    if offsets is None:
        offsets = layout_offsets(nb, n_factors)
    mask = None
    if attention_mask is not None:
        mask = attention_mask
        if tp != t:
            mask = F.pad(mask, (0, tp - t, 0, tp - t), value=False if mask.dtype == torch.bool else 0.0)
        mask = mask.expand(mask.shape[0], mask.shape[1], tp, tp)
    scale = scaling if scaling is not None else 1 / math.sqrt(d)
    if not (dropout and training) and select_backend("butterfly_attention", query) == "triton":
        # the kernel returns None for layouts/masks it does not handle (then the PyTorch path below runs)
        out = TRITON_KERNELS["butterfly_attention"](query, key, value, block_size, offsets, is_causal, mask, t,
                                                     scale, min(global_blocks, nb))
        if out is not None:
            return out if tp == t else out[:, :, :t]
    pairs = _block_pairs(nb, block_size, t, offsets, is_causal, mask, query.device, min(global_blocks, nb))
    per_block = b * h * block_size * block_size * 4  # bytes of one query block's scores (float32)
    pairs = _chunked(pairs, max(1, CHUNK_BYTES // per_block))
    q_b, k_b, v_b = (x.reshape(b, h, nb, block_size, d) for x in (query, key, value))
    if dropout and training:
        out = _attend(q_b, k_b, v_b, pairs, scale, dropout)[0].to(value.dtype)
    else:
        out = _ButterflyAttention.apply(q_b, k_b, v_b, scale, pairs)
    out = out.reshape(b, h, tp, d)
    return out if tp == t else out[:, :, :t]  # a no-op slice would still copy the gradient in backward


def butterfly_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                scaling: float | None = None, is_causal: bool | None = None, *,
                                block_size: int, n_factors: int, global_blocks: int = 0,
                                **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``(B, H, T, D)`` inputs -> ``((B, T, H, D), None)``."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if q_len != kv_len or q_len < 2 * block_size or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = butterfly_attention(query, key, value, block_size, n_factors, is_causal=causal and attention_mask is None,
                              attention_mask=attention_mask, scaling=scaling, dropout=dropout,
                              training=module.training, global_blocks=global_blocks)
    return out.transpose(1, 2).contiguous(), None


def register(block_size: int, n_factors: int, global_blocks: int = 0) -> str:
    """Register the attention function (and the ``sdpa`` mask format for it); returns its name."""
    name = implementation_name(block_size, n_factors, global_blocks)
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, functools.partial(butterfly_attention_forward, block_size=block_size,
                                                            n_factors=n_factors, global_blocks=global_blocks))
        AttentionMaskInterface.register(name, sdpa_mask)
    return name
