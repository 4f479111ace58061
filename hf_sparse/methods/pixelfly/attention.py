"""Butterfly sparse attention, registered through transformers' ``AttentionInterface``.

Sequence positions are cut into blocks of ``block_size``; query block ``i`` attends to key blocks
``i XOR d`` for the flat-butterfly offsets ``d`` (the diagonal ``d = 0`` always), so each query reads
``(1 + n_factors) * block_size`` keys and no ``T x T`` score matrix is formed. Causal and padding masks
(the model's own, in the ``sdpa`` mask format) are applied on the gathered blocks. Sequences shorter than
two blocks, and single-token decoding steps, use exact attention.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .butterfly import butterfly_offsets

NAME_PREFIX = "hf_sparse_butterfly"


def implementation_name(block_size: int, n_factors: int) -> str:
    return f"{NAME_PREFIX}_b{block_size}_f{n_factors}"


def block_partners(n_blocks: int, n_factors: int, device: torch.device,
                   offsets: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(partners (nb, K), valid (nb, K))``: key blocks ``i XOR d`` of each query block (clamped where they
    fall past the last block, and marked invalid there). The offsets are the flat butterfly's, ``n_factors``
    capped by the grid size, unless given explicitly (``range(grid)`` is the dense layout)."""
    grid = 1 << max(0, math.ceil(math.log2(max(n_blocks, 1))))
    if offsets is None:
        offsets = butterfly_offsets(min(n_factors, int(math.log2(grid))))
    partners = torch.arange(n_blocks, device=device)[:, None] ^ torch.tensor(offsets, device=device)[None, :]
    valid = partners < n_blocks
    return partners.clamp(max=n_blocks - 1), valid


def butterfly_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_size: int,
                        n_factors: int, is_causal: bool = False, attention_mask: torch.Tensor | None = None,
                        scaling: float | None = None, dropout: float = 0.0, training: bool = False,
                        offsets: list[int] | None = None) -> torch.Tensor:
    """Block-butterfly softmax attention. ``query``, ``key``, ``value``: ``(B, H, T, D)`` (same ``T``);
    ``attention_mask``: None, or a bool (True = attend) / additive float mask broadcastable to
    ``(B, H, T, T)``. Returns ``(B, H, T, D)``. Memory and work grow as ``T * (1 + n_factors) * block_size``.
    ``offsets`` overrides the XOR offsets of the layout (see :func:`block_partners`).

    One XOR offset at a time: offset ``d`` pairs query block ``i`` with key block ``i ^ d``, so its scores are
    one batched product over the block pairs that exist (with ``is_causal``, only those with ``i ^ d <= i``);
    a shared row maximum and row sum combine the offsets into one softmax.
    """
    b, h, t, d = query.shape
    nb = math.ceil(t / block_size)
    tp = nb * block_size
    if tp != t:
        pad = (0, 0, 0, tp - t)
        query, key, value = F.pad(query, pad), F.pad(key, pad), F.pad(value, pad)
    device = query.device
    grid = 1 << max(0, math.ceil(math.log2(nb)))
    if offsets is None:
        offsets = butterfly_offsets(min(n_factors, int(math.log2(grid))))
    mask = None
    if attention_mask is not None:
        mask = attention_mask
        if tp != t:
            mask = F.pad(mask, (0, tp - t, 0, tp - t), value=False if mask.dtype == torch.bool else 0.0)
        mask = mask.expand(mask.shape[0], mask.shape[1], tp, tp)
    scale = scaling if scaling is not None else 1 / math.sqrt(d)
    q_b = query.view(b, h, nb, block_size, d)
    k_b = key.view(b, h, nb, block_size, d)
    v_b = value.view(b, h, nb, block_size, d)
    blocks = torch.arange(nb, device=device)
    offs = torch.arange(block_size, device=device)
    low_precision = query.dtype in (torch.float16, torch.bfloat16)

    pieces = []  # (query block indices, key block indices, masked scores)
    for offset in offsets:
        partner = blocks ^ offset
        keep = (partner < nb) & ((partner <= blocks) if is_causal else True)
        rows, cols = blocks[keep], partner[keep]
        if rows.numel() == 0:
            continue
        scores = torch.matmul(q_b[:, :, rows], k_b[:, :, cols].transpose(-1, -2)) * scale  # (B, H, m, bs, bs)
        if low_precision:
            scores = scores.float()
        q_pos = (rows[:, None] * block_size + offs)[:, :, None]
        k_pos = (cols[:, None] * block_size + offs)[:, None, :]
        allowed = k_pos < t
        if is_causal:
            allowed = allowed & (k_pos <= q_pos)
        if mask is not None:
            picked = mask[:, :, q_pos, k_pos]
            if picked.dtype == torch.bool:
                allowed = allowed & picked
            else:
                scores = scores + picked.to(scores.dtype)
        pieces.append((rows, cols, scores.masked_fill(~allowed, float("-inf"))))

    row_max = torch.full((b, h, nb, block_size), float("-inf"), device=device, dtype=pieces[0][2].dtype)
    for rows, _, scores in pieces:
        row_max[:, :, rows] = torch.maximum(row_max[:, :, rows], scores.detach().amax(-1))
    row_max = row_max.nan_to_num(0.0, neginf=0.0)  # fully masked rows: any finite shift
    row_sum = torch.zeros_like(row_max)
    out = torch.zeros(b, h, nb, block_size, d, device=device, dtype=row_max.dtype)
    for rows, cols, scores in pieces:
        weights = torch.exp(scores - row_max[:, :, rows, :, None])
        row_sum = row_sum.index_add(2, rows, weights.sum(-1))
        if dropout and training:  # dropout on the attention probabilities (the normalizer is unaffected)
            weights = F.dropout(weights, p=dropout)
        out = out.index_add(2, rows, torch.matmul(weights, v_b[:, :, cols].to(weights.dtype)))
    out = out / row_sum.clamp_min(torch.finfo(row_sum.dtype).tiny)[..., None]  # fully masked rows stay 0
    return out.to(value.dtype).reshape(b, h, tp, d)[:, :, :t]


def butterfly_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                scaling: float | None = None, is_causal: bool | None = None, *,
                                block_size: int, n_factors: int, **kwargs) -> tuple[torch.Tensor, None]:
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
                              training=module.training)
    return out.transpose(1, 2).contiguous(), None


def register(block_size: int, n_factors: int) -> str:
    """Register the attention function (and the ``sdpa`` mask format for it); returns its name."""
    name = implementation_name(block_size, n_factors)
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, functools.partial(butterfly_attention_forward, block_size=block_size,
                                                            n_factors=n_factors))
        AttentionMaskInterface.register(name, sdpa_mask)
    return name
