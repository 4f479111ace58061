"""``SparseTrainer``: a ``transformers.Trainer`` that runs the training schedules of the sparsity methods
recorded on its model (Cuttlefish's switch to low rank, DST-EE's mask updates), and ``SparseCallback``, the
same hooks for the plain ``Trainer`` (schedules that never restructure the model, e.g. DST-EE).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..inject import get_sparsity_config
from ..registry import SCHEDULES
from .restructure import apply_restructure, rewrap_ddp, unwrap_optimizer
from .schedule import Restructure, StepContext, TrainingSchedule

logger = logging.getLogger(__name__)

#: file written into each checkpoint folder with the schedules' ``state_dict()``s
SCHEDULE_STATE_NAME = "hf_sparse_schedules.pt"


def build_schedules(model: nn.Module) -> list[TrainingSchedule]:
    """One schedule per sparsity config recorded on ``model`` whose method has a training schedule."""
    config = get_sparsity_config(model)
    if config is None:
        return []
    return [SCHEDULES[cfg.method](model, cfg) for cfg in config.configs if cfg.method in SCHEDULES]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class SparseCallback(TrainerCallback):
    """Runs the schedules of ``model`` from ``Trainer`` callback events.

    With the plain ``Trainer`` this supports schedules that keep the model's structure (DST-EE); schedules
    that swap modules (Cuttlefish) need ``SparseTrainer``, which installs this callback itself.
    """

    def __init__(self, model: nn.Module, trainer: SparseTrainer | None = None) -> None:
        self.model = model
        self.trainer = trainer
        self.schedules = build_schedules(model)
        self._epoch_end_step: int | None = None  # global step whose epoch-end hooks ran
        if not self.schedules:
            logger.info("SparseCallback: no training schedule in the model's sparsity config; nothing to run")

    # -- helpers ------------------------------------------------------------------------------------------
    def context(self, args: TrainingArguments, state: TrainerState, optimizer: Any, step: int) -> StepContext:
        world_size, rank = _world()
        return StepContext(model=self.model, optimizer=unwrap_optimizer(optimizer), step=step,
                           max_steps=state.max_steps, epoch=state.epoch or 0.0, world_size=world_size, rank=rank,
                           output_dir=args.output_dir, trainer=self.trainer)

    def _apply(self, restructure: Restructure | None, schedule: TrainingSchedule) -> None:
        if restructure is None:
            return
        if self.trainer is None:
            raise RuntimeError(f"the {schedule.method} schedule changes the model's structure during training, which "
                               "the plain Trainer cannot follow: use hf_sparse.SparseTrainer instead of "
                               "Trainer(callbacks=[SparseCallback(model)])")
        self.trainer.restructure(restructure)

    # -- events -------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs) -> TrainerControl:
        ctx = self.context(args, state, optimizer, state.global_step)
        for schedule in self.schedules:
            schedule.on_train_begin(ctx)
        return control

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs) -> TrainerControl:
        ctx = self.context(args, state, optimizer, state.global_step + 1)
        for schedule in self.schedules:
            schedule.before_optimizer_step(ctx)
        return control

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs) -> TrainerControl:
        ctx = self.context(args, state, optimizer, state.global_step + 1)
        for schedule in self.schedules:
            self._apply(schedule.after_optimizer_step(ctx), schedule)
        return control

    def on_step_end(self, args, state, control, optimizer=None, **kwargs) -> TrainerControl:
        # The last step of an epoch: run the epoch-end hooks now, before this step's checkpoint is written
        # (the Trainer saves before its own epoch-end event), so a resume from it sees their effect.
        if state.epoch and abs(state.epoch - round(state.epoch)) < 1e-9:
            self._epoch_end(args, state, optimizer)
        return control

    def on_epoch_end(self, args, state, control, optimizer=None, **kwargs) -> TrainerControl:
        self._epoch_end(args, state, optimizer)  # epochs cut short by max_steps end here
        return control

    def _epoch_end(self, args, state, optimizer) -> None:
        if self._epoch_end_step == state.global_step:
            return
        self._epoch_end_step = state.global_step
        ctx = self.context(args, state, optimizer, state.global_step)
        for schedule in self.schedules:
            self._apply(schedule.on_epoch_end(ctx), schedule)

    def on_log(self, args, state, control, logs=None, **kwargs) -> TrainerControl:
        if self.trainer is None and logs is not None and "loss" in logs:
            logs.update(self.metrics())
        return control

    def on_train_end(self, args, state, control, **kwargs) -> TrainerControl:
        if state.is_world_process_zero:
            os.makedirs(args.output_dir, exist_ok=True)
            for schedule in self.schedules:
                schedule.save_report(args.output_dir)
        return control

    # -- state --------------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for schedule in self.schedules:
            out.update(schedule.log_metrics())
        return out

    def save_state(self, folder: str) -> None:
        torch.save({s.method: s.state_dict() for s in self.schedules}, os.path.join(folder, SCHEDULE_STATE_NAME))

    def load_state(self, folder: str) -> bool:
        """Restore the schedules from a checkpoint folder; False if it has no schedule state."""
        path = os.path.join(folder, SCHEDULE_STATE_NAME)
        if not os.path.isfile(path):
            return False
        states = torch.load(path, map_location="cpu", weights_only=False)
        for schedule in self.schedules:
            if schedule.method in states:
                schedule.load_state_dict(states[schedule.method], self.model)
        return True


class SparseTrainer(Trainer):
    """A ``transformers.Trainer`` that owns restructuring during training.

    It builds the training schedules of the sparsity methods recorded on ``model`` (``sparsify(model,
    CuttlefishConfig(...))``, ``DSTEEConfig``, ...) and runs them: swaps modules when a schedule asks, fixes
    the optimizer in place (state of unchanged parameters kept, schedule position kept), re-wraps DDP, adds
    schedules' regularization terms to the loss, merges their metrics into the logs, saves their state in
    every checkpoint (``resume_from_checkpoint`` continues exactly) and writes their reports into
    ``output_dir`` at the end. With no such method it behaves exactly like ``Trainer``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sparse_callback = SparseCallback(self.model, trainer=self)
        sharded = "FSDP" if self.is_fsdp_enabled else "DeepSpeed" if self.is_deepspeed_enabled else None
        restructuring = [s.method for s in self.sparse_callback.schedules if s.restructures]
        if sharded and restructuring:
            raise ValueError(f"{', '.join(restructuring)} swaps modules during training, which SparseTrainer "
                             f"cannot do under {sharded}; train with DDP (accelerate launch --multi_gpu) instead")
        if restructuring and self.args.load_best_model_at_end:
            raise ValueError(f"load_best_model_at_end=True cannot be combined with {', '.join(restructuring)}: the "
                             "best checkpoint may predate the mid-run restructuring, and its weights would load "
                             "into the wrong modules; set load_best_model_at_end=False")
        self.add_callback(self.sparse_callback)
        self._rewrapped: nn.Module | None = None

    @property
    def schedules(self) -> list[TrainingSchedule]:
        return self.sparse_callback.schedules

    # -- restructuring ------------------------------------------------------------------------------------
    def restructure(self, restructure: Restructure) -> None:
        """Apply a schedule's ``Restructure`` now (between optimizer steps)."""
        apply_restructure(self.model, self.optimizer, restructure, scheduler=self.lr_scheduler,
                          decay_names=self.get_decay_parameter_names)
        if self.model_wrapped is not self.model:
            new_wrapper = rewrap_ddp(self.model_wrapped, self.model)
            if new_wrapper is not self.model_wrapped:
                models = getattr(self.accelerator, "_models", [])
                for i, m in enumerate(models):
                    if m is self.model_wrapped:
                        models[i] = new_wrapper
                self.model_wrapped = self._rewrapped = new_wrapper
        n_params = sum(p.numel() for p in self.model.parameters())
        logger.info("SparseTrainer: restructured %d modules at step %d; the model now has %d parameters",
                    len(restructure.replacements), self.state.global_step, n_params)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
        # After a re-wrap the training loop still holds the old DDP wrapper; use the current one.
        if self._rewrapped is not None:
            model = self._rewrapped
        return super().training_step(model, inputs, num_items_in_batch)

    # -- loss, weight decay, logs -------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if not self.model.training or not self.schedules:
            return result
        extra = [r for s in self.schedules if (r := s.regularization_loss(self.model)) is not None]
        if not extra:
            return result
        reg = torch.stack([r.float() for r in extra]).sum()
        scaled_for_ga = self.loss_is_scaled_for_ga
        if scaled_for_ga is None:
            scaled_for_ga = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) \
                or self.compute_loss_func is not None
        if scaled_for_ga:  # training_step will not divide by the accumulation steps: do it for our term
            reg = reg / self.current_gradient_accumulation_steps
        if return_outputs:
            loss, outputs = result
            return loss + reg.to(loss.dtype), outputs
        return result + reg.to(result.dtype)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        names = super().get_decay_parameter_names(model)
        excluded: set[str] = set()
        for schedule in getattr(getattr(self, "sparse_callback", None), "schedules", []):
            excluded |= schedule.no_weight_decay_names(model)
        return [n for n in names if n not in excluded]

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            logs = {**logs, **self.sparse_callback.metrics()}
        super().log(logs, *args, **kwargs)

    # -- checkpoints --------------------------------------------------------------------------------------
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save and self.schedules:
            checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), checkpoint)
            self.sparse_callback.save_state(folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # Schedules first: one that had restructured the model re-applies that structure, so the
        # checkpoint's weights load into matching modules.
        if self.schedules and not self.sparse_callback.load_state(resume_from_checkpoint):
            logger.warning("checkpoint %s has no %s: the sparsity schedules start from scratch",
                           resume_from_checkpoint, SCHEDULE_STATE_NAME)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

