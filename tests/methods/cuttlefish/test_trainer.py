"""Cuttlefish inside SparseTrainer on tiny models: the automatic switch, resume before/after it, gradient
accumulation, Frobenius decay / extra norm with the Trainer's optimizer groups, save and reload."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from hf_sparse import get_sparsity_config, sparse_layers, sparsify
from hf_sparse.methods.cuttlefish import CuttlefishConfig
from hf_sparse.methods.cuttlefish.layers import NormLED
from hf_sparse.methods.greenformer import GreenformerConfig
from hf_sparse.summary import count_parameters
from hf_sparse.training import SparseTrainer

from ...conftest import TINY_MODELS
from .test_schedule import lm_batches


class LMData(torch.utils.data.Dataset):
    def __init__(self, n: int = 64) -> None:
        self.ids = lm_batches(n)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class ClassificationData(torch.utils.data.Dataset):
    """Label 1 when the second token is in the upper half of the vocabulary."""

    def __init__(self, n: int = 64) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 64, (n, 12), generator=gen)
        self.labels = (self.ids[:, 1] >= 32).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


CONFIG = dict(rank_check_interval=2, smoothing_window=2, min_checks=2, epsilon=0.3, max_full_rank_fraction=0.5)


def args(tmp_path, **kwargs) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=1e-2, weight_decay=0.1,
                max_steps=24, logging_steps=2, save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
                disable_tqdm=True, lr_scheduler_type="linear")
    base.update(kwargs)
    return TrainingArguments(**base)


def gpt2(dropout: bool = True, **config) -> torch.nn.Module:
    model = TINY_MODELS["gpt2"].build().train()
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return sparsify(model, CuttlefishConfig(**{**CONFIG, "tau": 0.0, **config}))


def losses(trainer: SparseTrainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def test_gpt2_switches_automatically_and_reloads(tmp_path):
    model = gpt2()
    dense_params = count_parameters(model)
    trainer = SparseTrainer(model=model, args=args(tmp_path), train_dataset=LMData())
    trainer.train()
    schedule = trainer.schedules[0]
    switch = schedule.switch["step"]
    assert switch is not None and 2 <= switch <= 12
    layers = sparse_layers(model)
    assert layers and {n: m.rank for n, m in layers.items()} == schedule.switch["ranks"]
    assert count_parameters(model) == schedule.switch["params_after"] < dense_params
    logged = losses(trainer)
    after = [loss for step, loss in logged.items() if step > switch]
    assert len(after) >= 3 and after[-1] < after[0]  # the loss keeps falling in the factorized model
    assert max(after) < logged[2]
    metrics = [h for h in trainer.state.log_history if "cuttlefish/switched" in h]
    assert metrics[0]["cuttlefish/switched"] == 0.0 and metrics[-1]["cuttlefish/switch_step"] == switch
    report = json.loads((tmp_path / "out" / "cuttlefish_report.json").read_text())
    assert report["chosen"]["E_step"] == switch and (tmp_path / "out" / "cuttlefish_ranks.png").is_file()
    # save + plain from_pretrained: the factorized model comes back
    model.eval().save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert get_sparsity_config(reloaded).plan == schedule.switch["plan"]
    ids = lm_batches(2)
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("checkpoint_step", [4, 16])  # before and after the switch
def test_resume_is_exact(tmp_path, checkpoint_step):
    config = dict(tau=0.01, candidate_rank_ratios=[0.25, 0.5], profile_repeats=1)  # profiling runs and is restored
    run_args = args(tmp_path, save_strategy="steps", save_steps=checkpoint_step, max_steps=20)
    full = SparseTrainer(model=gpt2(**config), args=run_args, train_dataset=LMData())
    full.train()
    reference = full.schedules[0]
    assert 4 < reference.switch["step"] < 16
    resumed = SparseTrainer(model=gpt2(**config), args=run_args, train_dataset=LMData())
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / f"checkpoint-{checkpoint_step}"))
    schedule = resumed.schedules[0]
    assert schedule.switch == reference.switch and schedule.history == reference.history
    assert schedule.profile == reference.profile
    expected = full.model.state_dict()
    got = resumed.model.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    resumed_losses = losses(resumed)
    assert resumed_losses == pytest.approx({s: v for s, v in losses(full).items() if s in resumed_losses}, rel=1e-6)


def test_gradient_accumulation_switches_like_one_big_batch(tmp_path):
    results = []
    for batch, accumulation in ((8, 1), (4, 2)):  # without dropout both see the same gradients (up to rounding)
        trainer = SparseTrainer(model=gpt2(dropout=False), args=args(tmp_path, per_device_train_batch_size=batch,
                                                        gradient_accumulation_steps=accumulation, max_steps=16),
                                train_dataset=LMData())
        trainer.train()
        results.append(trainer)
    one, accumulated = (t.schedules[0] for t in results)
    assert accumulated.switch["step"] == one.switch["step"]
    assert [h["step"] for h in accumulated.history] == [h["step"] for h in one.history]
    for name, rank in one.switch["ranks"].items():
        assert abs(accumulated.switch["ranks"].get(name, rank) - rank) <= 1
    assert losses(results[1]) == pytest.approx(losses(results[0]), rel=1e-3)
    assert losses(results[1])[16] < losses(results[1])[2]


def test_bert_classification_with_frobenius_decay_and_extra_norm(tmp_path):
    model = TINY_MODELS["bert"].build().train()
    sparsify(model, CuttlefishConfig(**CONFIG, tau=0.0, frobenius_decay=1e-3, extra_norm=True))
    dense_params = count_parameters(model)
    trainer = SparseTrainer(model=model, args=args(tmp_path, max_steps=24), train_dataset=ClassificationData())
    trainer.train()
    schedule = trainer.schedules[0]
    layers = sparse_layers(model)
    assert schedule.switch["step"] is not None and layers
    assert all(isinstance(m, NormLED) for m in layers.values())
    assert "classifier" not in layers and "bert.pooler.dense" in schedule.layers
    assert count_parameters(model) < dense_params
    # factors are under Frobenius decay instead of weight decay
    groups = trainer.optimizer.param_groups
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for layer in layers.values():
        assert id(layer.u_weight) not in decay and id(layer.v_weight) not in decay
    assert id(model.bert.embeddings.word_embeddings.weight) in decay
    logged = losses(trainer)
    after = [loss for step, loss in logged.items() if step > schedule.switch["step"]]
    assert after[-1] < logged[2]


def test_with_another_method_on_other_layers(tmp_path):
    model = TINY_MODELS["gpt2"].build().train()
    sparsify(model, [CuttlefishConfig(**CONFIG, tau=0.0, target_modules=["c_fc", "mlp.c_proj"]),
                     GreenformerConfig(rank=4, target_modules=["c_attn"])])
    trainer = SparseTrainer(model=model, args=args(tmp_path, max_steps=12), train_dataset=LMData())
    trainer.train()
    (schedule,) = trainer.schedules
    assert schedule.switch["plan"] and all(".mlp." in n for n in schedule.switch["plan"])
    configs = get_sparsity_config(model).configs
    assert [c.method for c in configs] == ["cuttlefish", "greenformer"]
    assert configs[0].plan == schedule.switch["plan"] and len(configs[1].plan) == 2
    model.eval().save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert sparse_layers(reloaded).keys() == sparse_layers(model).keys()
    ids = lm_batches(2)
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
