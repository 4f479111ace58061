"""Factorized layers with a normalization between the factors (extra_norm) and the switch-time builders."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_sparse.inject import build_layer
from hf_sparse.layers import PlanError
from hf_sparse.methods.cuttlefish.layers import NormCED, NormLED
from hf_sparse.methods.cuttlefish.model import empty_factorized, factorize_layer
from hf_sparse.methods.greenformer.layers import CED, LED


@pytest.mark.parametrize("dense", [nn.Linear(12, 10), Conv1D(10, 12), nn.Conv2d(3, 6, 3, padding=1)])
def test_factorize_layer_is_the_truncated_svd_and_reuses_bias(dense):
    layer = factorize_layer(dense, rank=3, extra_norm=False)
    assert isinstance(layer, CED if isinstance(dense, nn.Conv2d) else LED)
    assert layer.bias is dense.bias  # same parameter: its optimizer state carries over
    matrix = dense.weight.t() if isinstance(dense, Conv1D) else dense.weight.reshape(dense.weight.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix.detach())
    torch.testing.assert_close(layer.dense_weight(), (u[:, :3] * s[:3]) @ vh[:3], atol=1e-5, rtol=1e-4)
    full = factorize_layer(dense, rank=min(matrix.shape), extra_norm=False)
    x = torch.randn(2, 3, 8, 8) if isinstance(dense, nn.Conv2d) else torch.randn(4, 12)
    torch.testing.assert_close(full(x), dense(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dense, cls", [(nn.Linear(12, 10), NormLED), (Conv1D(10, 12), NormLED),
                                        (nn.Conv2d(3, 6, 3, padding=1), NormCED)])
def test_norm_layers_round_trip_and_rebuild(dense, cls):
    layer = factorize_layer(dense, rank=4, extra_norm=True)
    assert type(layer) is cls and layer.norm.weight.device == dense.weight.device
    spec = layer.to_spec()
    assert spec["method"] == "cuttlefish" and spec["norm"] == cls.norm_kind and spec["rank"] == 4
    rebuilt = build_layer("x", spec)
    rebuilt.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 8, 8) if isinstance(dense, nn.Conv2d) else torch.randn(5, 12)
    layer.eval()
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), layer(x))
    params, _ = cls.params_and_flops(spec)
    assert params == sum(p.numel() for p in layer.parameters())
    assert "norm" in cls.describe(spec)
    with pytest.raises(ValueError, match="no equivalent dense weight"):
        layer.to_dense()
    assert layer.weight.shape == dense.weight.shape  # indicative product in the replaced layer's layout
    with pytest.raises(PlanError, match="norm"):
        build_layer("x", {**spec, "norm": "group"})


def test_norm_led_normalizes_the_rank_features():
    layer = empty_factorized(nn.Linear(16, 8), rank=4, extra_norm=True)
    hidden = {}
    layer.norm.register_forward_hook(lambda m, i, o: hidden.setdefault("out", o))
    layer(torch.randn(7, 16) * 10)
    torch.testing.assert_close(hidden["out"].mean(-1), torch.zeros(7), atol=1e-5, rtol=0)
    assert hidden["out"].shape == (7, 4)
