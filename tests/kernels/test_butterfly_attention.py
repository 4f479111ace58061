"""Triton butterfly flash attention (interpreter, CPU): outputs and gradients against a float64 dense reference."""

from __future__ import annotations

import math

import pytest
import torch

from .helpers import assert_close, case_seed, poison, require_triton_interpreter

require_triton_interpreter()

from hf_sparse.kernels import butterfly_attention as ka  # noqa: E402

from hf_sparse.methods.pixelfly.attention import butterfly_attention, layout_offsets, layout_with_globals  # noqa: E402


def dense_reference(q, k, v, grad_out, block_size: int, n_factors: int, is_causal: bool, keep: torch.Tensor | None):
    """float64 ``(out, dq, dk, dv)``: softmax over the token-level butterfly layout (block layout x causal x key
    padding ``keep (B, T)``), fully masked rows 0. Independent of both implementations."""
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    t = q.shape[2]
    nb = math.ceil(t / block_size)
    blocks = torch.arange(t) // block_size
    allowed = layout_with_globals(nb, layout_offsets(nb, n_factors), 0)[blocks][:, blocks]
    if is_causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool).tril()
    allowed = allowed[None, None] & (keep[:, None, None, :] if keep is not None else True)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    out = probs @ v
    out.backward(grad_out.double())
    return out.detach(), q.grad, k.grad, v.grad


def random_qkv(seed: int, b: int, h: int, t: int, d: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=gen).to(dtype) for _ in range(4)]  # q, k, v, grad_out


CASES = [  # (B, H, T, D, block_size, n_factors): T not a multiple of the block in two of them (padding)
    (2, 2, 64, 16, 16, 2),
    (1, 2, 72, 24, 16, 3),
    (1, 1, 80, 32, 32, 1),
]


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}h{c[1]}t{c[2]}d{c[3]}bs{c[4]}f{c[5]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_kernel_matches_float64_reference(dtype, case, is_causal, monkeypatch):
    b, h, t, d, bs, factors = case
    q, k, v, grad_out = random_qkv(case_seed(str(dtype), case, is_causal), b, h, t, d, dtype)
    ref = dense_reference(q, k, v, grad_out, bs, factors, is_causal, None)
    poison(ka, monkeypatch)
    monkeypatch.setenv("HF_SPARSE_BACKEND", "triton")
    calls, original = [], ka.TritonButterflyAttention.forward

    def counted(ctx, *args):
        calls.append(1)
        return original(ctx, *args)

    monkeypatch.setattr(ka.TritonButterflyAttention, "forward", staticmethod(counted))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = butterfly_attention(q, k, v, bs, factors, is_causal=is_causal)
    out.backward(grad_out)
    assert calls, "the Triton kernel did not run"
    for name, actual, expected in zip(("out", "dq", "dk", "dv"), (out, q.grad, k.grad, v.grad), ref, strict=True):
        assert actual.dtype == dtype
        assert_close(actual, expected, dtype, name)


@pytest.mark.parametrize("d", [64, 128], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_head_dims_64_128_and_padding_mask(is_causal, d, monkeypatch):
    """The model's 4-D bool mask (key padding, with causality folded in) is reduced to the kernel's masks."""
    b, h, t, bs, factors = 2, 1, 48, 16, 2
    q, k, v, grad_out = random_qkv(11 + is_causal, b, h, t, d, torch.float32)
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[0, :5] = False  # left padding of the first sequence
    keep[1, -7:] = False  # right padding of the second
    ref = dense_reference(q, k, v, grad_out, bs, factors, is_causal, keep)
    mask = keep[:, None, None, :].expand(b, 1, t, t)
    if is_causal:
        mask = mask & torch.ones(t, t, dtype=torch.bool).tril()
    poison(ka, monkeypatch)
    monkeypatch.setenv("HF_SPARSE_BACKEND", "triton")
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    assert ka.key_padding(mask.expand(b, h, t, t), t, t, False, q.device)[1] == is_causal
    out = butterfly_attention(q, k, v, bs, factors, attention_mask=mask)  # causality only inside the mask
    out.backward(grad_out)
    for name, actual, expected in zip(("out", "dq", "dk", "dv"), (out, q.grad, k.grad, v.grad), ref, strict=True):
        assert_close(actual, expected, torch.float32, name)


def test_unsupported_masks_fall_back_to_pytorch(monkeypatch):
    t = 32
    per_head = torch.ones(1, 2, t, t, dtype=torch.bool)
    per_head[:, 1, :, :3] = False
    assert ka.key_padding(per_head, t, t, False, torch.device("cpu")) is None
    arbitrary = torch.rand(1, 1, t, t, generator=torch.Generator().manual_seed(0)) > 0.3
    assert ka.key_padding(arbitrary, t, t, False, torch.device("cpu")) is None
    assert ka.key_padding(torch.zeros(1, 1, t, t), t, t, False, torch.device("cpu")) is None  # additive float
    q, k, v, _ = random_qkv(5, 1, 2, t, 16, torch.float32)
    assert ka.butterfly_attention_triton(q, k, v, 16, [0, 1], False, None, t, 0.25, global_blocks=1) is None
    monkeypatch.setenv("HF_SPARSE_BACKEND", "triton")
    expected = butterfly_attention(q.double(), k.double(), v.double(), 16, 1, attention_mask=arbitrary)
    assert_close(butterfly_attention(q, k, v, 16, 1, attention_mask=arbitrary), expected, torch.float32, "fallback")
