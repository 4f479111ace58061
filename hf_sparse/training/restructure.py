"""Apply a schedule's ``Restructure`` to a model under training: swap modules, fix the optimizer in place,
scale the learning rate and re-wrap DDP.

The optimizer object, Accelerate's wrapper around it and the LR scheduler all stay the same objects; only
their parameter groups, state and base learning rates change. Each group is re-ordered as a fresh
``Trainer.create_optimizer`` on the new model would order it, so a run resumed from a checkpoint saved
after the switch loads its optimizer state into the right slots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .schedule import Restructure


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` (or ``optimizer`` itself)."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def unwrap_scheduler(scheduler: Any) -> Any:
    """The torch LR scheduler inside Accelerate's ``AcceleratedScheduler`` (or ``scheduler`` itself)."""
    while scheduler is not None and hasattr(scheduler, "scheduler"):
        scheduler = scheduler.scheduler
    return scheduler


def _is_trainer_layout(optimizer: torch.optim.Optimizer) -> bool:
    """Groups as ``Trainer.create_optimizer`` builds them: [weight decay, no weight decay]."""
    groups = optimizer.param_groups
    return len(groups) == 2 and groups[1].get("weight_decay", 0.0) == 0.0


def _target_groups(model: nn.Module, optimizer: torch.optim.Optimizer, restructure: Restructure) -> dict[int, int]:
    """id(new parameter) -> index of the param group it joins, judged on ``model`` *before* the swap: the
    group of the replaced parameter with the same local name, else of the replaced module's ``weight``;
    names in ``no_weight_decay`` go to a group without weight decay. ``ValueError`` if there is none."""
    groups = optimizer.param_groups
    group_of = {id(p): i for i, g in enumerate(groups) for p in g["params"]}
    zero_decay = next((i for i, g in enumerate(groups) if g.get("weight_decay", 0.0) == 0.0), None)
    target: dict[int, int] = {}
    for name, new in restructure.replacements.items():
        old = model.get_submodule(name)
        old_params = dict(old.named_parameters())
        home_param = old_params.get("weight", next(iter(old_params.values()), None))
        home = group_of.get(id(home_param)) if home_param is not None else None
        for local, param in new.named_parameters():
            if not param.requires_grad:
                continue
            full = f"{name}.{local}"
            same = old_params.get(local)
            group = group_of.get(id(same), home) if same is not None else home
            if group is None:
                raise ValueError(f"cannot place new parameter {full!r} in the optimizer: the module it replaces "
                                 f"({name!r}) has no parameter the optimizer trains")
            if full in restructure.no_weight_decay and groups[group].get("weight_decay", 0.0) != 0.0:
                if zero_decay is None:
                    raise ValueError(f"{full!r} must be kept out of weight decay, but the optimizer has no param "
                                     "group with weight_decay=0; add one (it may be empty) or use the Trainer's "
                                     "default optimizer")
                group = zero_decay
            target[id(param)] = group
    return target


def _target_groups_after(model: nn.Module, optimizer: torch.optim.Optimizer, restructure: Restructure,
                         decay_names: set[str]) -> dict[int, int]:
    """Like ``_target_groups`` for the Trainer's [decay, no decay] groups, judged on the swapped-in model."""
    target: dict[int, int] = {}
    for name, new in restructure.replacements.items():
        for local, param in new.named_parameters():
            if param.requires_grad:
                full = f"{name}.{local}"
                target[id(param)] = 0 if full in decay_names and full not in restructure.no_weight_decay else 1
    return target


def apply_restructure(model: nn.Module, optimizer: torch.optim.Optimizer | None, restructure: Restructure,
                      scheduler: Any = None,
                      decay_names: Callable[[nn.Module], Iterable[str]] | None = None) -> None:
    """Swap ``restructure.replacements`` into ``model`` and update ``optimizer`` / ``scheduler`` in place.

    ``decay_names``: ``Trainer.get_decay_parameter_names``; when given and the optimizer has the Trainer's
    [decay, no decay] groups, new parameters are classified as ``create_optimizer`` would on the new model.
    Otherwise each new parameter joins the group of the parameter it replaces (same local name, else the
    replaced module's ``weight``). Errors are raised before the model or optimizer change.
    """
    if restructure.lr_scale <= 0:
        raise ValueError(f"lr_scale must be > 0, got {restructure.lr_scale}")
    optimizer = unwrap_optimizer(optimizer)
    removed: set[int] = set()
    for name in restructure.replacements:
        removed.update(id(p) for p in model.get_submodule(name).parameters())
    trainer_layout = optimizer is not None and decay_names is not None and _is_trainer_layout(optimizer)
    target = _target_groups(model, optimizer, restructure) if optimizer is not None and not trainer_layout \
        else {}

    for name, new in restructure.replacements.items():
        model.set_submodule(name, new)
    if optimizer is None:
        return
    if trainer_layout:
        target = _target_groups_after(model, optimizer, restructure, set(decay_names(model)))

    order = {id(p): i for i, p in enumerate(model.parameters())}
    groups = optimizer.param_groups
    members: list[list[nn.Parameter]] = [[p for p in g["params"] if id(p) not in removed] for g in groups]
    for param in model.parameters():
        if id(param) in target:
            members[target[id(param)]].append(param)
    for group, params in zip(groups, members, strict=True):
        group["params"] = sorted(params, key=lambda p: order.get(id(p), len(order)))
    for param in [p for p in optimizer.state if id(p) in removed]:
        del optimizer.state[param]
    for param, state in restructure.optimizer_state.items():
        optimizer.state[param] = dict(state)

    if restructure.lr_scale != 1.0:
        scale_learning_rate(optimizer, scheduler, restructure.lr_scale)


def scale_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, factor: float) -> None:
    """Multiply the current and the base learning rates by ``factor``, keeping the schedule's position."""
    for group in unwrap_optimizer(optimizer).param_groups:
        group["lr"] = group["lr"] * factor
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * factor
    scheduler = unwrap_scheduler(scheduler)
    if scheduler is not None:
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        if getattr(scheduler, "_last_lr", None) is not None:
            scheduler._last_lr = [lr * factor for lr in scheduler._last_lr]


def rewrap_ddp(wrapped: nn.Module, model: nn.Module) -> nn.Module:
    """A new ``DistributedDataParallel`` around ``model`` with ``wrapped``'s settings (DDP registers its
    parameters when built, so a model whose parameters changed needs a new wrapper). Collective: every rank
    must call it at the same step."""
    if not isinstance(wrapped, DistributedDataParallel):
        return wrapped
    return DistributedDataParallel(
        model,
        device_ids=wrapped.device_ids,
        output_device=wrapped.output_device,
        broadcast_buffers=wrapped.broadcast_buffers,
        find_unused_parameters=wrapped.find_unused_parameters,
        bucket_cap_mb=wrapped.bucket_bytes_cap / (1024 * 1024),
        gradient_as_bucket_view=wrapped.gradient_as_bucket_view,
        static_graph=wrapped.static_graph,
    )
