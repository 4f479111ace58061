"""The transformers integration: compress while loading, rebuild on reload, refuse damaged plans."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_sparse import LED, GreenformerConfig, PlanError, get_sparsity_config, sparsify


@pytest.fixture
def dense_dir(gpt2, tmp_path):
    model = gpt2.build()
    model.save_pretrained(tmp_path / "dense")
    return tmp_path / "dense"


@pytest.fixture
def sparse_dir(gpt2, tmp_path):
    model = sparsify(gpt2.build(), GreenformerConfig(rank=0.5))
    model.save_pretrained(tmp_path / "sparse")
    return tmp_path / "sparse"


def test_quantization_config_compresses_while_loading(gpt2, dense_dir):
    cfg = GreenformerConfig(rank=0.5)
    loaded = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=cfg)
    reference = sparsify(AutoModelForCausalLM.from_pretrained(dense_dir), cfg)
    assert isinstance(loaded.transformer.h[0].mlp.c_fc, LED)
    assert get_sparsity_config(loaded).plan == get_sparsity_config(reference).plan
    assert cfg.plan == {}
    x = gpt2.inputs()["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, reference.eval()(x).logits)
    assert not getattr(loaded, "is_quantized", False)  # .half(), Trainer and PEFT treat it as a normal model


def test_reload_in_other_dtype(sparse_dir):
    model = AutoModelForCausalLM.from_pretrained(sparse_dir, dtype=torch.bfloat16)
    assert model.transformer.h[0].attn.c_attn.u_weight.dtype == torch.bfloat16


def test_dense_checkpoint_without_config_stays_dense(dense_dir):
    model = AutoModelForCausalLM.from_pretrained(dense_dir)
    assert get_sparsity_config(model) is None and not any(isinstance(m, LED) for m in model.modules())


def _edit_plan(directory, edit):
    path = directory / "config.json"
    data = json.loads(path.read_text())
    edit(data["quantization_config"]["plan"])
    path.write_text(json.dumps(data))


def test_unknown_layer_class_raises(sparse_dir):
    _edit_plan(sparse_dir, lambda plan: plan["transformer.h.0.mlp.c_fc"].update({"class": "FancyLayer"}))
    with pytest.raises(PlanError, match="FancyLayer"):
        AutoModelForCausalLM.from_pretrained(sparse_dir)


def test_plan_naming_missing_module_raises(sparse_dir):
    _edit_plan(sparse_dir, lambda plan: plan.update({"transformer.h.7.mlp.c_fc": plan["transformer.h.0.mlp.c_fc"]}))
    with pytest.raises(PlanError, match="does not have"):
        AutoModelForCausalLM.from_pretrained(sparse_dir)


def test_plan_with_wrong_shape_raises(sparse_dir):
    _edit_plan(sparse_dir, lambda plan: plan["transformer.h.0.mlp.c_fc"].update(in_features=48))
    with pytest.raises(PlanError, match="in_features"):
        AutoModelForCausalLM.from_pretrained(sparse_dir)


def test_empty_plan_raises(sparse_dir):
    _edit_plan(sparse_dir, lambda plan: plan.clear())
    with pytest.raises(PlanError, match="empty plan"):
        AutoModelForCausalLM.from_pretrained(sparse_dir)


def test_dequantize_turns_the_model_dense(gpt2, sparse_dir):
    model = AutoModelForCausalLM.from_pretrained(sparse_dir)
    x = gpt2.inputs()["input_ids"]
    with torch.no_grad():
        expected = model(x).logits
    model.dequantize()
    assert not any(isinstance(m, LED) for m in model.modules()) and get_sparsity_config(model) is None
    with torch.no_grad():
        assert torch.allclose(model(x).logits, expected, atol=1e-5)
