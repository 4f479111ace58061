"""DSTEEConfig: defaults, validation messages (raised before anything changes), JSON round trip."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from hf_sparse import SparsityConfig, sparsify
from hf_sparse.methods.dst import DSTEEConfig


def test_defaults_follow_the_issue():
    cfg = DSTEEConfig()
    assert (cfg.sparsity, cfg.distribution, cfg.update_interval, cfg.stop_step, cfg.drop_fraction, cfg.schedule,
            cfg.c, cfg.eps, cfg.grow) == (0.9, "erk", 100, None, 0.3, "cosine", 1e-3, 1.0, "dst-ee")
    assert cfg.to_dict()["method"] == "dst-ee"
    assert cfg.resolve_stop_step(1000) == 750
    assert DSTEEConfig(stop_step=40).resolve_stop_step(1000) == 40
    assert DSTEEConfig(stop_fraction=0.5).resolve_stop_step(7) == 3


@pytest.mark.parametrize("kwargs, error, words", [
    ({"sparsity": 1.0}, ValueError, "sparsity must be in (0.0, 1.0)"),
    ({"sparsity": 0}, ValueError, "sparsity"),
    ({"sparsity": "0.9"}, TypeError, "sparsity must be a float"),
    ({"distribution": "er"}, ValueError, "distribution must be one of ['erk', 'uniform']"),
    ({"update_interval": 0}, ValueError, "update_interval must be in [1"),
    ({"update_interval": 2.5}, TypeError, "update_interval must be a positive int"),
    ({"stop_step": 0}, ValueError, "stop_step"),
    ({"stop_step": True}, TypeError, "stop_step"),
    ({"stop_fraction": 1.5}, ValueError, "stop_fraction"),
    ({"drop_fraction": 1.0}, ValueError, "drop_fraction must be in (0.0, 1.0)"),
    ({"schedule": "linear"}, ValueError, "schedule must be one of ['cosine', 'constant']"),
    ({"c": -1e-3}, ValueError, "c must be in [0.0"),
    ({"eps": 0.0}, ValueError, "eps must be in (0.0"),
    ({"grow": "random"}, ValueError, "grow must be one of ['dst-ee', 'rigl', 'set']"),
    ({"mask_init": "zeros"}, ValueError, "mask_init must be one of"),
    ({"dense_first_layer": 1}, TypeError, "dense_first_layer must be True or False"),
    ({"seed": 1.0}, TypeError, "seed must be an int"),
])
def test_bad_values_name_field_value_and_range(kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        DSTEEConfig(**kwargs)


def test_bad_target_leaves_model_untouched():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="matches no eligible module"):
        sparsify(model, DSTEEConfig(target_modules=["nope"]))
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_json_round_trip_keeps_every_field():
    cfg = DSTEEConfig(sparsity=0.8, distribution="uniform", update_interval=7, stop_step=50, drop_fraction=0.2,
                      schedule="constant", c=0.01, eps=0.5, grow="set", mask_init="magnitude",
                      dense_first_layer=True, seed=3, target_modules=["c_fc"])
    again = SparsityConfig.from_json(cfg.to_json_string())
    assert isinstance(again, DSTEEConfig) and again == cfg
    with pytest.raises(ValueError, match="unknown field"):
        SparsityConfig.from_dict({**cfg.to_dict(), "temperature": 1.0})
