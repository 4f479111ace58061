"""Fused Pixelfly layer on the Triton kernels (interpreter, CPU): butterfly + low-rank + bias in one launch,
outputs and every gradient against a float64 reference; the layer dispatches to it."""

from __future__ import annotations

import pytest
import torch

from .helpers import assert_close, case_seed, poison, require_triton_interpreter

require_triton_interpreter()

from hf_sparse.kernels import blocksparse_matmul as bsm  # noqa: E402
from hf_sparse.kernels import pixelfly_linear as pfl  # noqa: E402

from hf_sparse.methods.pixelfly.butterfly import PixelflyShape  # noqa: E402
from hf_sparse.methods.pixelfly.linear import PixelflyLinear  # noqa: E402
from hf_sparse.methods.pixelfly.ops import butterfly_to_dense, partner_index  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, G, out_tile, in_tile, offsets, out_features, in_features, rank, bias): unpadded and padded features
# (the last input / output group partly outside the layer), ranks spanning one and two 16-wide steps
CASES = [
    (37, 4, 16, 16, (0, 1, 2), 64, 64, 16, True),
    (29, 4, 16, 32, (0, 1, 2), 57, 100, 20, True),
    (19, 8, 16, 16, (0, 1, 2, 4), 120, 128, 0, False),
    (23, 4, 32, 16, (0, 2), 128, 50, 8, False),
    # whole padding groups (output groups 3, input groups 2-3 beyond the features; plan_shape makes such shapes)
    # and more tokens than one row tile, so programs with pid_m > 0 run the low-rank, bias and masked columns
    (133, 4, 16, 16, (0, 1, 2), 40, 30, 16, True),
]


def random_case(seed: int, case, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
    n, groups, out_tile, in_tile, offsets, out_features, in_features, rank, bias = case
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    return {"x": draw(n, in_features),
            "butterfly": draw(groups, out_tile, len(offsets) * in_tile, scale=(len(offsets) * in_tile) ** -0.5),
            "u": draw(out_features, rank, scale=rank ** -0.5) if rank else None,
            "v": draw(rank, in_features, scale=in_features ** -0.5) if rank else None,
            "bias": draw(out_features) if bias else None,
            "grad": draw(n, out_features)}


def reference(t: dict, offsets: tuple[int, ...], out_features: int):
    """float64 output and gradients through the dense butterfly matrix (autograd)."""
    leaves = {k: v.detach().double().requires_grad_() for k, v in t.items() if v is not None and k != "grad"}
    groups = leaves["butterfly"].shape[0]
    dense = butterfly_to_dense(leaves["butterfly"], partner_index(groups, list(offsets)))
    x = leaves["x"]
    y = x @ dense[:out_features, :x.shape[1]].T
    if "u" in leaves:
        y = y + (x @ leaves["v"].T) @ leaves["u"].T
    if "bias" in leaves:
        y = y + leaves["bias"]
    y.backward(t["grad"].double())
    return y.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}g{c[1]}o{c[5]}i{c[6]}r{c[7]}{'b' if c[8] else ''}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_layer_matches_float64_reference(dtype, case, monkeypatch):
    offsets, out_features = case[4], case[5]
    t = random_case(case_seed(str(dtype), case), case, dtype)
    y_ref, grads_ref = reference(t, offsets, out_features)
    poison(bsm, monkeypatch)  # every output and gradient buffer of the kernels starts as NaN
    leaves = {k: v.clone().requires_grad_() for k, v in t.items() if v is not None and k != "grad"}
    y = pfl.pixelfly_linear_triton(leaves["x"], leaves["butterfly"], offsets, leaves.get("u"), leaves.get("v"),
                                   leaves.get("bias"), out_features)
    assert y.dtype == dtype and y.shape == (case[0], out_features)
    assert_close(y.detach(), y_ref, dtype, "forward")
    y.backward(t["grad"])
    for name, leaf in leaves.items():
        assert_close(leaf.grad, grads_ref[name], dtype, f"grad {name}")


