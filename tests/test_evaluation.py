"""Perplexity helpers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hf_sparse.evaluation import (
    continuation_logprob,
    fewshot_accuracy,
    load_jsonl_task,
    perplexity,
    perplexity_of_blocks,
)

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


FIXTURES = Path(__file__).parent / "fixtures"


def test_load_jsonl_task_and_errors(tmp_path):
    task = load_jsonl_task(FIXTURES / "fewshot_task.jsonl")
    assert len(task) == 16 and set(task[0]) == {"question", "choices", "answer"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "w2", "choices": ["w3"], "answer": 4}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_jsonl_task(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no examples"):
        load_jsonl_task(tmp_path / "empty.jsonl")


def test_continuation_logprob_matches_manual(gpt2):
    model, tok = gpt2.build(), word_tokenizer()
    total, count = continuation_logprob(model, tok, "w5 w6 w7", " w8 w9")
    ids = torch.tensor([tok("w5 w6 w7 w8 w9", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    expected = logprobs[2, ids[0, 3]] + logprobs[3, ids[0, 4]]
    assert count == 2 and total == pytest.approx(expected.item(), rel=1e-5)


def test_fewshot_accuracy_is_the_argmax_of_likelihoods(gpt2):
    model, tok = gpt2.build(), word_tokenizer()
    task = load_jsonl_task(FIXTURES / "fewshot_task.jsonl")
    expected = 0
    for ex in task:
        scores = [continuation_logprob(model, tok, ex["question"], " " + c)[0] for c in ex["choices"]]
        expected += int(scores.index(max(scores)) == ex["answer"])
    assert fewshot_accuracy(model, tok, task, shots=0) == expected / len(task)
    two_shot = fewshot_accuracy(model, tok, task, shots=2, seed=3)
    assert 0 <= two_shot <= 1 and two_shot == fewshot_accuracy(model, tok, task, shots=2, seed=3)
    with pytest.raises(ValueError, match="demonstrations"):
        fewshot_accuracy(model, tok, task[:2], shots=2)
    with pytest.raises(ValueError, match="shots"):
        fewshot_accuracy(model, tok, task, shots=-1)
