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
    """
    b, h, t, d = query.shape
    nb = math.ceil(t / block_size)
    tp = nb * block_size
    if tp != t:
        pad = (0, 0, 0, tp - t)
        query, key, value = F.pad(query, pad), F.pad(key, pad), F.pad(value, pad)
    partners, valid = block_partners(nb, n_factors, query.device, offsets)
    k_blocks = partners.shape[1]
    q_b = query.view(b, h, nb, block_size, d)
    k_g = key.view(b, h, nb, block_size, d)[:, :, partners].reshape(b, h, nb, k_blocks * block_size, d)
    v_g = value.view(b, h, nb, block_size, d)[:, :, partners].reshape(b, h, nb, k_blocks * block_size, d)
    scale = scaling if scaling is not None else 1 / math.sqrt(d)
    scores = torch.matmul(q_b, k_g.transpose(-1, -2)) * scale  # (B, H, nb, bs, K * bs)

    offs = torch.arange(block_size, device=query.device)
    q_pos = (torch.arange(nb, device=query.device)[:, None] * block_size + offs)[:, :, None]  # (nb, bs, 1)
    k_pos = (partners[:, :, None] * block_size + offs).reshape(nb, 1, -1)  # (nb, 1, K * bs)
    allowed = valid.repeat_interleave(block_size, 1)[:, None, :] & (k_pos < t)
    if is_causal:
        allowed = allowed & (k_pos <= q_pos)
    allowed = allowed.expand(nb, block_size, k_blocks * block_size)
    if attention_mask is not None:
        mask = attention_mask
        if tp != t:
            mask = F.pad(mask, (0, tp - t, 0, tp - t), value=False if mask.dtype == torch.bool else 0.0)
        mask = mask.expand(mask.shape[0], mask.shape[1], tp, tp)
        picked = mask[:, :, q_pos.expand(nb, block_size, 1), k_pos.expand(nb, block_size, k_blocks * block_size)]
        if picked.dtype == torch.bool:
            allowed = allowed & picked
        else:
            scores = scores + picked.to(scores.dtype)
    scores = scores.masked_fill(~allowed, float("-inf"))
    low_precision = scores.dtype in (torch.float16, torch.bfloat16)
    probs = torch.softmax(scores.float() if low_precision else scores, dim=-1)
    probs = probs.nan_to_num(0.0).to(value.dtype)  # fully masked rows (padding queries) -> 0
    if dropout and training:
        probs = F.dropout(probs, p=dropout)
    out = torch.matmul(probs, v_g).reshape(b, h, tp, d)
    return out[:, :, :t]


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
