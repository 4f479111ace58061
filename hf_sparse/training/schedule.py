"""The contract between ``SparseTrainer`` and the methods that change a model during training.

A method that acts during training (Cuttlefish switches to low rank, DST-EE moves its masks) registers a
``TrainingSchedule`` subclass with :func:`hf_sparse.registry.register_schedule`. ``SparseTrainer`` (or
``SparseCallback`` with the plain ``Trainer``) builds one schedule per such config recorded on the model and
calls the hooks below; the method logic stays in the method's folder, the trainer only applies what the
hooks return (module swaps, optimizer surgery, DDP re-wrapping, LR scaling) and saves/restores their state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import Trainer

    from ..config import SparsityConfig


@dataclass
class StepContext:
    """What a schedule hook sees.

    ``model``: the unwrapped model holding the layers (never the DDP wrapper).
    ``optimizer``: the underlying ``torch.optim.Optimizer`` (not Accelerate's wrapper); None outside training.
    ``step``: 1-based index of the optimizer step being taken (``before_optimizer_step`` /
    ``after_optimizer_step``), or the number of optimizer steps completed (``on_train_begin``,
    ``on_epoch_end``). ``max_steps``: total optimizer steps of the run. ``epoch``: float epoch.
    ``world_size``/``rank``: the distributed group (1/0 in a single process); schedules that make
    data-dependent choices must make them identically on every rank (all-reduce what they score).
    ``trainer``: the trainer, or None when driven outside one.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    step: int
    max_steps: int
    epoch: float = 0.0
    world_size: int = 1
    rank: int = 0
    output_dir: str | None = None
    trainer: Trainer | None = None


@dataclass
class Restructure:
    """A change of model structure requested by a schedule; ``SparseTrainer`` applies it.

    ``replacements``: module name -> new module (built on the right device and dtype, already recorded in
    the model's sparsity-config plan by the schedule). The trainer swaps them in, puts each new parameter
    in the optimizer param group of the module it replaces (or the zero-weight-decay group for names in
    ``no_weight_decay``), keeps the state of every unchanged parameter, drops the state of removed ones,
    sets ``optimizer_state[param]`` as the initial state of new parameters, orders every group as a fresh
    ``create_optimizer`` would (so a resumed run loads optimizer state into the same slots), multiplies the
    learning rate (scheduler base LRs included) by ``lr_scale`` and re-wraps the model in DDP if needed.
    """

    replacements: dict[str, nn.Module]
    optimizer_state: dict[nn.Parameter, dict[str, Any]] = field(default_factory=dict)
    no_weight_decay: set[str] = field(default_factory=set)
    lr_scale: float = 1.0


class TrainingSchedule:
    """Base class of per-method training schedules. Every hook is optional.

    Subclasses take ``(model, config)`` in ``__init__`` (no side effects on the model there) and keep
    all state needed to resume exactly either in the model's persistent buffers or in ``state_dict()``.
    """

    method: str = ""
    #: True if the schedule may return a ``Restructure`` (swap modules mid-run); ``SparseTrainer`` refuses such
    #: schedules under FSDP / DeepSpeed, whose sharded parameters cannot be swapped between steps
    restructures: bool = False

    def __init__(self, model: nn.Module, config: SparsityConfig) -> None:
        self.config = config

    def on_train_begin(self, ctx: StepContext) -> None:
        """Once per ``train()`` call, after the optimizer exists (and after a resume has been restored)."""

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Gradients of step ``ctx.step`` are final here: accumulated, all-reduced and clipped."""

    def after_optimizer_step(self, ctx: StepContext) -> Restructure | None:
        """Right after ``optimizer.step()`` of step ``ctx.step`` (before the LR scheduler steps)."""
        return None

    def on_epoch_end(self, ctx: StepContext) -> Restructure | None:
        """At the end of each epoch (``ctx.step`` optimizer steps done)."""
        return None

    def no_weight_decay_names(self, model: nn.Module) -> set[str]:
        """Parameter names to keep out of the optimizer's weight decay (e.g. factors under Frobenius decay)."""
        return set()

    def regularization_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Extra term added to the training loss of every micro-batch (e.g. Frobenius decay), or None."""
        return None

    def log_metrics(self) -> dict[str, float]:
        """Scalars merged into the trainer's logs (prefix them with the method name)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond the model's own state needed to resume exactly (``torch.save``-able)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """Restore ``state_dict()`` output when resuming, *before* the checkpoint's weights are loaded into
        ``model``: a schedule that had restructured the model re-applies that structure here."""

    def save_report(self, output_dir: str) -> None:
        """Write human-readable outputs (JSON, plots) into ``output_dir`` at the end of training (main process)."""
