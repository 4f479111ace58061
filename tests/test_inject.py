"""Target selection, atomic replacement, composition of methods, densify."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from hf_sparse import (
    CED,
    LED,
    ComposedSparsityConfig,
    GreenformerConfig,
    densify,
    get_sparsity_config,
    sparse_layers,
    sparsify,
)
from hf_sparse.inject import head_module_names, select_targets


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_default_targets_skip_embeddings_and_heads(gpt2):
    model = gpt2.build()
    names = select_targets(model, GreenformerConfig())
    assert names == [f"transformer.h.{i}.{m}" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def test_masked_lm_head_and_tied_decoder_stay_dense():
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, vocab_size=50, max_position_embeddings=16))
    heads = head_module_names(model)
    assert "cls.predictions.decoder" in heads and "cls.predictions.transform.dense" in heads
    sparsify(model, GreenformerConfig(rank=0.5))
    assert not any(n.startswith("cls.") for n in sparse_layers(model))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_target_modules_by_suffix_and_regex(gpt2):
    model = gpt2.build()
    assert select_targets(model, GreenformerConfig(target_modules=["c_fc"])) == [
        "transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    assert select_targets(model, GreenformerConfig(target_modules=r"transformer\.h\.1\.attn\..*")) == [
        "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"]
    cfg = GreenformerConfig(target_modules=["c_fc", "c_proj"], modules_to_not_convert=["h.0.mlp.c_proj"])
    assert "transformer.h.0.mlp.c_proj" not in select_targets(model, cfg)


def test_target_matching_nothing_lists_eligible_modules(gpt2):
    model = gpt2.build()
    before = _state(model)
    with pytest.raises(ValueError) as info:
        sparsify(model, GreenformerConfig(target_modules=["q_proj"]))
    assert "'q_proj'" in str(info.value) and "transformer.h.0.attn.c_attn" in str(info.value)
    with pytest.raises(ValueError, match="Embedding"):
        sparsify(model, GreenformerConfig(target_modules=["wte"]))
    with pytest.raises(ValueError, match="tied"):
        sparsify(model, GreenformerConfig(target_modules=["lm_head"]))
    assert not sparse_layers(model) and get_sparsity_config(model) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_failure_part_way_leaves_model_untouched(gpt2, monkeypatch):
    model = gpt2.build()
    before = _state(model)
    modules_before = {n: type(m) for n, m in model.named_modules()}
    real = LED.from_factors.__func__
    calls = {"n": 0}

    def flaky(cls, dense, u, v):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("solver blew up")
        return real(cls, dense, u, v)

    monkeypatch.setattr(LED, "from_factors", classmethod(flaky))
    with pytest.raises(RuntimeError, match="solver blew up"):
        sparsify(model, GreenformerConfig(rank=0.5))
    assert calls["n"] == 3
    assert {n: type(m) for n, m in model.named_modules()} == modules_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert get_sparsity_config(model) is None


def test_user_config_is_not_mutated(gpt2):
    cfg = GreenformerConfig(rank=0.5)
    model = sparsify(gpt2.build(), cfg)
    assert cfg.plan == {} and len(get_sparsity_config(model).plan) == 8


def test_two_methods_on_disjoint_targets_and_overlap_error(gpt2):
    attn = GreenformerConfig(rank=4, target_modules=["c_attn"])
    mlp = GreenformerConfig(rank=8, solver="snmf", num_iter=5, target_modules=["c_fc"])
    model = sparsify(gpt2.build(), [attn, mlp])
    config = get_sparsity_config(model)
    assert isinstance(config, ComposedSparsityConfig)
    assert {n: s["rank"] for n, s in config.plan.items()} == {
        "transformer.h.0.attn.c_attn": 4, "transformer.h.1.attn.c_attn": 4,
        "transformer.h.0.mlp.c_fc": 8, "transformer.h.1.mlp.c_fc": 8}
    fresh = gpt2.build()
    with pytest.raises(ValueError, match="targeted by both"):
        sparsify(fresh, [GreenformerConfig(target_modules=["c_fc"]), GreenformerConfig(target_modules=["mlp.c_fc"])])
    assert not sparse_layers(fresh)


def test_second_sparsify_composes_and_skips_converted(gpt2):
    model = sparsify(gpt2.build(), GreenformerConfig(rank=4, target_modules=["c_attn"]))
    sparsify(model, GreenformerConfig(rank=6))
    plan = get_sparsity_config(model).plan
    assert plan["transformer.h.0.attn.c_attn"]["rank"] == 4 and plan["transformer.h.0.mlp.c_fc"]["rank"] == 6
    assert len(plan) == 8


def test_skip_if_no_gain(gpt2, caplog):
    model = gpt2.build()
    with caplog.at_level(logging.INFO, logger="hf_sparse"):
        sparsify(model, GreenformerConfig(rank=22))  # r_max of 32x96 is 24, of 32x32 is 16, of 32x64 is 21.3
    plan = get_sparsity_config(model).plan
    assert set(plan) == {f"transformer.h.{i}.attn.c_attn" for i in range(2)}
    assert "saves nothing" in caplog.text
    forced = sparsify(gpt2.build(), GreenformerConfig(rank=64, skip_if_no_gain=False))
    assert {s["rank"] for s in get_sparsity_config(forced).plan.values()} == {32}  # capped at min(m, n)


def test_plain_module_and_convs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=4),
                          nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    x = torch.randn(2, 8, 8, 8)
    sparsify(model, GreenformerConfig(rank=4))
    assert isinstance(model[0], CED) and isinstance(model[2], nn.Conv2d) and isinstance(model[4], LED)
    assert model(x).shape == (2, 10)
    assert set(model.sparsity_config.plan) == {"0", "4"}
    only_linear = sparsify(nn.Sequential(nn.Conv1d(4, 4, 3), nn.Linear(4, 4)), GreenformerConfig(rank=1,
                                                                                              factorize_conv=False))
    assert isinstance(only_linear[0], nn.Conv1d) and isinstance(only_linear[1], LED)


def test_multihead_attention_out_proj_is_not_touched():
    model = nn.Sequential(nn.MultiheadAttention(16, 2))
    with pytest.raises(ValueError, match="no eligible module"):
        sparsify(model, GreenformerConfig(target_modules=["out_proj"]))


def test_densify_restores_exact_function(gpt2):
    model = sparsify(gpt2.build(), GreenformerConfig(rank=0.5))
    x = gpt2.inputs()["input_ids"]
    with torch.no_grad():
        expected = model(x).logits
    densify(model)
    assert not sparse_layers(model) and get_sparsity_config(model) is None
    with torch.no_grad():
        assert torch.allclose(model(x).logits, expected, atol=1e-5)


def test_rejects_non_module_and_bad_config(gpt2):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        sparsify("gpt2", GreenformerConfig())
    with pytest.raises(TypeError, match="sparsity config"):
        sparsify(gpt2.build(), 3)


def test_stale_config_on_shared_model_config_is_dropped(gpt2):
    first = gpt2.build()
    shared = first.config
    sparsify(first, GreenformerConfig(rank=4))
    second = type(first)(shared)  # built from the same config object, which now records first's plan
    sparsify(second, GreenformerConfig(rank=6, target_modules=["c_fc"]))
    assert set(get_sparsity_config(second).plan) == {"transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"}
