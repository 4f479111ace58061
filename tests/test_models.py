"""End-to-end on six architectures and every method: sparsify, forward/backward, save -> plain reload,
dtype casts, generate, gradient checkpointing and a few Trainer steps."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from hf_sparse import GreenformerConfig, PixelflyConfig, SparseLayer, get_sparsity_config, sparsify

METHODS = {
    "greenformer": lambda: GreenformerConfig(rank=0.5),
    "pixelfly": lambda: PixelflyConfig(density=0.5, block_size=8, lowrank_fraction=0.5),
    "pixelfly-gated": lambda: PixelflyConfig(density=0.5, block_size=4, gating="input", init="project"),
}


@pytest.fixture(params=sorted(METHODS))
def method(request):
    return METHODS[request.param]


def _logits(out):
    return out.logits


def test_sparsify_forward_backward(tiny, method):
    model = tiny.build()
    sparsify(model, method())
    layers = [m for m in model.modules() if isinstance(m, SparseLayer)]
    assert layers, "nothing was converted"
    model.train()
    out = model(**tiny.inputs())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for layer in layers:
        for name, param in layer.named_parameters():
            if param.numel():
                assert param.grad is not None and torch.isfinite(param.grad).all(), name
    plan = get_sparsity_config(model).plan
    assert set(plan) == {n for n, m in model.named_modules() if isinstance(m, SparseLayer)}


def test_output_heads_stay_dense(tiny, method):
    model = tiny.build()
    sparsify(model, method())
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out_emb is not None:
        assert not isinstance(out_emb, SparseLayer)
    for name, module in model.named_modules():
        if name.split(".")[0] in ("classifier", "lm_head"):
            assert not isinstance(module, SparseLayer), name


def test_save_and_plain_reload_is_exact(tiny, method, tmp_path):
    model = tiny.build()
    sparsify(model, method())
    inputs = tiny.inputs()
    with torch.no_grad():
        expected = _logits(model(**inputs))
    model.save_pretrained(tmp_path)
    reloaded, info = tiny.auto_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    first = next(iter(get_sparsity_config(model).plan))
    assert type(reloaded.get_submodule(first)) is type(model.get_submodule(first))
    with torch.no_grad():
        assert torch.equal(_logits(reloaded.eval()(**inputs)), expected)
    assert get_sparsity_config(reloaded).plan == get_sparsity_config(model).plan


def test_dtype_casts(tiny, method):
    model = tiny.build()
    sparsify(model, method())
    inputs = tiny.inputs()
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    model.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        assert torch.isfinite(_logits(model(**inputs)).float()).all()
    model.half()
    assert all(p.dtype == torch.float16 for p in model.parameters())
    model.float()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_generate_matches_after_reload(tiny, method, tmp_path):
    if not tiny.generates:
        return
    model = tiny.build()
    sparsify(model, method())
    prompt = tiny.inputs()["input_ids"][:, :4]
    kwargs = {"max_new_tokens": 5, "do_sample": False, "attention_mask": torch.ones_like(prompt)}
    generated = model.generate(prompt, **kwargs)
    assert generated.shape[1] >= 5 if tiny.name == "t5" else generated.shape[1] == 9
    model.save_pretrained(tmp_path)
    reloaded = tiny.auto_class.from_pretrained(tmp_path)
    assert torch.equal(reloaded.generate(prompt, **kwargs), generated)


def test_gradient_checkpointing(tiny, method):
    model = tiny.build()
    if not model.supports_gradient_checkpointing:
        return
    sparsify(model, method())
    inputs = tiny.inputs()
    model.train()
    torch.manual_seed(0)
    reference = model(**inputs).loss
    reference.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    torch.manual_seed(0)
    loss = model(**inputs).loss
    loss.backward()
    assert torch.allclose(loss, reference)
    for name, grad in grads.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-6), name


class _Repeat(Dataset):
    def __init__(self, example: dict, n: int) -> None:
        self.example, self.n = example, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {k: v[i % len(v)] for k, v in self.example.items()}


def test_trainer_loss_decreases(tiny, method, tmp_path):
    model = tiny.build()
    sparsify(model, method())
    batch = tiny.inputs()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=2,
                             learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                             disable_tqdm=True, seed=0, lr_scheduler_type="constant")
    trainer = Trainer(model=model, args=args, train_dataset=_Repeat(batch, 24))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12
    assert min(losses[-3:]) < losses[0]
    assert any(isinstance(m, SparseLayer) for m in model.modules())
