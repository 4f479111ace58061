"""SparsityConfig / GreenformerConfig: validation, JSON round trip, dispatch, transformers registry."""

from __future__ import annotations

import json

import pytest
from transformers import GPT2Config
from transformers.quantizers.auto import AutoHfQuantizer, AutoQuantizationConfig

from hf_sparse import ComposedSparsityConfig, GreenformerConfig, SparseHfQuantizer, SparsityConfig
from hf_sparse.config import FORMAT_VERSION


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"rank": 0}, ValueError, ["rank", "0", "[1"]),
        ({"rank": -3}, ValueError, ["rank", "-3"]),
        ({"rank": 0.0}, ValueError, ["rank", "(0.0, 1.0)"]),
        ({"rank": 1.0}, ValueError, ["rank", "1.0"]),
        ({"rank": 1.5}, ValueError, ["rank", "1.5"]),
        ({"rank": True}, TypeError, ["rank", "True", "bool"]),
        ({"rank": "16"}, TypeError, ["rank", "'16'"]),
        ({"solver": "qr"}, ValueError, ["solver", "qr", "svd"]),
        ({"solver": 3}, TypeError, ["solver"]),
        ({"num_iter": 0}, ValueError, ["num_iter"]),
        ({"num_iter": 2.5}, TypeError, ["num_iter"]),
        ({"svd_algorithm": "lanczos"}, ValueError, ["svd_algorithm", "randomized"]),
        ({"skip_if_no_gain": 1}, TypeError, ["skip_if_no_gain"]),
        ({"factorize_conv": "yes"}, TypeError, ["factorize_conv"]),
        ({"seed": 1.0}, TypeError, ["seed"]),
        ({"target_modules": 5}, TypeError, ["target_modules"]),
        ({"target_modules": []}, ValueError, ["target_modules", "empty"]),
        ({"target_modules": ["c_attn", "("]}, ValueError, ["target_modules", "'('", "regular expression"]),
        ({"modules_to_not_convert": [1]}, TypeError, ["modules_to_not_convert"]),
        ({"format_version": FORMAT_VERSION + 1}, ValueError, ["format_version", "upgrade"]),
        ({"plan": [1, 2]}, TypeError, ["plan"]),
    ],
)
def test_bad_input_names_field_value_and_allowed(kwargs, error, words):
    with pytest.raises(error) as info:
        GreenformerConfig(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_defaults_and_rank_resolution():
    cfg = GreenformerConfig(rank=0.25)
    assert cfg.quant_method == "hf_sparse" and cfg.method == "greenformer" and cfg.solver == "svd"
    # r_max of 1024 x 4096 = 819.2 -> 0.25 * 819.2 = 204.8 -> 205
    assert cfg.resolve_rank(4096, 1024) == 205
    assert GreenformerConfig(rank=16).resolve_rank(4096, 1024) == 16
    assert GreenformerConfig(rank=0.01).resolve_rank(8, 8) == 1
    assert cfg.iterations == 4 and GreenformerConfig(solver="snmf").iterations == 100


def test_dict_round_trip_keeps_everything():
    cfg = GreenformerConfig(rank=32, solver="snmf", num_iter=7, target_modules=["c_fc", r".*\.c_proj"], seed=3,
                            modules_to_not_convert="h\\.0\\..*", plan={"a.b": {"class": "LED", "rank": 3}})
    data = cfg.to_dict()
    assert data["method"] == "greenformer" and data["quant_method"] == "hf_sparse"
    assert data["format_version"] == FORMAT_VERSION
    back = SparsityConfig.from_dict(data)
    assert isinstance(back, GreenformerConfig) and back == cfg and back.to_dict() == data
    assert GreenformerConfig.from_dict(data) == cfg


def test_json_string_file_and_list(tmp_path):
    cfg = GreenformerConfig(rank=0.5, target_modules=["c_attn"])
    assert SparsityConfig.from_json(cfg.to_json_string()) == cfg
    path = tmp_path / "cfg.json"
    cfg.to_json_file(path)
    assert SparsityConfig.from_json(path) == cfg
    assert SparsityConfig.from_json(str(path)) == cfg
    other = GreenformerConfig(rank=8, target_modules=["c_fc"])
    both = SparsityConfig.from_json(json.dumps([cfg.to_dict(), other.to_dict()]))
    assert isinstance(both, ComposedSparsityConfig) and both.configs == [cfg, other]
    assert SparsityConfig.from_dict(both.to_dict()) == both


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"method": "magic"}, ["unknown sparsity method", "magic", "greenformer"]),
        ({"rank": 4}, ["lacks 'method'"]),
        ({"method": "greenformer", "rnak": 4}, ["unknown field", "rnak"]),
        ({"method": "greenformer", "quant_method": "bitsandbytes"}, ["quant_method"]),
    ],
)
def test_from_dict_errors(data, words):
    with pytest.raises(ValueError) as info:
        SparsityConfig.from_dict(data)
    for word in words:
        assert word in str(info.value)


def test_from_json_rejects_garbage():
    with pytest.raises(ValueError, match="neither an existing file nor valid JSON"):
        SparsityConfig.from_json("{not json")


def test_registered_with_transformers():
    cfg = GreenformerConfig(rank=4)
    assert isinstance(AutoQuantizationConfig.from_dict(cfg.to_dict()), GreenformerConfig)
    assert isinstance(AutoHfQuantizer.from_config(cfg, pre_quantized=False), SparseHfQuantizer)


def test_written_into_model_config_json(tmp_path):
    config = GPT2Config(n_layer=1)
    config.quantization_config = GreenformerConfig(rank=4)
    config.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert stored == GreenformerConfig(rank=4).to_dict()


def test_composed_rejects_bad_entries():
    with pytest.raises(ValueError, match="non-empty list"):
        ComposedSparsityConfig([])
    with pytest.raises(TypeError, match="SparsityConfig objects or dicts"):
        ComposedSparsityConfig([3])


def test_without_plan_is_a_copy():
    cfg = GreenformerConfig(rank=4, plan={"x": {"class": "LED"}})
    bare = cfg.without_plan()
    assert bare.plan == {} and cfg.plan == {"x": {"class": "LED"}}
