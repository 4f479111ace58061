"""CuttlefishConfig: defaults, validation, JSON round trip, and conversion that records the config only."""

import json

import pytest
from transformers import AutoModelForCausalLM

import hf_sparse
from hf_sparse import SparseAutoModelForCausalLM, get_sparsity_config, sparsify
from hf_sparse.config import SparsityConfig
from hf_sparse.methods.cuttlefish import CuttlefishConfig
from hf_sparse.methods.greenformer import GreenformerConfig


def test_defaults_and_round_trip():
    cfg = CuttlefishConfig()
    assert (cfg.epsilon, cfg.tau, cfg.rank_check_interval) == (0.1, 1.5, "epoch")
    assert cfg.structure_set_in_training and cfg.method == "cuttlefish"
    cfg = CuttlefishConfig(epsilon=0.5, tau=0, rank_check_interval=10, smoothing_window=2, min_checks=4,
                           max_full_rank_fraction=0.3, candidate_rank_ratios=[0.5, 0.25], profile_repeats=2,
                           factorized_lr_decay=0.5, frobenius_decay=1e-4, extra_norm=True,
                           project_optimizer_state=False, target_modules=["c_fc"])
    data = cfg.to_dict()
    assert data["method"] == "cuttlefish" and data["candidate_rank_ratios"] == [0.25, 0.5]
    assert SparsityConfig.from_dict(data) == cfg
    assert SparsityConfig.from_json(json.dumps(data)) == cfg
    assert CuttlefishConfig.from_dict(data).tau == 0.0


@pytest.mark.parametrize("kwargs, error, match", [
    ({"epsilon": 0}, ValueError, "epsilon"),
    ({"epsilon": "0.1"}, TypeError, "epsilon"),
    ({"tau": -1.0}, ValueError, "tau"),
    ({"rank_check_interval": "step"}, ValueError, "rank_check_interval"),
    ({"rank_check_interval": 0}, ValueError, "rank_check_interval"),
    ({"rank_check_interval": True}, TypeError, "rank_check_interval"),
    ({"rank_check_interval": 2.5}, TypeError, "rank_check_interval"),
    ({"smoothing_window": 0}, ValueError, "smoothing_window"),
    ({"smoothing_window": 4, "min_checks": 3}, ValueError, "min_checks=3 must be >= smoothing_window=4"),
    ({"max_full_rank_fraction": 0.0}, ValueError, "max_full_rank_fraction"),
    ({"max_full_rank_fraction": 1.5}, ValueError, "max_full_rank_fraction"),
    ({"candidate_rank_ratios": []}, ValueError, "candidate_rank_ratios"),
    ({"candidate_rank_ratios": [0.5, 1.0]}, ValueError, "candidate_rank_ratios"),
    ({"candidate_rank_ratios": 0.5}, TypeError, "candidate_rank_ratios"),
    ({"profile_repeats": 0}, ValueError, "profile_repeats"),
    ({"factorized_lr_decay": 0.0}, ValueError, "factorized_lr_decay"),
    ({"factorized_lr_decay": 2.0}, ValueError, "factorized_lr_decay"),
    ({"frobenius_decay": -1e-4}, ValueError, "frobenius_decay"),
    ({"extra_norm": "yes"}, TypeError, "extra_norm"),
    ({"project_optimizer_state": 1}, TypeError, "project_optimizer_state"),
    ({"target_modules": []}, ValueError, "target_modules"),
])
def test_validation_names_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        CuttlefishConfig(**kwargs)


def test_sparsify_records_config_and_keeps_model_full_rank(gpt2):
    model = gpt2.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert sparsify(model, CuttlefishConfig(target_modules=["c_fc", "mlp.c_proj"])) is model
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    recorded = get_sparsity_config(model)
    assert isinstance(recorded, CuttlefishConfig) and recorded.plan == {}
    assert not hf_sparse.sparse_layers(model)


def test_bad_target_raises_before_anything_changes(gpt2):
    model = gpt2.build()
    with pytest.raises(ValueError, match="matches no eligible module"):
        sparsify(model, CuttlefishConfig(target_modules=["no_such_layer"]))
    assert get_sparsity_config(model) is None
    with pytest.raises(ValueError, match="tied"):
        sparsify(model, CuttlefishConfig(target_modules=["lm_head"]))


def test_combines_with_another_method(gpt2):
    model = sparsify(gpt2.build(), [CuttlefishConfig(target_modules=["c_fc"]),
                                    GreenformerConfig(rank=4, target_modules=["c_attn"])])
    methods = [c.method for c in get_sparsity_config(model).configs]
    assert methods == ["cuttlefish", "greenformer"]


def test_from_pretrained_and_reload_before_switch(gpt2, tmp_path):
    gpt2.build().save_pretrained(tmp_path / "dense")
    model = SparseAutoModelForCausalLM.from_pretrained(tmp_path / "dense",
                                                       sparsity_config=CuttlefishConfig(rank_check_interval=5))
    assert isinstance(get_sparsity_config(model), CuttlefishConfig)
    assert not hf_sparse.sparse_layers(model)
    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    config = get_sparsity_config(reloaded)
    assert isinstance(config, CuttlefishConfig) and config.rank_check_interval == 5 and config.plan == {}
    assert not hf_sparse.sparse_layers(reloaded)