def test_strided_incoming_gradient():
    """A non-contiguous gradient (a transposed view, as a later op may hand back) is read through its strides."""
    case = (21, 4, 16, 16, (0, 1, 2), 60, 64, 16, True)
    t = random_case(11, case, torch.float32)
    y_ref, grads_ref = reference(t, case[4], case[5])
    leaves = {k: v.clone().requires_grad_() for k, v in t.items() if v is not None and k != "grad"}
    y = pfl.pixelfly_linear_triton(leaves["x"], leaves["butterfly"], case[4], leaves["u"], leaves["v"],
                                   leaves["bias"], case[5])
    y.backward(t["grad"].t().contiguous().t())
    for name, leaf in leaves.items():
        assert_close(leaf.grad, grads_ref[name], torch.float32, f"grad {name}")


def _count_calls(monkeypatch, function) -> list:
    calls = []
    original = function.forward

    def counted(ctx, *args):
        calls.append(1)
        return original(ctx, *args)

    monkeypatch.setattr(function, "forward", staticmethod(counted))
    return calls


def _run(layer: PixelflyLinear, x: torch.Tensor, backend: str, monkeypatch, autocast: bool = False):
    monkeypatch.setenv("HF_SPARSE_BACKEND", backend)
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.float().square().sum().backward()
    return y.detach(), {name: p.grad.clone() for name, p in layer.named_parameters() if p.numel()}


@pytest.mark.parametrize(("out_features", "rank"), [(64, 4), (64, 0), (80, 16)])
def test_scalar_gated_layer_runs_fused_with_torch_results(out_features, rank, monkeypatch):
    """HF_SPARSE_BACKEND=triton: the layer makes one fused call (counted) with the PyTorch path's output and
    gradients, alpha's included; input 48 of 64 padded columns, bias on; 80 outputs pad to 4 groups of 32 rows
    (the last group is all padding)."""
    torch.manual_seed(3)
    layer = PixelflyLinear(PixelflyShape(out_features, 48, 16, 4, 2, rank))
    with torch.no_grad():
        layer.alpha.fill_(0.7 if rank else 1.0)
    assert layer.shape.out_padded - out_features >= 32 or out_features == 64
    x = torch.randn(2, 5, 48)
    y_torch, grads_torch = _run(layer, x, "torch", monkeypatch)
    calls = _count_calls(monkeypatch, pfl.TritonPixelflyLinear)
    y, grads = _run(layer, x, "triton", monkeypatch)
    assert len(calls) == 1
    assert_close(y, y_torch.double(), torch.float32, "PixelflyLinear output")
    assert grads.keys() == grads_torch.keys()
    for name, grad in grads.items():
        assert_close(grad, grads_torch[name].double(), torch.float32, f"grad {name}")


def test_autocast_runs_fused_in_bfloat16(monkeypatch):
    """Under bfloat16 autocast both paths agree on the output and weight gradients; alpha's gradient is a sum of
    ``dy * (x B^T - h U^T)`` over all outputs, whose terms cancel, so it is checked against float64 relative to
    the total size of those terms."""
    torch.manual_seed(4)
    layer = PixelflyLinear(PixelflyShape(64, 64, 16, 4, 2, 16))
    x = torch.randn(3, 7, 64)
    y_torch, grads_torch = _run(layer, x, "torch", monkeypatch, autocast=True)
    y, grads = _run(layer, x, "triton", monkeypatch, autocast=True)
    assert y.dtype == torch.bfloat16 and grads["butterfly_weight"].dtype == torch.float32
    assert_close(y, y_torch.double(), torch.bfloat16, "autocast output")
    for name, grad in grads.items():
        if name != "alpha":
            assert_close(grad, grads_torch[name].double(), torch.bfloat16, f"autocast grad {name}")
    with torch.no_grad():
        flat = x.reshape(-1, 64).double()
        lowrank = flat @ layer.v_weight.double().T @ layer.u_weight.double().T
        butterfly = flat @ layer.butterfly_dense().double().T
        dy = 2 * (layer.alpha.double() * butterfly + (1 - layer.alpha.double()) * lowrank + layer.bias.double())
        terms = dy * (butterfly - lowrank)
    for path, grad in (("triton", grads["alpha"]), ("torch", grads_torch["alpha"])):
        assert abs(grad.item() - terms.sum().item()) < 1e-2 * terms.abs().sum().item(), path


