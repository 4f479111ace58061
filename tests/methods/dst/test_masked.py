"""Masked layers: forward equals the dense layer with masked weight, zero gradients at inactive weights, dense
gradient capture (micro-batches, gradient checkpointing), specs and damaged specs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.pytorch_utils import Conv1D

from hf_sparse import PlanError
from hf_sparse.inject import build_layer
from hf_sparse.methods.dst import MaskedConv, MaskedLinear

DENSE = {
    "linear": (lambda: nn.Linear(20, 12), (3, 5, 20)),
    "conv1D": (lambda: Conv1D(12, 20), (3, 5, 20)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (2, 4, 9)),
    "conv2d_groups_reflect": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=2, padding_mode="reflect"), (2, 4, 6, 6)),
    "conv2d_same": (lambda: nn.Conv2d(3, 8, 3, padding="same", dilation=2, bias=False), (2, 3, 7, 7)),
    "conv3d": (lambda: nn.Conv3d(2, 4, 2), (1, 2, 4, 4, 4)),
}


def _masked(dense: nn.Module, active: int, **kwargs):
    cls = MaskedConv if isinstance(dense, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else MaskedLinear
    return cls.from_dense(dense, active, **kwargs)


@pytest.mark.parametrize("case", sorted(DENSE))
def test_forward_is_the_dense_layer_with_masked_weight(case):
    torch.manual_seed(0)
    factory, x_shape = DENSE[case]
    dense = factory()
    if getattr(dense, "bias", None) is not None:
        nn.init.normal_(dense.bias)
    active = dense.weight.numel() // 4
    layer = _masked(dense, active, generator=torch.Generator().manual_seed(0))
    assert layer.weight.shape == dense.weight.shape and layer.mask.shape == dense.weight.shape
    assert int(layer.mask.sum()) == active and torch.equal(layer.active_count, layer.mask.to(torch.int16))
    assert torch.equal(layer.weight[~layer.mask], torch.zeros(dense.weight.numel() - active))
    assert torch.equal(layer.weight[layer.mask], dense.weight[layer.mask])
    with torch.no_grad():
        dense.weight.mul_(layer.mask)
    x = torch.randn(x_shape)
    assert torch.allclose(layer(x), dense(x), atol=1e-6)
    assert torch.equal(layer.to_dense(), dense.weight)
    assert torch.allclose(layer.to_dense_module()(x), dense(x), atol=1e-6)
    assert f"active={active}" in repr(layer)


def test_inactive_weights_get_exactly_zero_gradient_and_capture_sums_micro_batches():
    torch.manual_seed(0)
    dense = nn.Linear(16, 8)
    layer = MaskedLinear.from_dense(dense, 20)
    reference = nn.Linear(16, 8)
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
        reference.bias.copy_(layer.bias)
    batches = [torch.randn(4, 16) for _ in range(2)]
    layer.capture_grad = True
    for x in batches:
        (layer(x) ** 2).sum().backward()
        (reference(x) ** 2).sum().backward()
    assert torch.equal(layer.weight.grad[~layer.mask], torch.zeros(16 * 8 - 20))
    assert torch.allclose(layer.weight.grad, reference.weight.grad * layer.mask, atol=1e-6)
    assert torch.allclose(layer.dense_grad, reference.weight.grad, atol=1e-5)  # dense, summed over both
    layer.capture_grad, layer.dense_grad = False, None
    (layer(batches[0]) ** 2).sum().backward()
    assert layer.dense_grad is None  # nothing recorded off update steps


@pytest.mark.parametrize("reentrant", [True, False])
def test_capture_counts_each_backward_once_under_gradient_checkpointing(reentrant):
    torch.manual_seed(0)
    layer = MaskedLinear.from_dense(nn.Linear(16, 8), 30)
    x = torch.randn(4, 16, requires_grad=True)
    layer.capture_grad = True
    (layer(x) ** 2).sum().backward()
    plain = layer.dense_grad.clone()
    layer.dense_grad = None
    (checkpoint(layer, x, use_reentrant=reentrant) ** 2).sum().backward()
    assert torch.allclose(layer.dense_grad, plain, atol=1e-6)


def test_from_dense_mask_inits():
    torch.manual_seed(0)
    dense = nn.Linear(10, 10)
    layer = MaskedLinear.from_dense(dense, 25, mask_init="magnitude")
    kept = dense.weight.abs()[layer.mask]
    assert kept.min() >= dense.weight.abs()[~layer.mask].max()
    a = MaskedLinear.from_dense(dense, 25, generator=torch.Generator().manual_seed(5))
    b = MaskedLinear.from_dense(dense, 25, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, layer.mask)
    with pytest.raises(ValueError, match="mask_init"):
        MaskedLinear.from_dense(dense, 25, mask_init="zeros")
    with pytest.raises(ValueError, match="active must be in"):
        MaskedLinear.from_dense(dense, 101)
    bad = torch.zeros(10, 10, dtype=torch.bool)
    bad[0, :3] = True
    with pytest.raises(ValueError, match="has 3 active weights"):
        a.set_mask(bad)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        a.set_mask(bad.float())


@pytest.mark.parametrize("dense", [nn.Linear(16, 32), Conv1D(32, 16), nn.Conv2d(4, 8, 3, groups=2)])
def test_spec_round_trip_costs_and_fresh_layer(dense):
    layer = _masked(dense, 50)
    spec = layer.to_spec()
    assert spec["active"] == 50 and spec["density"] == pytest.approx(50 / dense.weight.numel())
    empty = build_layer("x", spec, device="meta")
    assert type(empty) is type(layer) and empty.to_spec() == spec
    assert {k: (v.shape, v.dtype) for k, v in empty.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in layer.state_dict().items()}
    fresh = build_layer("x", spec)  # a real (non-meta) layer starts on a random mask of the planned size
    assert int(fresh.mask.sum()) == 50
    assert torch.equal(fresh.weight[~fresh.mask], torch.zeros(dense.weight.numel() - 50))
    params, flops = type(layer).params_and_flops(spec)
    assert params == 50 + dense.bias.numel() and flops == 100
    assert type(layer).describe(spec).startswith("density ")


@pytest.mark.parametrize("mutate, words", [
    (lambda s: s.pop("active"), "lacks the field 'active'"),
    (lambda s: s.update(active=10**6), "exceeds"),
    (lambda s: s.update(active=0), "positive integer"),
    (lambda s: s.update(source="Conv2d"), "MaskedLinear replaces Linear / Conv1D"),
    (lambda s: s.update(bias="yes"), "'bias'"),
])
def test_damaged_spec_raises_plan_error(mutate, words):
    spec = MaskedLinear.from_dense(nn.Linear(8, 8), 10).to_spec()
    mutate(spec)
    with pytest.raises(PlanError, match=words):
        build_layer("layer", spec)


def test_damaged_conv_spec():
    spec = MaskedConv.from_dense(nn.Conv2d(2, 2, 3), 5).to_spec()
    spec["kernel_size"] = [3]
    with pytest.raises(PlanError, match="kernel_size"):
        build_layer("conv", spec)


def test_forward_follows_mask_changes_made_behind_its_back():
    torch.manual_seed(0)
    layer = MaskedLinear.from_dense(nn.Linear(8, 4), 10)
    x = torch.randn(3, 8)
    layer(x)  # fills the CPU mask cache
    other = MaskedLinear.from_dense(nn.Linear(8, 4), 10, generator=torch.Generator().manual_seed(9))
    layer.load_state_dict(other.state_dict())  # in-place copy into the mask buffer
    assert torch.equal(layer(x), other(x))
    layer.mask = other.mask.clone().flip(0)  # a new buffer object
    with torch.no_grad():
        layer.weight.fill_(1.0)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.mask.float(), layer.bias))
