"""PixelflyLinear: exact dense equivalence, custom backward, init scale, projection of a dense layer, specs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_sparse import PlanError
from hf_sparse.inject import build_layer
from hf_sparse.methods.pixelfly import PixelflyLinear, flat_block_butterfly_layout, plan_shape
from hf_sparse.methods.pixelfly.butterfly import PixelflyShape
from hf_sparse.methods.pixelfly.ops import butterfly_matmul, butterfly_to_dense, partner_index


@settings(max_examples=25, deadline=None)
@given(log_g=st.integers(0, 4), ot=st.integers(1, 6), it=st.integers(1, 6), n=st.integers(1, 5), data=st.data())
def test_butterfly_product_and_gradients_match_dense(log_g, ot, it, n, data):
    g = 1 << log_g
    n_factors = data.draw(st.integers(0, log_g))
    offsets = [0] + [1 << f for f in range(n_factors)]
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    w = torch.randn(g, ot, len(offsets) * it, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, g * it, generator=gen, dtype=torch.float64, requires_grad=True)
    dense = butterfly_to_dense(w, partner_index(g, offsets))
    out = butterfly_matmul(x, w, offsets)
    assert torch.allclose(out, x @ dense.T)
    grad = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, w), grad)
    rx, rw = torch.autograd.grad(x @ butterfly_to_dense(w, partner_index(g, offsets)).T, (x, w), grad)
    assert torch.allclose(gx, rx) and torch.allclose(gw, rw)


@pytest.mark.parametrize(("out_f", "in_f", "rank"), [(64, 32, 8), (72, 100, 4), (48, 48, 0)])
def test_forward_equals_dense_weight_including_padding(out_f, in_f, rank):
    torch.manual_seed(0)
    shape = plan_shape(out_f, in_f, 0.4, block_size=4, lowrank_fraction=0.25 if rank else 0.0)
    layer = PixelflyLinear(shape, dtype=torch.float64)
    x = torch.randn(3, 5, in_f, dtype=torch.float64)
    assert torch.allclose(layer(x), x @ layer.dense_weight().T + layer.bias)
    assert layer.to_dense().shape == (out_f, in_f)


def test_backward_matches_dense_autograd():
    torch.manual_seed(0)
    layer = PixelflyLinear(PixelflyShape(64, 48, 4, 4, 2, 8), dtype=torch.float64)
    x = torch.randn(7, 48, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    grad_x = x.grad.clone()
    layer.zero_grad()
    x.grad = None
    (x @ layer.dense_weight().T + layer.bias).square().sum().backward()
    assert torch.allclose(grad_x, x.grad)
    for name, p in layer.named_parameters():
        assert torch.allclose(grads[name], p.grad), name


@pytest.mark.parametrize(("gating", "rank"), [("scalar", 16), ("input", 16), ("scalar", 0)])
def test_trains_under_bfloat16_autocast(gating, rank):
    """Mixed precision: the custom butterfly product runs in the autocast dtype in forward and backward (it used
    to save float32 activations and fail in backward); gradients land on the float32 parameters."""
    torch.manual_seed(0)
    layer = PixelflyLinear(PixelflyShape(64, 48, 16, 4, 2, rank), gating=gating)
    x = torch.randn(3, 5, 48)
    layer(x).square().sum().backward()
    reference = {n: p.grad.clone() for n, p in layer.named_parameters() if p.numel()}
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    for name, p in layer.named_parameters():
        if not p.numel():  # the empty low-rank factors of rank 0
            continue
        assert p.grad.dtype == torch.float32, name
        if name in ("butterfly_weight", "u_weight", "v_weight", "bias"):
            error = (p.grad - reference[name]).norm() / reference[name].norm()
            assert error < 2e-2, (name, error.item())


def test_input_gate_mixes_per_token():
    torch.manual_seed(0)
    layer = PixelflyLinear(PixelflyShape(32, 32, 4, 4, 1, 4), gating="input", dtype=torch.float64)
    nn.init.normal_(layer.gate_weight)
    x = torch.randn(6, 32, dtype=torch.float64)
    alpha = torch.sigmoid(x @ layer.gate_weight + layer.gate_bias)[:, None]
    expected = alpha * (x @ layer.butterfly_dense().T) + (1 - alpha) * (x @ (layer.u_weight @ layer.v_weight).T)
    assert torch.allclose(layer(x), expected + layer.bias)
    with pytest.raises(ValueError, match="per token"):
        layer.dense_weight()
    assert layer.weight.shape == (32, 32)  # indicative weight for code that inspects .weight


def test_layout_property_matches_the_layout_function():
    layer = PixelflyLinear(PixelflyShape(256, 128, 16, 8, 2, 0))
    assert torch.equal(layer.layout, flat_block_butterfly_layout(256, 128, 16, butterfly_size=8, n_factors=2))
    assert layer.layout.float().mean().item() == pytest.approx(3 / 8)


def test_init_keeps_dense_output_variance():
    torch.manual_seed(0)
    x = torch.randn(4096, 512)
    dense_std = nn.Linear(512, 1024)(x).std().item()
    for shape in (plan_shape(1024, 512, 0.25, 32), plan_shape(1024, 512, 0.125, 32, lowrank_fraction=0.0)):
        ratio = PixelflyLinear(shape)(x).std().item() / dense_std
        assert abs(ratio - 1) < 0.15, (shape, ratio)


@pytest.mark.parametrize("source", ["linear", "conv1d"])
def test_from_dense_is_the_best_approximation_of_its_structure(source):
    torch.manual_seed(0)
    dense = nn.Linear(48, 64).double() if source == "linear" else Conv1D(64, 48).double()
    nn.init.normal_(dense.bias)
    matrix = dense.weight if source == "linear" else dense.weight.T
    shape = PixelflyShape(64, 48, 4, 4, 1, 8)
    layer = PixelflyLinear.from_dense(dense, shape)
    kept = matrix * layer.layout.repeat_interleave(4, 0).repeat_interleave(4, 1)
    residual = matrix - kept
    s = torch.linalg.svdvals(residual)
    error = torch.linalg.matrix_norm(matrix - layer.dense_weight())
    assert error.item() == pytest.approx(s[8:].square().sum().sqrt().item(), rel=1e-9)
    assert torch.allclose(layer.alpha * layer.butterfly_dense(), kept)
    x = torch.randn(3, 48, dtype=torch.float64)
    assert torch.allclose(layer(x), x @ layer.dense_weight().T + dense.bias)
    assert layer.to_dense().shape == tuple(dense.weight.shape)


def test_spec_round_trip_and_costs():
    layer = PixelflyLinear(plan_shape(96, 64, 0.5, 8), gating="input")
    spec = layer.to_spec()
    rebuilt = build_layer("x", spec, device="meta")
    assert rebuilt.to_spec() == spec
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in layer.state_dict().items()}
    params, flops = PixelflyLinear.params_and_flops(spec)
    assert params == sum(p.numel() for p in layer.parameters())
    assert flops == 2 * (layer.butterfly_weight.numel() + layer.u_weight.numel() + layer.v_weight.numel())
    assert "density" in PixelflyLinear.describe(spec)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: s.update(butterfly_size=3), "impossible"),
        (lambda s: s.update(n_factors=9), "impossible"),
        (lambda s: s.update(gating="maybe"), "gating"),
        (lambda s: s.pop("block_size"), "block_size"),
        (lambda s: s.update(source="Conv2d"), "replaces"),
    ],
)
def test_damaged_specs(mutate, match):
    spec = PixelflyLinear(plan_shape(64, 64, 0.5, 8)).to_spec()
    mutate(spec)
    with pytest.raises(PlanError, match=match):
        build_layer("x", spec)
