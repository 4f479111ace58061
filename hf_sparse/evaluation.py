"""Evaluation helpers. ``perplexity_of_blocks``: causal-LM perplexity over pre-tokenized blocks."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def perplexity_of_blocks(model: nn.Module, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """``exp(mean next-token cross-entropy)`` of a causal LM over ``blocks`` ``(num_blocks, block_len)``.

    Every block is scored independently (no context carried across blocks); all blocks have equal
    length, so the mean over batches weights every predicted token equally.
    """
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be (num_blocks, block_len >= 2), got shape {tuple(blocks.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start:start + batch_size].to(device)
        loss = model(input_ids=batch, labels=batch).loss
        tokens = batch.shape[0] * (batch.shape[1] - 1)
        total += loss.item() * tokens
        count += tokens
    model.train(was_training)
    return math.exp(total / count)
