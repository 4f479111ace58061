"""PixelflyConfig validation, round trip, init resolution and loading through transformers."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from hf_sparse import PixelflyConfig, PixelflyLinear, SparseAutoModelForCausalLM, SparsityConfig, sparsify
from hf_sparse.methods.pixelfly.model import resolve_init


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"density": 0.0}, ValueError, ["density", "(0.0, 1.0)"]),
        ({"density": 1}, ValueError, ["density"]),
        ({"density": "0.5"}, TypeError, ["density"]),
        ({"block_size": 0}, ValueError, ["block_size"]),
        ({"block_size": 8.0}, TypeError, ["block_size"]),
        ({"lowrank_fraction": 0.6}, ValueError, ["lowrank_fraction", "0.5"]),
        ({"n_factors": -1}, ValueError, ["n_factors"]),
        ({"butterfly_size": 6}, ValueError, ["butterfly_size", "power of two"]),
        ({"gating": "learned"}, ValueError, ["gating", "scalar"]),
        ({"init": "zeros"}, ValueError, ["init", "project"]),
    ],
)
def test_validation(kwargs, error, words):
    with pytest.raises(error) as info:
        PixelflyConfig(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_round_trip():
    cfg = PixelflyConfig(density=0.125, block_size=64, n_factors=2, gating="input", target_modules=["c_fc"])
    back = SparsityConfig.from_json(cfg.to_json_string())
    assert isinstance(back, PixelflyConfig) and back == cfg and back.to_dict()["method"] == "pixelfly"


def test_init_auto_projects_checkpoints_and_randomizes_fresh_models(gpt2, tmp_path):
    fresh = gpt2.build()
    assert resolve_init(fresh, PixelflyConfig()) == "random"
    fresh.save_pretrained(tmp_path)
    loaded = SparseAutoModelForCausalLM.from_pretrained(tmp_path, sparsity_config=PixelflyConfig(
        density=0.5, block_size=8, lowrank_fraction=0.5))
    assert resolve_init(loaded, PixelflyConfig()) == "project"
    assert resolve_init(nn.Sequential(nn.Linear(4, 4)), PixelflyConfig()) == "project"
    assert resolve_init(fresh, PixelflyConfig(init="project")) == "project"
    layer = loaded.transformer.h[0].mlp.c_fc
    assert isinstance(layer, PixelflyLinear)
    dense = gpt2.build().transformer.h[0].mlp.c_fc.weight.T  # same seed: the weights that were projected
    kept = dense * layer.layout.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.allclose(layer.alpha * layer.butterfly_dense(), kept, atol=1e-6)


def test_small_layers_stay_dense(caplog):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(256, 256))
    with caplog.at_level(logging.INFO, logger="hf_sparse"):
        sparsify(model, PixelflyConfig(density=0.25, block_size=32))
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], PixelflyLinear)
    assert "too small" in caplog.text
