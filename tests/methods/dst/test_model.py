"""DST-EE on whole models: conversion with the ERK budget, save_pretrained / plain from_pretrained reload of
masks and counts, summary() sparsity, first/last layer options, densify."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import hf_sparse
from hf_sparse import densify, get_sparsity_config, sparsify, summary
from hf_sparse.methods.dst import DSTEEConfig, MaskedLayer, MaskedLinear


def _masked(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLayer)}


def test_gpt2_conversion_meets_the_global_budget(gpt2):
    model = gpt2.build()
    sparsify(model, DSTEEConfig(sparsity=0.9))
    layers = _masked(model)
    assert len(layers) == 8 and all(m.source["source"] == "Conv1D" for m in layers.values())
    total = sum(m.mask.numel() for m in layers.values())
    assert sum(int(m.mask.sum()) for m in layers.values()) == round(0.1 * total)
    report = get_sparsity_config(model).distribution_report
    assert report["achieved_sparsity"] == pytest.approx(0.9, abs=1 / total) and report["dense_layers"] == []
    # ERK: c_attn (32 -> 96) is denser than c_fc (32 -> 64) is denser than ... by (in + out) / (in * out)
    assert layers["transformer.h.0.attn.c_proj"].density > layers["transformer.h.0.attn.c_attn"].density
    assert model.lm_head.weight is model.transformer.wte.weight  # heads and embeddings untouched
    out = model(**gpt2.inputs())
    assert torch.isfinite(out.loss)


def test_save_and_plain_from_pretrained_reload(gpt2, tmp_path):
    model = gpt2.build()
    sparsify(model, DSTEEConfig(sparsity=0.8, distribution="uniform", seed=3))
    with torch.no_grad():  # pretend training moved the counts
        for layer in _masked(model).values():
            layer.active_count.mul_(7)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert get_sparsity_config(again) == get_sparsity_config(model)
    for name, layer in _masked(model).items():
        other = again.get_submodule(name)
        assert isinstance(other, MaskedLinear)
        for key in ("weight", "bias", "mask", "active_count"):
            assert torch.equal(getattr(layer, key), getattr(other, key)), (name, key)
    inputs = gpt2.inputs()
    assert torch.equal(model(**inputs).logits, again.eval()(**inputs).logits)
    half = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float16)
    layer = half.get_submodule("transformer.h.0.mlp.c_fc")
    assert layer.weight.dtype == torch.float16 and layer.mask.dtype == torch.bool
    assert layer.active_count.dtype == torch.int16
    assert torch.equal(layer.mask, model.get_submodule("transformer.h.0.mlp.c_fc").mask)


def test_from_pretrained_with_quantization_config_converts(gpt2, tmp_path):
    gpt2.build().save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=DSTEEConfig(sparsity=0.75))
    assert len(_masked(model)) == 8


def test_summary_reports_the_real_sparsity(gpt2):
    model = gpt2.build()
    sparsify(model, DSTEEConfig(sparsity=0.9, target_modules=["c_fc", "mlp.c_proj"]))
    report = summary(model)
    for row in report.rows:
        layer = model.get_submodule(row.name)
        bias = layer.bias.numel()
        assert row.params_after == int(layer.mask.sum()) + bias
        assert row.params_before == layer.mask.numel() + bias
        assert row.flops_after == 2 * int(layer.mask.sum())
        assert f"{layer.active:,} active" in row.detail
    biases = sum(model.get_submodule(r.name).bias.numel() for r in report.rows)
    kept = (report.converted_params_after - biases) / (report.converted_params_before - biases)
    assert kept == pytest.approx(0.1, abs=1e-4)


def test_dense_first_and_last_layers_and_erk_capacity():
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 2))
    cfg = DSTEEConfig(sparsity=0.8, dense_last_layer=True)
    sparsify(model, cfg)
    recorded = get_sparsity_config(model)
    # the 8 -> 64 layer would exceed density 1 under ERK at 80% sparsity: it stays dense and the others absorb it
    assert type(model[0]) is nn.Linear and recorded.distribution_report["dense_layers"] == ["0"]
    assert type(model[6]) is nn.Linear  # dense_last_layer
    assert sorted(recorded.plan) == ["2", "4"]
    sizes = [8 * 64, 64 * 512, 512 * 512]
    active = 8 * 64 + model[2].active + model[4].active
    assert active == round(0.2 * sum(sizes))
    first = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16))
    sparsify(first, DSTEEConfig(sparsity=0.5, dense_first_layer=True, distribution="uniform"))
    assert [type(m).__name__ for m in first] == ["Linear", "MaskedLinear", "MaskedLinear"]


def test_conv_model_and_densify_keep_the_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=4), nn.Flatten(),
                          nn.LazyLinear(10))
    x = torch.randn(2, 3, 8, 8)
    model(x)
    sparsify(model, DSTEEConfig(sparsity=0.7, mask_init="magnitude"))
    assert [type(m).__name__ for m in model if not isinstance(m, (nn.ReLU, nn.Flatten))] == [
        "MaskedConv", "MaskedConv", "MaskedLinear"]
    expected = model(x)
    densify(model)
    assert type(model[0]) is nn.Conv2d and model[2].groups == 4
    assert torch.allclose(model(x), expected, atol=1e-6)
    zeros = sum(int((model[i].weight == 0).sum()) for i in (0, 2, 4))
    total = sum(model[i].weight.numel() for i in (0, 2, 4))
    assert zeros >= math.floor(0.7 * total)


def test_ddp_skips_broadcasting_masks_and_counts(gpt2):
    model = gpt2.build()
    sparsify(model, DSTEEConfig(target_modules=["c_fc"]))
    assert sorted(model._ddp_params_and_buffers_to_ignore) == sorted(
        f"transformer.h.{i}.mlp.c_fc.{b}" for i in range(2) for b in ("mask", "active_count"))
    hf_sparse.densify(model)
    assert model._ddp_params_and_buffers_to_ignore == []


def test_summary_whole_model_totals(gpt2):
    from hf_sparse.summary import count_parameters

    dense = count_parameters(gpt2.build())
    s = summary(sparsify(gpt2.build(), DSTEEConfig(sparsity=0.9)))
    assert s.total_params_before == dense
    assert s.total_params_after == dense - s.converted_params_before + s.converted_params_after


def test_inspect_counts_active_weights_like_summary(gpt2, tmp_path, capsys):
    import json

    from hf_sparse.cli import main

    model = sparsify(gpt2.build(), DSTEEConfig(sparsity=0.9))
    model.save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    expected = summary(model)
    assert totals["params_after"] == expected.total_params_after
    assert totals["params_before"] == expected.total_params_before
