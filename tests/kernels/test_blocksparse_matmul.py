"""Triton block-butterfly matmul (interpreter, CPU): outputs and gradients against a float64 dense reference."""

from __future__ import annotations

import pytest
import torch

from .helpers import assert_close, case_seed, poison, require_triton_interpreter

require_triton_interpreter()

from hf_sparse.kernels import blocksparse_matmul as bsm  # noqa: E402

from hf_sparse.methods.pixelfly.ops import butterfly_to_dense, partner_index  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference(x: torch.Tensor, weight: torch.Tensor, offsets: tuple[int, ...], grad_out: torch.Tensor):
    """float64 ``(y (G, N, out_tile), dx, dW)`` through the dense matrix of the butterfly (autograd)."""
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    g, out_tile, _ = weight.shape
    dense = butterfly_to_dense(w64, partner_index(g, list(offsets)))
    y = (x64 @ dense.T).view(-1, g, out_tile).transpose(0, 1)
    y.backward(grad_out.double())
    return y.detach(), x64.grad, w64.grad


def random_case(seed: int, n: int, groups: int, out_tile: int, in_tile: int, offsets: tuple[int, ...],
                dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, groups * in_tile, generator=gen).to(dtype)
    weight = (torch.randn(groups, out_tile, len(offsets) * in_tile, generator=gen) / in_tile**0.5).to(dtype)
    grad_out = torch.randn(groups, n, out_tile, generator=gen).to(dtype)
    return x, weight, grad_out


# (N, G, out_tile, in_tile, offsets): block sizes 16 and 32, rectangular tiles, N not a multiple of any block
SHAPES = [(37, 4, 16, 16, (0, 1, 2)), (21, 4, 32, 16, (0, 1, 2)), (19, 8, 16, 32, (0, 1, 2, 4))]
# None: the autotuned launch (one config kept in the interpreter); forced 16-blocks: several K steps, partial M
CONFIGS = [None, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}]


@pytest.mark.parametrize("config", CONFIGS, ids=["autotuned", "blocks16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"n{s[0]}g{s[1]}o{s[2]}i{s[3]}k{len(s[4])}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernels_match_float64_reference(dtype, shape, config, monkeypatch):
    n, groups, out_tile, in_tile, offsets = shape
    seed = case_seed(str(dtype), shape, str(config))
    x, weight, grad_out = random_case(seed, n, groups, out_tile, in_tile, offsets, dtype)
    y_ref, dx_ref, dw_ref = reference(x, weight, offsets, grad_out)
    poison(bsm, monkeypatch)
    y = bsm.forward(x, weight, offsets, config)
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype, "forward")
    assert_close(bsm.grad_input(grad_out, weight, offsets, config), dx_ref, dtype, "grad input")
    assert_close(bsm.grad_weight(grad_out, x, offsets, config), dw_ref, dtype, "grad weight")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autograd_function_with_strided_grad(dtype, monkeypatch):
    """The autograd path, with a transposed (non-contiguous) incoming gradient as PixelflyLinear produces."""
    n, groups, out_tile, in_tile, offsets = 23, 4, 16, 16, (0, 1, 2)
    x, weight, grad_out = random_case(7 + len(str(dtype)), n, groups, out_tile, in_tile, offsets, dtype)
    y_ref, dx_ref, dw_ref = reference(x, weight, offsets, grad_out)
    poison(bsm, monkeypatch)
    x.requires_grad_(), weight.requires_grad_()
    y = bsm.butterfly_matmul_triton(x, weight, offsets)
    assert_close(y, y_ref, dtype, "forward")
    grad_token_major = grad_out.transpose(0, 1).contiguous()  # (N, G, out_tile): its transpose is strided
    y.backward(grad_token_major.transpose(0, 1))
    assert_close(x.grad, dx_ref, dtype, "grad input")
    assert_close(weight.grad, dw_ref, dtype, "grad weight")


def test_poisoned_output_is_caught(monkeypatch):
    """The poisoning works: a kernel writing nothing leaves NaN, and the check rejects it."""
    poison(bsm, monkeypatch)
    untouched = bsm._empty((2, 3), torch.zeros(1))
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(untouched, torch.ones(2, 3, dtype=torch.float64), torch.float32, "untouched")


def test_bad_inputs_are_rejected():
    x, weight = torch.zeros(4, 64), torch.zeros(4, 16, 48)
    with pytest.raises(ValueError, match="columns"):
        bsm.butterfly_matmul_triton(torch.zeros(4, 60), weight, (0, 1, 2))
    with pytest.raises(ValueError, match="multiple of len"):
        bsm.butterfly_matmul_triton(x, torch.zeros(4, 16, 47), (0, 1, 2))
    with pytest.raises(ValueError, match="offsets in"):
        bsm.butterfly_matmul_triton(x, weight, (0, 1, 4))
    with pytest.raises(TypeError, match="dtype"):
        bsm.butterfly_matmul_triton(x, weight.half(), (0, 1, 2))
