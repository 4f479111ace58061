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


def perplexity(model: nn.Module, tokenizer, texts: list[str] | str, block_size: int = 512,
               batch_size: int = 8) -> float:
    """Perplexity of a causal LM over ``texts``: joined with the tokenizer's EOS (or a newline), tokenized,
    cut into ``block_size`` blocks (capped at the model's maximum positions; a shorter text is one block)."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("perplexity needs at least one text")
    separator = tokenizer.eos_token or "\n"
    ids = tokenizer(separator.join(texts), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() < 2:
        raise ValueError("the texts tokenize to fewer than 2 tokens; nothing to predict")
    config = getattr(model, "config", None)
    max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    size = min(block_size, ids.numel(), max_positions or block_size)
    usable = ids.numel() // size * size
    return perplexity_of_blocks(model, ids[:usable].reshape(-1, size), batch_size)
