"""Perplexity helpers."""

from __future__ import annotations

import math

import pytest
import torch

from hf_sparse.evaluation import perplexity, perplexity_of_blocks

from .conftest import word_texts, word_tokenizer


def test_perplexity_matches_block_loss(gpt2):
    model = gpt2.build()
    tok = word_tokenizer()
    texts = word_texts(4)
    value = perplexity(model, tok, texts, block_size=16)
    joined = tok("\n".join(texts), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    blocks = joined[: joined.numel() // 16 * 16].reshape(-1, 16)
    assert value == pytest.approx(perplexity_of_blocks(model, blocks))
    with torch.no_grad():
        loss = model(input_ids=blocks, labels=blocks).loss.item()
    assert value == pytest.approx(math.exp(loss), rel=1e-5)


def test_perplexity_input_errors(gpt2):
    with pytest.raises(ValueError, match="at least one"):
        perplexity(gpt2.build(), word_tokenizer(), [])
    with pytest.raises(ValueError, match="block_len"):
        perplexity_of_blocks(gpt2.build(), torch.zeros(3, dtype=torch.long))
