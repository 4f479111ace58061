"""DST-EE inside SparseTrainer and the plain Trainer (SparseCallback): masks move, invariants hold, metrics are
logged, the report is written, resuming from a checkpoint is exact and a 2-process DDP run keeps identical
masks on both ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

from hf_sparse import sparsify
from hf_sparse.methods.dst import DSTEEConfig, MaskedLayer
from hf_sparse.training import SparseCallback, SparseTrainer

from ...conftest import TINY_MODELS


class LMData(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, seq: int = 16) -> None:
        self.ids = torch.randint(1, 64, (n, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_model(init_seed: int = 0, **config: Any):
    model = TINY_MODELS["gpt2"].build(seed=init_seed).train()
    return sparsify(model, DSTEEConfig(**{"sparsity": 0.8, "update_interval": 3, "drop_fraction": 0.5, **config}))


def make_args(tmp_path, **kwargs: Any) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                learning_rate=1e-2, weight_decay=0.1, max_grad_norm=1.0, max_steps=16, logging_steps=4,
                save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0, disable_tqdm=True)
    base.update(kwargs)
    return TrainingArguments(**base)


def masked(model) -> dict[str, MaskedLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLayer)}


def test_sparse_trainer_moves_masks_and_keeps_invariants(tmp_path):
    model = make_model()
    initial = {n: m.mask.clone() for n, m in masked(model).items()}
    trainer = SparseTrainer(model=model, args=make_args(tmp_path), train_dataset=LMData())
    trainer.train()
    schedule = trainer.schedules[0]
    assert [h["step"] for h in schedule.history] == [3, 6, 9, 12]  # stop_step = 0.75 * 16
    assert any(not torch.equal(m.mask, initial[n]) for n, m in masked(model).items())
    for layer in masked(model).values():
        assert int(layer.mask.sum()) == layer.active
        assert not layer.weight[~layer.mask].any()
        for value in trainer.optimizer.state[layer.weight].values():
            if value.shape == layer.weight.shape:
                assert not value[~layer.mask].any()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all("dst/exploration_degree" in h and "dst/sparsity/transformer.h.0.mlp.c_fc" in h
                          for h in logged)
    assert logged[-1]["dst/exploration_degree"] > 0.2
    report = json.loads((tmp_path / "out" / "dst_report.json").read_text())
    assert len(report["history"]) == 4 and report["stop_step"] == 12
    trainer.save_model(str(tmp_path / "final"))
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    for name, layer in masked(model).items():
        assert torch.equal(again.get_submodule(name).mask, layer.mask)
        assert torch.equal(again.get_submodule(name).active_count, layer.active_count)


def test_plain_trainer_with_callback(tmp_path):
    model = make_model(grow="rigl")
    initial = {n: m.mask.clone() for n, m in masked(model).items()}
    seen: list[dict] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    trainer = Trainer(model=model, args=make_args(tmp_path, max_steps=8), train_dataset=LMData(),
                      callbacks=[SparseCallback(model), Record()])
    trainer.train()
    assert any(not torch.equal(m.mask, initial[n]) for n, m in masked(model).items())
    assert all(not m.weight[~m.mask].any() for m in masked(model).values())
    assert any(h.get("dst/mask_change", 0) > 0 for h in seen)


@pytest.mark.parametrize("grow", ["dst-ee", "set"])
def test_resume_from_checkpoint_is_exact(tmp_path, grow):
    # checkpoint after step 8; step 9 updates the masks, so the resumed run must arm the gradient capture
    args = make_args(tmp_path, save_strategy="steps", save_steps=8)
    full = SparseTrainer(model=make_model(grow=grow), args=args, train_dataset=LMData())
    full.train()
    expected = {k: v.clone() for k, v in full.model.state_dict().items()}
    other = make_model(init_seed=99, grow=grow)  # other weights and masks: all must come from the checkpoint
    resumed = SparseTrainer(model=other, args=args, train_dataset=LMData())
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-8"))
    got = resumed.model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    assert resumed.schedules[0].history == full.schedules[0].history


def test_two_process_ddp_keeps_masks_identical(tmp_path):
    script = Path(__file__).with_name("ddp_train.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with socket.socket() as probe:  # a free port (port 0 makes torchrun hang)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["updates"] == ranks[1]["updates"] == [2, 4, 6]
    assert ranks[0]["local_grads_differ"]  # the ranks saw different data: masks agree thanks to the all-reduce
    assert ranks[0]["masks_changed"]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
