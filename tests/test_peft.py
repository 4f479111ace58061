"""PEFT LoRA on the dense layers that remain in a compressed model."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from hf_sparse import LED, GreenformerConfig, sparsify


def test_lora_on_remaining_dense_layers_trains(gpt2):
    model = sparsify(gpt2.build(), GreenformerConfig(rank=4, target_modules=["c_attn", "c_proj"]))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_fc"], lora_alpha=8, lora_dropout=0.0))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert isinstance(peft_model.base_model.model.transformer.h[0].attn.c_attn, LED)
    batch = gpt2.inputs()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    peft_model.train()
    for _ in range(15):
        loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
