"""LED / CED: exact factor products, layouts of to_dense, init scale, specs and damaged specs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_sparse import CED, LED, GreenformerConfig, PlanError, sparsify
from hf_sparse.inject import build_layer
from hf_sparse.methods.greenformer.solvers import svd_factors


def test_led_from_linear_matches_factor_product():
    torch.manual_seed(0)
    dense = nn.Linear(20, 12)
    u, v = svd_factors(dense.weight, 5)
    led = LED.from_factors(dense, u, v)
    x = torch.randn(3, 7, 20)
    assert torch.allclose(led(x), x @ (u @ v).T + dense.bias, atol=1e-6)
    assert led.to_dense().shape == (12, 20) and torch.allclose(led.to_dense(), u @ v)
    assert "rank=5" in repr(led)


def test_led_full_rank_from_conv1d_is_exact():
    torch.manual_seed(0)
    dense = Conv1D(12, 20)  # nf=out=12, nx=in=20; weight (20, 12)
    nn.init.normal_(dense.bias)
    led = LED.from_factors(dense, *svd_factors(dense.weight.t(), 12))
    x = torch.randn(4, 20)
    assert torch.allclose(led(x), dense(x), atol=1e-5)
    assert led.to_dense().shape == (20, 12)  # Conv1D layout
    assert torch.allclose(led.to_dense(), dense.weight, atol=1e-5)
    assert torch.allclose(led.to_dense_module()(x), dense(x), atol=1e-5)


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1),
        lambda: nn.Conv2d(3, 8, 3, padding="same", dilation=2),
        lambda: nn.Conv2d(3, 8, (3, 1), padding=(1, 0), padding_mode="reflect", bias=False),
        lambda: nn.Conv3d(2, 4, 2, stride=1),
    ],
)
def test_ced_full_rank_is_exact(conv):
    torch.manual_seed(0)
    dense = conv()
    rank = min(dense.out_channels, dense.weight[0].numel())
    matrix = dense.weight.reshape(dense.out_channels, -1)
    ced = CED.from_factors(dense, *svd_factors(matrix, rank))
    x = torch.randn(2, dense.in_channels, *([6] * (dense.weight.ndim - 2)))
    assert torch.allclose(ced(x), dense(x), atol=1e-5)
    assert ced.to_dense().shape == dense.weight.shape
    assert torch.allclose(ced.to_dense_module()(x), dense(x), atol=1e-5)


def test_default_init_matches_dense_output_scale():
    torch.manual_seed(0)
    x = torch.randn(4096, 256)
    dense_std = nn.Linear(256, 512)(x).std().item()
    led_std = LED(256, 512, 32)(x).std().item()
    assert abs(led_std / dense_std - 1) < 0.15
    ced = CED({"source": "Conv2d", "in_features": 16, "out_features": 32, "bias": True, "kernel_size": [3, 3],
               "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1, "padding_mode": "zeros"}, 8)
    img = torch.randn(8, 16, 12, 12)
    ratio = ced(img).std().item() / nn.Conv2d(16, 32, 3, padding=1)(img).std().item()
    assert abs(ratio - 1) < 0.2


def test_spec_round_trip_rebuilds_same_structure():
    model = sparsify(nn.Sequential(nn.Linear(16, 32), nn.Conv2d(3, 8, 3)), GreenformerConfig(rank=2))
    for name, spec in model.sparsity_config.plan.items():
        layer = build_layer(name, spec, device="meta")
        original = model.get_submodule(name)
        assert type(layer) is type(original) and layer.to_spec() == spec
        assert {k: v.shape for k, v in layer.state_dict().items()} == {
            k: v.shape for k, v in original.state_dict().items()}


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda s: s.pop("rank"), ["rank"]),
        (lambda s: s.update(rank=0), ["rank", "positive"]),
        (lambda s: s.update(rank=True), ["rank"]),
        (lambda s: s.update(source="Embedding"), ["LED replaces"]),
        (lambda s: s.update({"class": "Butterfly9000"}), ["Butterfly9000", "known"]),
        (lambda s: s.update(in_features="16"), ["in_features"]),
    ],
)
def test_damaged_spec_raises_plan_error(mutate, words):
    spec = LED(16, 8, 2).to_spec()
    mutate(spec)
    with pytest.raises(PlanError) as info:
        build_layer("layer", spec)
    for word in words:
        assert word in str(info.value)
