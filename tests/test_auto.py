"""SparseAutoModel* wrappers."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForTokenClassification, BertConfig

from hf_sparse import (
    LED,
    GreenformerConfig,
    PlanError,
    SparseAutoModel,
    SparseAutoModelForCausalLM,
    SparseAutoModelForSequenceClassification,
    get_sparsity_config,
    sparsify,
)


def test_compress_save_reload_round_trip(gpt2, tmp_path):
    gpt2.build().save_pretrained(tmp_path / "dense")
    model = SparseAutoModelForCausalLM.from_pretrained(tmp_path / "dense", sparsity_config={"method": "greenformer",
                                                                                            "rank": 0.5})
    assert isinstance(model.transformer.h[1].attn.c_proj, LED)
    model.save_pretrained(tmp_path / "sparse")
    again, info = SparseAutoModelForCausalLM.from_pretrained(tmp_path / "sparse", output_loading_info=True)
    assert not info["missing_keys"]
    x = gpt2.inputs()["input_ids"]
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)


def test_json_string_config_and_from_config(tiny):
    model = SparseAutoModel.for_auto_class(tiny.auto_class).from_config(
        copy.deepcopy(tiny.config), sparsity_config=GreenformerConfig(rank=2).to_json_string())
    assert get_sparsity_config(model).plan


def test_generic_head_wrapper(tmp_path):
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        vocab_size=40, max_position_embeddings=16, num_labels=5)
    wrapper = SparseAutoModel.for_auto_class(AutoModelForTokenClassification)
    assert wrapper.__name__ == "SparseAutoModelForTokenClassification"
    model = wrapper.from_config(config, sparsity_config=GreenformerConfig(rank=4))
    assert "classifier" not in get_sparsity_config(model).plan
    model.save_pretrained(tmp_path)
    assert isinstance(wrapper.from_pretrained(tmp_path).bert.encoder.layer[0].intermediate.dense, LED)
    with pytest.raises(TypeError, match="auto class"):
        SparseAutoModel.for_auto_class(int)


def test_both_configs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="either sparsity_config or quantization_config"):
        SparseAutoModelForSequenceClassification.from_pretrained(tmp_path, sparsity_config=GreenformerConfig(),
                                                                 quantization_config=GreenformerConfig())


def test_not_instantiable():
    with pytest.raises(OSError, match="from_pretrained"):
        SparseAutoModelForCausalLM()


def test_weights_not_matching_plan_raise(gpt2, tmp_path):
    model = sparsify(gpt2.build(), GreenformerConfig(rank=4))
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["quantization_config"]["plan"]["transformer.h.0.mlp.c_fc"]["rank"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises((PlanError, RuntimeError), match="rank|size|mismatch|plan"):
        SparseAutoModelForCausalLM.from_pretrained(tmp_path)