def test_input_gated_layer_uses_the_butterfly_kernel(monkeypatch):
    """gating='input' mixes per token: it runs the butterfly product on the kernel and the rest in PyTorch."""
    torch.manual_seed(5)
    layer = PixelflyLinear(PixelflyShape(64, 48, 16, 4, 2, 4), gating="input")
    x = torch.randn(2, 5, 48)
    y_torch, grads_torch = _run(layer, x, "torch", monkeypatch)
    calls = _count_calls(monkeypatch, bsm.TritonButterflyMatmul)
    y, grads = _run(layer, x, "triton", monkeypatch)
    assert calls
    assert_close(y, y_torch.double(), torch.float32, "gated output")
    for name, grad in grads.items():
        assert_close(grad, grads_torch[name].double(), torch.float32, f"gated grad {name}")


def test_bad_inputs_are_rejected():
    x, w = torch.zeros(4, 60), torch.zeros(4, 16, 48)
    u, v = torch.zeros(64, 8), torch.zeros(8, 60)
    with pytest.raises(ValueError, match="both low-rank factors"):
        pfl.pixelfly_linear_triton(x, w, (0, 1, 2), u, None, None, 64)
    with pytest.raises(ValueError, match="out_features=65"):
        pfl.pixelfly_linear_triton(x, w, (0, 1, 2), None, None, None, 65)
    with pytest.raises(ValueError, match=r"v \(R, 60\)"):
        pfl.pixelfly_linear_triton(x, w, (0, 1, 2), u, torch.zeros(8, 64), None, 64)
    with pytest.raises(ValueError, match="bias must be"):
        pfl.pixelfly_linear_triton(x, w, (0, 1, 2), None, None, torch.zeros(60), 64)
    with pytest.raises(TypeError, match="u is torch.float16"):
        pfl.pixelfly_linear_triton(x, w, (0, 1, 2), u.half(), v, None, 64)
    with pytest.raises(ValueError, match="or fewer"):
        pfl.pixelfly_linear_triton(torch.zeros(4, 65), w, (0, 1, 2), None, None, None, 64)


def test_sparsified_gpt2_trains_the_same_on_the_kernels(monkeypatch):
    """A whole model: tiny GPT-2 with every projection a PixelflyLinear (the MLP's pad to whole groups, rank-8
    terms) gives the same loss and gradients on the fused kernels as on the PyTorch path."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_sparse import sparsify
    from hf_sparse.methods.pixelfly import PixelflyConfig

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=80, n_layer=1, n_head=2, n_inner=160, vocab_size=64, n_positions=16))
    model = sparsify(model, PixelflyConfig(density=0.4, block_size=8)).eval()  # no dropout: same randomness
    layers = [m for m in model.modules() if isinstance(m, PixelflyLinear)]
    assert any(m.shape.out_padded - m.out_features >= m.shape.out_tile for m in layers)
    assert all(m.shape.rank for m in layers if m.out_features != 80 or m.in_features != 80)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))

    def loss_and_grads(backend: str):
        monkeypatch.setenv("HF_SPARSE_BACKEND", backend)
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_torch, grads_torch = loss_and_grads("torch")
    calls = _count_calls(monkeypatch, pfl.TritonPixelflyLinear)
    loss, grads = loss_and_grads("triton")
    assert len(calls) == len(layers)
    assert abs(loss.item() - loss_torch.item()) < 1e-5
    assert grads.keys() == grads_torch.keys()
    for name, grad in grads.items():
        assert_close(grad, grads_torch[name].double(), torch.float32, f"grad {name}")
