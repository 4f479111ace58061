"""SparseTrainer: schedule hooks, restructuring mid-training (optimizer surgery, LR scaling), regularization,
logs, reports and exact resume — driven by a small test schedule that factorizes one layer at a fixed step."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_sparse import get_sparsity_config, sparsify
from hf_sparse.config import SparsityConfig
from hf_sparse.inject import build_layer
from hf_sparse.methods.greenformer.layers import LED
from hf_sparse.methods.greenformer.solvers import svd_factors
from hf_sparse.registry import CONFIG_CLASSES, CONVERTERS, ELIGIBILITY, SCHEDULES
from hf_sparse.training import Restructure, SparseCallback, SparseTrainer, StepContext, TrainingSchedule

from ..conftest import TINY_MODELS

TARGET = "transformer.h.0.mlp.c_fc"


class SwitchConfig(SparsityConfig):
    """Test method: factorize ``TARGET`` to rank 4 at optimizer step ``at``."""

    method = "test-switch"
    fields = ("at", "lr_scale", "reg")
    structure_set_in_training = True

    def __init__(self, at: int = 3, lr_scale: float = 1.0, reg: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.at, self.lr_scale, self.reg = at, lr_scale, reg


class SwitchSchedule(TrainingSchedule):
    restructures = True

    def __init__(self, model: nn.Module, config: SwitchConfig) -> None:
        super().__init__(model, config)
        self.switched_at: int | None = None
        self.events: list[tuple[str, int]] = []

    def _layer(self, model: nn.Module) -> LED:
        dense = model.get_submodule(TARGET)
        u, v = svd_factors(dense.weight.detach().t(), 4)
        return LED.from_factors(dense, u, v)

    def on_train_begin(self, ctx: StepContext) -> None:
        assert ctx.optimizer is not None and isinstance(ctx.optimizer, torch.optim.Optimizer)
        self.events.append(("begin", ctx.step))

    def before_optimizer_step(self, ctx: StepContext) -> None:
        assert all(p.grad is not None for p in ctx.model.parameters() if p.requires_grad)
        self.events.append(("before", ctx.step))

    def after_optimizer_step(self, ctx: StepContext) -> Restructure | None:
        self.events.append(("after", ctx.step))
        if ctx.step != self.config.at:
            return None
        self.switched_at = ctx.step
        layer = self._layer(ctx.model)
        get_sparsity_config(ctx.model).plan[TARGET] = layer.to_spec()
        return Restructure({TARGET: layer}, lr_scale=self.config.lr_scale)

    def on_epoch_end(self, ctx: StepContext) -> None:
        self.events.append(("epoch", ctx.step))

    def regularization_loss(self, model: nn.Module) -> torch.Tensor | None:
        if not self.config.reg:
            return None
        return self.config.reg * sum(p.pow(2).sum() for p in model.get_submodule(TARGET).parameters())

    def log_metrics(self) -> dict[str, float]:
        return {"test/switched": float(self.switched_at is not None)}

    def state_dict(self) -> dict[str, Any]:
        return {"switched_at": self.switched_at}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.switched_at = state["switched_at"]
        if self.switched_at is not None:
            spec = get_sparsity_config(model).plan.get(TARGET) or self._layer(model).to_spec()
            get_sparsity_config(model).plan[TARGET] = spec
            model.set_submodule(TARGET, build_layer(TARGET, spec))

    def save_report(self, output_dir: str) -> None:
        with open(os.path.join(output_dir, "switch_report.json"), "w") as f:
            json.dump({"switched_at": self.switched_at}, f)


@pytest.fixture(autouse=True)
def switch_method():
    CONFIG_CLASSES["test-switch"] = SwitchConfig
    CONVERTERS["test-switch"] = lambda model, names, config, batches: {}
    ELIGIBILITY["test-switch"] = lambda module, config: hasattr(module, "weight")
    SCHEDULES["test-switch"] = SwitchSchedule
    yield
    for registry in (CONFIG_CLASSES, CONVERTERS, ELIGIBILITY, SCHEDULES):
        registry.pop("test-switch", None)


class LMData(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, seq: int = 16) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 64, (n, seq), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_model(**config: Any) -> nn.Module:
    model = TINY_MODELS["gpt2"].build().train()
    return sparsify(model, SwitchConfig(target_modules=[TARGET], **config))


def make_args(tmp_path, **kwargs: Any) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2,
                weight_decay=0.1, max_steps=8, logging_steps=2, save_strategy="no", report_to=[], use_cpu=True,
                seed=0, data_seed=0, disable_tqdm=True, lr_scheduler_type="linear")
    base.update(kwargs)
    return TrainingArguments(**base)


def fresh_groups(trainer: SparseTrainer) -> list[list[int]]:
    """Param groups a fresh create_optimizer would build on the current model, as parameter ids."""
    probe = SparseTrainer(model=trainer.model, args=trainer.args)
    optimizer = probe.create_optimizer()
    return [[id(p) for p in g["params"]] for g in optimizer.param_groups]


def test_switch_mid_training_keeps_optimizer_consistent(tmp_path):
    model = make_model(at=3)
    dense_params = sum(p.numel() for p in model.parameters())
    trainer = SparseTrainer(model=model, args=make_args(tmp_path), train_dataset=LMData())
    kept = {}

    class Spy(SparseCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            if state.global_step + 1 == 3:  # just before the switch: remember an unchanged parameter's state
                wte = model.transformer.wte.weight
                kept["exp_avg"] = trainer.optimizer.state[wte]["exp_avg"]
            return control

    trainer.callback_handler.callbacks.insert(0, Spy(model))
    trainer.train()
    schedule = trainer.schedules[0]
    assert schedule.switched_at == 3
    assert isinstance(model.get_submodule(TARGET), LED)
    assert sum(p.numel() for p in model.parameters()) < dense_params
    # every trainable parameter is in the optimizer exactly once, grouped and ordered as create_optimizer would
    groups = [[id(p) for p in g["params"]] for g in trainer.optimizer.param_groups]
    assert groups == fresh_groups(trainer)
    assert sorted(sum(groups, [])) == sorted(id(p) for p in model.parameters())
    # the unchanged embedding kept its Adam state across the switch (same tensor, updated in place)
    assert trainer.optimizer.state[model.transformer.wte.weight]["exp_avg"] is kept["exp_avg"]
    assert int(trainer.optimizer.state[model.transformer.wte.weight]["step"]) == 8
    # factors started with fresh state at the switch: 5 steps since
    led = model.get_submodule(TARGET)
    assert int(trainer.optimizer.state[led.u_weight]["step"]) == 5
    # hook order: begin, then before/after for each step, an epoch end
    kinds = [e for e, _ in schedule.events]
    assert kinds[0] == "begin" and kinds.count("before") == 8 and kinds.count("after") == 8
    assert ("epoch", 8) in schedule.events
    # logs carry the schedule metric; the report is written
    logged = [h for h in trainer.state.log_history if "test/switched" in h]
    assert logged[0]["test/switched"] == 0.0 and logged[-1]["test/switched"] == 1.0
    with open(tmp_path / "out" / "switch_report.json") as f:
        assert json.load(f) == {"switched_at": 3}


def test_lr_scale_keeps_schedule_position(tmp_path):
    lrs = {}
    for scale in (1.0, 0.5):
        model = make_model(at=3, lr_scale=scale)
        trainer = SparseTrainer(model=model, args=make_args(tmp_path, max_steps=6), train_dataset=LMData())
        trainer.train()
        lrs[scale] = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    # logged at steps 2, 4, 6 (lr read before the scheduler steps): the switch at step 3 halves later values
    assert lrs[0.5][0] == pytest.approx(lrs[1.0][0])
    assert lrs[0.5][1:] == pytest.approx([x * 0.5 for x in lrs[1.0][1:]])


def test_resume_after_switch_is_exact(tmp_path):
    args = make_args(tmp_path, save_strategy="steps", save_steps=4)
    full = SparseTrainer(model=make_model(at=3), args=args, train_dataset=LMData())
    full.train()
    expected = {k: v.clone() for k, v in full.model.state_dict().items()}
    losses = [h["loss"] for h in full.state.log_history if "loss" in h]
    checkpoint = tmp_path / "out" / "checkpoint-4"
    assert (checkpoint / "hf_sparse_schedules.pt").is_file()

    resumed = SparseTrainer(model=make_model(at=3), args=args, train_dataset=LMData())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.schedules[0].switched_at == 3
    assert isinstance(resumed.model.get_submodule(TARGET), LED)
    got = resumed.model.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    resumed_losses = [h["loss"] for h in resumed.state.log_history if "loss" in h]
    assert resumed_losses == pytest.approx(losses[-len(resumed_losses):], rel=1e-6)


def test_resume_before_switch_switches_at_same_step(tmp_path):
    args = make_args(tmp_path, save_strategy="steps", save_steps=2)
    full = SparseTrainer(model=make_model(at=5), args=args, train_dataset=LMData())
    full.train()
    resumed = SparseTrainer(model=make_model(at=5), args=args, train_dataset=LMData())
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.schedules[0].switched_at == 5
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_regularization_enters_training_loss_only(tmp_path):
    data = LMData(n=8)
    losses = {}
    for reg in (0.0, 1.0):
        model = make_model(at=100, reg=reg)
        trainer = SparseTrainer(model=model, args=make_args(tmp_path, max_steps=1, logging_steps=1),
                                train_dataset=data, eval_dataset=data)
        trainer.train()
        losses[reg] = (trainer.state.log_history[0]["loss"], trainer.evaluate()["eval_loss"])
    penalty = sum(p.pow(2).sum() for p in make_model().get_submodule(TARGET).parameters()).item()
    assert losses[1.0][0] - losses[0.0][0] == pytest.approx(penalty, rel=1e-3)
    assert losses[1.0][1] == pytest.approx(losses[0.0][1], rel=0.2)  # evaluation has no penalty


def test_no_weight_decay_names_are_excluded(tmp_path):
    class NoDecay(SwitchSchedule):
        def no_weight_decay_names(self, model: nn.Module) -> set[str]:
            return {f"{TARGET}.weight"}

    SCHEDULES["test-switch"] = NoDecay
    trainer = SparseTrainer(model=make_model(), args=make_args(tmp_path))
    assert f"{TARGET}.weight" not in trainer.get_decay_parameter_names(trainer.model)
    assert "transformer.h.1.mlp.c_fc.weight" in trainer.get_decay_parameter_names(trainer.model)


def test_plain_trainer_with_callback_refuses_restructuring(tmp_path):
    model = make_model(at=2)
    trainer = Trainer(model=model, args=make_args(tmp_path), train_dataset=LMData(),
                      callbacks=[SparseCallback(model)])
    with pytest.raises(RuntimeError, match="SparseTrainer"):
        trainer.train()


def test_plain_trainer_with_callback_runs_hooks_and_logs(tmp_path):
    model = make_model(at=100)
    callback = SparseCallback(model)
    trainer = Trainer(model=model, args=make_args(tmp_path, max_steps=4), train_dataset=LMData(),
                      callbacks=[callback])
    trainer.train()
    kinds = [e for e, _ in callback.schedules[0].events]
    assert kinds.count("before") == 4 and kinds.count("after") == 4


def test_model_without_schedule_trains_like_trainer(tmp_path):
    results = []
    for cls in (Trainer, SparseTrainer):
        model = TINY_MODELS["gpt2"].build().train()
        trainer = cls(model=model, args=make_args(tmp_path, max_steps=3), train_dataset=LMData())
        trainer.train()
        results.append(copy.deepcopy(model.state_dict()))
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=0, atol=0)


def test_load_best_model_at_end_is_refused_with_a_restructuring_schedule(tmp_path):
    args = make_args(tmp_path, load_best_model_at_end=True, eval_strategy="steps", save_strategy="steps",
                     eval_steps=2, save_steps=2)
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        SparseTrainer(model=make_model(), args=args, train_dataset=LMData(), eval_dataset=LMData())


def test_epoch_end_switch_is_in_the_checkpoint_of_that_step(tmp_path):
    """A checkpoint written at an epoch's last step already holds what the epoch-end hooks did."""

    class EpochSwitch(SwitchSchedule):
        def after_optimizer_step(self, ctx: StepContext) -> Restructure | None:
            return None

        def on_epoch_end(self, ctx: StepContext) -> Restructure | None:
            self.events.append(("epoch", ctx.step))
            if self.switched_at is not None:
                return None
            self.switched_at = ctx.step
            layer = self._layer(ctx.model)
            get_sparsity_config(ctx.model).plan[TARGET] = layer.to_spec()
            return Restructure({TARGET: layer})

    SCHEDULES["test-switch"] = EpochSwitch
    args = make_args(tmp_path, max_steps=12, save_strategy="steps", save_steps=8)  # 8 steps per epoch
    full = SparseTrainer(model=make_model(), args=args, train_dataset=LMData())
    full.train()
    assert full.schedules[0].switched_at == 8
    assert [e for e in full.schedules[0].events if e[0] == "epoch"] == [("epoch", 8), ("epoch", 12)]
    resumed = SparseTrainer(model=make_model(), args=args, train_dataset=LMData())
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-8"))
    assert resumed.schedules[0].switched_at == 8
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
