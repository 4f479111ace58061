"""Compact CSR export: round trip into the masked model and into the original dense architecture, size."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from hf_sparse import sparsify
from hf_sparse.methods.dst import DSTEEConfig, MaskedLayer, load_sparse, save_sparse, to_sparse_state_dict
from hf_sparse.methods.dst.export import csr_weight


def _trained_like(gpt2):
    model = sparsify(gpt2.build(), DSTEEConfig(sparsity=0.9, seed=1))
    with torch.no_grad():  # an active weight that is exactly zero (just grown) must keep its place in the mask
        layer = model.get_submodule("transformer.h.0.mlp.c_fc")
        first = layer.mask.flatten().nonzero()[0, 0]
        layer.weight.view(-1)[first] = 0.0
    return model


def test_round_trip_into_the_masked_model(gpt2, tmp_path):
    model = _trained_like(gpt2)
    save_sparse(model, tmp_path / "model.safetensors")
    other = sparsify(gpt2.build(seed=5), DSTEEConfig(sparsity=0.9, seed=2))  # other weights, other masks
    load_sparse(other, tmp_path / "model.safetensors")
    for name, module in model.named_modules():
        if isinstance(module, MaskedLayer):
            twin = other.get_submodule(name)
            assert torch.equal(module.weight, twin.weight) and torch.equal(module.mask, twin.mask)
            assert torch.equal(twin.active_count, twin.mask.to(torch.int16))  # counts restart from the mask
    inputs = gpt2.inputs()
    assert torch.equal(model(**inputs).logits, other(**inputs).logits)
    assert other.lm_head.weight is other.transformer.wte.weight


def test_round_trip_into_the_dense_architecture_and_size(gpt2, tmp_path):
    model = _trained_like(gpt2)
    save_sparse(model, tmp_path / "compact.safetensors")
    dense = load_sparse(gpt2.build(seed=7), tmp_path / "compact.safetensors")
    inputs = gpt2.inputs()
    assert torch.allclose(model(**inputs).logits, dense(**inputs).logits, atol=1e-5)
    blocks = {k: v for k, v in model.state_dict().items() if k.startswith("transformer.h.")}
    compact = {k: v for k, v in to_sparse_state_dict(model).items() if k.startswith("transformer.h.")}
    full_bytes = sum(v.numel() * v.element_size() for v in blocks.values())
    compact_bytes = sum(v.numel() * v.element_size() for v in compact.values())
    assert compact_bytes < 0.35 * full_bytes


def test_csr_weight_is_the_masked_matrix():
    model = sparsify(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()), DSTEEConfig(sparsity=0.6))
    layer = model[0]
    csr = csr_weight(layer)
    assert csr.layout == torch.sparse_csr and csr.shape == (4, 27)
    assert torch.equal(csr.to_dense(), layer.dense_weight()) and csr.values().numel() == layer.active


def test_bad_files_and_mismatches(gpt2, tmp_path):
    model = _trained_like(gpt2)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an hf-sparse compact export"):
        load_sparse(model, tmp_path / "other.safetensors")
    save_sparse(model, tmp_path / "m.safetensors")
    denser = sparsify(gpt2.build(), DSTEEConfig(sparsity=0.5))
    with pytest.raises(ValueError, match="active weights"):
        load_sparse(denser, tmp_path / "m.safetensors")
