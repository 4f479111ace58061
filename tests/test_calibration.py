"""Calibration: batch preparation, streamed statistics, grouped passes, loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_sparse.calibration import calibration_loss, collect_stats, prepare_batches, with_labels

from .conftest import word_tokenizer


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.proj = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.fc(x)))


def test_stats_are_exact_running_sums():
    torch.manual_seed(0)
    model = TwoLayer()
    xs = [torch.randn(4, 7, 6) for _ in range(3)]
    (stats,) = list(collect_stats(model, ["fc", "proj"], [{"x": x} for x in xs], progress=False))
    flat = torch.cat([x.reshape(-1, 6) for x in xs]).double()
    assert stats["fc"].tokens == 84
    assert torch.allclose(stats["fc"].xtx, flat.T @ flat)
    assert torch.allclose(stats["fc"].abs_mean, flat.abs().mean(0))
    hidden = torch.relu(model.fc(flat.float())).double()
    assert torch.allclose(stats["proj"].xtx, hidden.T @ hidden, atol=1e-5)


def test_grouped_passes_match_single_pass_and_restore_hooks():
    torch.manual_seed(0)
    model = TwoLayer()
    batches = [{"x": torch.randn(5, 6)} for _ in range(2)]
    calls = {"n": 0}
    model.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    groups = list(collect_stats(model, ["fc", "proj"], batches, max_layers_per_pass=1, progress=False))
    assert [list(g) for g in groups] == [["fc"], ["proj"]] and calls["n"] == 4
    (together,) = list(collect_stats(model, ["fc", "proj"], batches, progress=False))
    assert torch.equal(groups[1]["proj"].xtx, together["proj"].xtx)
    assert not model.fc._forward_hooks and not model.proj._forward_hooks


def test_fisher_accumulates_squared_grads_and_restores_state(gpt2):
    model = gpt2.build()
    model.transformer.h[0].mlp.c_fc.bias.requires_grad_(False)
    batches = [{"input_ids": torch.randint(1, 64, (2, 8))} for _ in range(2)]
    (stats,) = list(collect_stats(model, ["transformer.h.0.mlp.c_fc"], batches, fisher=True, progress=False))
    fisher = stats["transformer.h.0.mlp.c_fc"].fisher
    assert fisher.shape == (64, 32) and (fisher >= 0).all() and fisher.sum() > 0  # (out, in) for Conv1D
    assert all(p.grad is None for p in model.parameters())
    assert not model.transformer.h[0].mlp.c_fc.bias.requires_grad
    assert model.transformer.h[0].mlp.c_fc.weight.requires_grad


def test_prepare_batches_from_strings_and_errors():
    tok = word_tokenizer()
    batches = prepare_batches(["w2 w3 w4", "w5 w6"] * 5, tokenizer=tok, max_length=4, batch_size=4)
    assert len(batches) == 3 and batches[0]["input_ids"].shape == (4, 3)
    assert batches[0]["attention_mask"][1].tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="calibration_data is required"):
        prepare_batches(None)
    with pytest.raises(ValueError, match="tokenizer="):
        prepare_batches(["a b"])
    with pytest.raises(TypeError, match="single string"):
        prepare_batches("some text")
    with pytest.raises(TypeError, match="all be dicts"):
        prepare_batches([{"x": 1}, "text"])
    with pytest.raises(ValueError, match="empty"):
        prepare_batches([])


def test_prepare_batches_without_pad_token_pads_by_hand_and_leaves_tokenizer_alone():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, **{f"w{i}": i for i in range(1, 10)}}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")  # no pad, no eos (like a raw BPE)
    batches = prepare_batches(["w2 w3 w4", "w5 w6", "w7"], tokenizer=tok, max_length=8, batch_size=2)
    assert batches[0]["input_ids"].tolist() == [[2, 3, 4], [5, 6, 0]]
    assert batches[0]["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batches[1]["input_ids"].tolist() == [[7]]
    assert tok.pad_token is None


def test_sparsify_truncates_calibration_text_to_the_model_positions(gpt2):
    from hf_sparse import GreenformerConfig, sparsify

    model = gpt2.build()  # 32 positions
    long_text = [" ".join(f"w{2 + i % 60}" for i in range(100))] * 2
    sparsify(model, GreenformerConfig(rank=4, solver="svd-llm"), calibration_data=long_text,
             tokenizer=word_tokenizer(), max_length=512)
    assert model.config.quantization_config.plan


def test_with_labels_masks_padding(gpt2):
    model = gpt2.build()
    batch = {"input_ids": torch.tensor([[5, 6, 0]]), "attention_mask": torch.tensor([[1, 1, 0]])}
    assert with_labels(model, batch)["labels"].tolist() == [[5, 6, -100]]
    assert "labels" not in with_labels(TwoLayer(), {"input_ids": batch["input_ids"]})


def test_calibration_loss_needs_a_loss(gpt2):
    model = gpt2.build()
    assert calibration_loss(model, [{"input_ids": torch.randint(1, 64, (2, 8))}]) > 0
    with pytest.raises(ValueError, match="no loss"):
        calibration_loss(TwoLayer(), [{"x": torch.randn(2, 6)}])
