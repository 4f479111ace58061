"""Butterfly sparse attention: exactness with a dense layout, causality, masks, model integration, reload."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_sparse import PixelflyConfig, densify, get_sparsity_config, sparsify
from hf_sparse.methods.pixelfly.attention import butterfly_attention


def _qkv(t: int = 50, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, t, 8, generator=gen, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_dense_layout_equals_sdpa(causal, mask_kind):
    q, k, v = _qkv()
    mask = None
    if mask_kind is not None:
        keep = torch.ones(2, 1, 50, 50, dtype=torch.bool)
        keep[0, :, :, 41:] = False  # right padding of the first sequence
        mask = keep if mask_kind == "bool" else torch.zeros(keep.shape, dtype=torch.float64).masked_fill(
            ~keep, float("-inf"))
        if causal:
            causal_keep = torch.ones(50, 50, dtype=torch.bool).tril()
            mask = mask & causal_keep if mask_kind == "bool" else mask.masked_fill(~causal_keep, float("-inf"))
    out = butterfly_attention(q, k, v, 8, 0, is_causal=causal and mask is None, attention_mask=mask,
                              offsets=list(range(8)))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
    assert torch.allclose(out, ref, atol=1e-12)


def test_sparse_layout_is_causal_and_really_sparse():
    q, k, v = _qkv(64)
    out = butterfly_attention(q, k, v, 8, 1, is_causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 37:] += 1
    v2[:, :, 37:] -= 1
    out2 = butterfly_attention(q, k2, v2, 8, 1, is_causal=True)
    assert torch.equal(out[:, :, :37], out2[:, :, :37]) and not torch.allclose(out[:, :, 37:], out2[:, :, 37:])
    dense = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(out[:, :, :16], dense[:, :, :16])  # blocks 0, 1 see all their past: {0, 1} = {i ^ 0, i ^ 1}
    assert not torch.allclose(out, dense)


def test_model_integration_reload_and_causality(gpt2, tmp_path):
    model = gpt2.build()
    dense_logits = model(gpt2.inputs(seq=24)["input_ids"]).logits
    cfg = PixelflyConfig(density=0.5, block_size=8, attention=True, attention_block_size=4, attention_n_factors=1)
    sparsify(model, cfg)
    assert model.config._attn_implementation == "hf_sparse_butterfly_b4_f1"
    ids = gpt2.inputs(seq=24)["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
        changed = ids.clone()
        changed[:, 17:] = (changed[:, 17:] + 5) % 60 + 1
        assert torch.equal(model(changed).logits[:, :17], logits[:, :17])
    assert not torch.allclose(logits, dense_logits, atol=1e-3)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    assert reloaded.config._attn_implementation == "hf_sparse_butterfly_b4_f1"
    assert get_sparsity_config(reloaded).attention
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, logits)
    densify(reloaded)
    assert reloaded.config._attn_implementation == "sdpa" and get_sparsity_config(reloaded) is None


def test_default_factors_follow_density_and_padding_batches(tiny):
    if tiny.name == "t5":
        return  # relative position bias: exact attention is used (the function falls back)
    model = tiny.build()
    sparsify(model, PixelflyConfig(density=0.5, block_size=8, attention=True, attention_block_size=4))
    assert get_sparsity_config(model).attention_n_factors is not None
    inputs = tiny.inputs(seq=16)
    if "input_ids" in inputs and tiny.name != "bert":
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        inputs["attention_mask"][0, 12:] = 0
    out = model(**inputs)
    assert torch.isfinite(out.logits).all()
    out.loss.backward()


def test_attention_needs_a_transformers_model():
    model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ValueError, match="attention interface"):
        sparsify(model, PixelflyConfig(block_size=8, attention=True, attention_n_factors=1))
    assert isinstance(model[0], nn.Linear)


@pytest.mark.parametrize("case", ["plain", "causal", "bool_mask", "float_mask", "padded_tail"])
def test_memory_lean_backward_matches_autograd(case):
    from hf_sparse.methods.pixelfly import attention as att

    t = 21 if case == "padded_tail" else 24
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, t, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = None
    if case in ("bool_mask", "float_mask"):
        keep = torch.rand(1, 1, t, t, generator=gen) > 0.3
        mask = keep if case == "bool_mask" else torch.zeros(1, 1, t, t, dtype=torch.float64).masked_fill(
            ~keep, float("-inf"))
    kwargs = {"is_causal": case in ("causal", "padded_tail"), "attention_mask": mask}
    assert torch.autograd.gradcheck(lambda a, b, c: butterfly_attention(a, b, c, 4, 2, **kwargs), (q, k, v))
    out = butterfly_attention(q, k, v, 4, 2, **kwargs)
    nb = -(-t // 4)
    pad = (0, 0, 0, nb * 4 - t)
    blocks = [F.pad(x, pad).reshape(1, 2, nb, 4, 4) for x in (q, k, v)]
    full_mask = None if mask is None else mask.expand(1, 1, nb * 4, nb * 4) if nb * 4 == t else F.pad(
        mask, (0, nb * 4 - t, 0, nb * 4 - t), value=False if mask.dtype == torch.bool else 0.0)
    pairs = att._block_pairs(nb, 4, t, [0, 1, 2], kwargs["is_causal"], full_mask, q.device)
    reference = att._attend(*blocks, pairs, 0.5)[0].reshape(1, 2, nb * 4, 4)[:, :, :t]
    assert torch.allclose(out, reference)


@pytest.mark.parametrize("causal", [False, True])
def test_global_blocks_equal_masked_dense_attention(causal):
    from hf_sparse.methods.pixelfly.attention import layout_offsets, layout_with_globals

    t, bs, nf, g = 60, 4, 1, 2
    q, k, v = (x.requires_grad_() for x in _qkv(t, seed=3))
    nb = -(-t // bs)
    layout = layout_with_globals(nb, layout_offsets(nb, nf), g)
    assert layout[:g].all() and layout[:, :g].all() and not layout.all()
    keep = layout.repeat_interleave(bs, 0).repeat_interleave(bs, 1)[:t, :t]
    if causal:
        keep = keep & torch.ones(t, t, dtype=torch.bool).tril()
    out = butterfly_attention(q, k, v, bs, nf, is_causal=causal, global_blocks=g)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)
    # without globals the same call differs (the globals really add blocks)
    assert not torch.allclose(out, butterfly_attention(q, k, v, bs, nf, is_causal=causal))


def test_global_blocks_config_round_trip_and_model(gpt2, tmp_path):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="attention_global_blocks"):
        PixelflyConfig(attention=True, attention_global_blocks=-1)
    model = sparsify(gpt2.build(), PixelflyConfig(block_size=8, attention=True, attention_block_size=4,
                                                  attention_n_factors=1, attention_global_blocks=1))
    assert model.config._attn_implementation.endswith("_g1")
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert get_sparsity_config(reloaded).attention_global_blocks == 1
    ids = torch.randint(1, 64, (2, 24))
    torch.testing.assert_close(reloaded(ids).logits, model.eval()(ids).logits)
