"""``DSTEESchedule``: the mask updates of DST-EE / RigL / SET, driven by ``SparseTrainer`` or ``SparseCallback``.

Per optimizer step ``t``:

* if ``t`` is an update step, the masked layers record the dense gradient during its backward passes (summed
  over micro-batches; armed after step ``t - 1``, so other steps pay nothing);
* ``before_optimizer_step``: the recorded gradients are all-reduced across ranks (so every rank scores the
  same numbers) and put in the units of the gradient the optimizer applies (loss scaling and clipping);
* ``after_optimizer_step``: inactive weights are zeroed again; on update steps each layer drops / grows
  ``k = round(f(t) * active)`` weights, ``N`` is incremented for the active weights, and the optimizer state
  (momentum, Adam moments) of every inactive weight is zeroed.

Everything needed to resume sits in the layers' persistent buffers (masks, ``N``) plus the step number; SET
draws its random numbers from ``(seed, step, layer)``. ``state_dict()`` only carries the update history.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ...registry import register_schedule
from ...training.schedule import StepContext, TrainingSchedule
from .config import DSTEEConfig
from .growth import drop_and_grow, drop_fraction_at, grow_scores, is_update_step, set_generator
from .masked import COUNT_MAX, MaskedLayer

logger = logging.getLogger("hf_sparse")

REPORT_NAME = "dst_report.json"
#: optimizers whose step leaves a weight with zero gradient and zero state (momentum, moments) exactly at zero,
#: weight decay included; with any other optimizer inactive weights are re-zeroed after every step
KEEPS_ZEROS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@register_schedule("dst-ee")
class DSTEESchedule(TrainingSchedule):
    """Mask updates of the masked layers listed in ``config.plan``.

    Attributes: ``history`` (one dict per update: step, drop fraction, replaced weights, exploration degree),
    ``overhead_seconds`` (wall time spent in this schedule's hooks, for overhead measurements).
    """

    def __init__(self, model: nn.Module, config: DSTEEConfig) -> None:
        super().__init__(model, config)
        self.config: DSTEEConfig = config
        self.layers = self._find_layers(model)
        self.history: list[dict[str, Any]] = []
        self.max_steps: int | None = None
        self.stop_step = config.stop_step
        self.overhead_seconds = 0.0
        self._grads: dict[str, torch.Tensor] | None = None
        self._armed: bool | None = None
        self._metrics: dict[str, float] = {}

    def _find_layers(self, model: nn.Module) -> dict[str, MaskedLayer]:
        layers = {}
        for name in self.config.plan:
            module = model.get_submodule(name)
            if not isinstance(module, MaskedLayer):
                raise ValueError(f"dst-ee plan names {name!r}, but the model holds a {type(module).__name__} there")
            layers[name] = module
        return layers

    def is_update_step(self, step: int) -> bool:
        if self.stop_step is None:
            raise RuntimeError("DSTEESchedule.on_train_begin must run first (it learns the number of steps)")
        return is_update_step(step, self.config.update_interval, self.stop_step)

    def _arm(self, next_step: int) -> None:
        """Record dense gradients during the backward passes of ``next_step`` only if it updates the masks."""
        capture = self.config.grow != "set" and self.is_update_step(next_step)
        if capture != self._armed:
            for layer in self.layers.values():
                layer.capture_grad = capture
                layer.dense_grad = None
            self._armed = capture

    # -- hooks --------------------------------------------------------------------------------------------
    def on_train_begin(self, ctx: StepContext) -> None:
        start = time.perf_counter()
        self.layers = self._find_layers(ctx.model)
        self._armed = None
        self.max_steps = ctx.max_steps
        self.stop_step = self.config.resolve_stop_step(ctx.max_steps)
        with torch.no_grad():
            if _distributed():  # DDP does not sync these buffers (see model.finalize): start from rank 0's
                for layer in self.layers.values():
                    for buffer in (layer.mask, layer.active_count):
                        wide = buffer.to(torch.int32)
                        dist.broadcast(wide, src=0)
                        buffer.copy_(wide)
            for layer in self.layers.values():
                layer.weight.mul_(layer.mask_like_weight())
            self._zero_optimizer_state(ctx.optimizer)
        self._arm(ctx.step + 1)
        self._refresh_metrics()
        self.overhead_seconds += time.perf_counter() - start

    def before_optimizer_step(self, ctx: StepContext) -> None:
        if self.config.grow != "set" and self.is_update_step(ctx.step):
            start = time.perf_counter()
            self._collect_gradients()
            self.overhead_seconds += time.perf_counter() - start

    def after_optimizer_step(self, ctx: StepContext) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            if not isinstance(ctx.optimizer, KEEPS_ZEROS):
                for layer in self.layers.values():
                    layer.weight.mul_(layer.mask_like_weight())
            if self.is_update_step(ctx.step):
                if self._grads is None and self.config.grow != "set":
                    self._collect_gradients()
                self._update(ctx)
        self._arm(ctx.step + 1)
        self.overhead_seconds += time.perf_counter() - start
        return None

    # -- mask update --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _collect_gradients(self) -> None:
        """Take the recorded dense gradients, average them over ranks and scale each layer's to the units of
        its ``weight.grad`` (so fp16 loss scaling and gradient clipping do not change the scores' balance)."""
        if all(layer.dense_grad is None for layer in self.layers.values()):
            logger.warning("dst-ee: no dense gradient was recorded for this update step (was the schedule's "
                           "after_optimizer_step skipped for the previous step?); growth scores use zeros")
        grads = {}
        for name, layer in self.layers.items():
            grads[name] = layer.dense_grad if layer.dense_grad is not None else torch.zeros(
                layer.weight.shape, dtype=torch.float32, device=layer.weight.device)
            layer.dense_grad = None
            layer.capture_grad = False
        self._armed = False
        if _distributed() and grads:
            flat = torch.cat([g.reshape(-1) for g in grads.values()])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            offset = 0
            for name, g in grads.items():
                grads[name] = flat[offset:offset + g.numel()].view_as(g)
                offset += g.numel()
        for name, layer in self.layers.items():
            applied = layer.weight.grad
            if applied is None:
                continue
            recorded = (grads[name] * layer.mask_like_weight().float()).flatten()
            norm = float(recorded.dot(recorded))
            if norm > 0:
                grads[name] = grads[name] * (float(recorded.dot(applied.flatten().float())) / norm)
        self._grads = grads

    @torch.no_grad()
    def _update(self, ctx: StepContext) -> None:
        grads, self._grads = self._grads, None
        step = ctx.step
        if grads and not bool(torch.stack([g.sum() for g in grads.values()]).isfinite().all()):
            logger.warning("dst-ee: non-finite gradients at step %d (skipped optimizer step?): masks unchanged", step)
            self.history.append({"step": step, "skipped": True})
            return
        fraction = drop_fraction_at(step, self.stop_step, self.config.drop_fraction, self.config.schedule)
        record: dict[str, Any] = {"step": step, "drop_fraction": fraction, "layers": {}}
        for index, (name, layer) in enumerate(self.layers.items()):
            k = min(round(fraction * layer.active), layer.active)
            record["layers"][name] = 0
            if k > 0 and layer.active < layer.mask.numel():
                generator = set_generator(self.config.seed, step, index) if self.config.grow == "set" else None
                scores = grow_scores(self.config.grow, None if grads is None else grads[name], layer.active_count,
                                     step, self.config.c, self.config.eps, generator)
                new_mask = drop_and_grow(layer.weight, layer.mask, scores, k)
                record["layers"][name] = int((new_mask & ~layer.mask).sum())
                layer.mask.copy_(new_mask)
                layer.weight.mul_(layer.mask_like_weight())
            layer.active_count.add_((layer.mask & (layer.active_count < COUNT_MAX)).to(layer.active_count.dtype))
        self._zero_optimizer_state(ctx.optimizer)
        changed = sum(record["layers"].values())
        record["mask_change"] = changed / max(1, sum(layer.active for layer in self.layers.values()))
        self._refresh_metrics()
        record["exploration_degree"] = self._metrics["dst/exploration_degree"]
        self.history.append(record)
        self._metrics["dst/mask_updates"] = float(len(self.history))
        self._metrics["dst/mask_change"] = record["mask_change"]
        self._metrics["dst/drop_fraction"] = fraction

    def _zero_optimizer_state(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero every weight-shaped optimizer state entry (momentum, Adam moments) at inactive weights."""
        if optimizer is None:
            return
        for layer in self.layers.values():
            for value in optimizer.state.get(layer.weight, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == layer.weight.shape:
                    value.mul_(layer.mask_like_weight().to(value.dtype))

    # -- metrics, state, report ---------------------------------------------------------------------------
    def exploration_degree(self) -> float:
        """Fraction of the masked layers' weights that have ever been active (the paper's ``R``)."""
        ever = sum(int((layer.active_count > 0).sum()) for layer in self.layers.values())
        total = sum(layer.mask.numel() for layer in self.layers.values())
        return ever / total if total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        """Measured fraction of zero weights per masked layer (from the masks)."""
        return {name: 1 - int(layer.mask.sum()) / layer.mask.numel() for name, layer in self.layers.items()}

    def _refresh_metrics(self) -> None:
        total = sum(layer.mask.numel() for layer in self.layers.values())
        active = sum(int(layer.mask.sum()) for layer in self.layers.values())
        last = next((h for h in reversed(self.history) if not h.get("skipped")), None)
        metrics = {"dst/exploration_degree": self.exploration_degree(),
                   "dst/sparsity": 1 - active / total if total else 0.0,
                   "dst/mask_updates": float(len(self.history)),
                   "dst/mask_change": last["mask_change"] if last else 0.0,
                   "dst/drop_fraction": last["drop_fraction"] if last else 0.0}
        metrics.update({f"dst/sparsity/{name}": value for name, value in self.layer_sparsity().items()})
        self._metrics = metrics

    def log_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.layers = self._find_layers(model)
        self.history = list(state.get("history", []))

    def report(self) -> dict[str, Any]:
        """Settings, per-layer sparsity / exploration degree and the update history, as JSON-able data."""
        settings = {k: v for k, v in self.config.to_dict().items() if k not in ("plan", "distribution_report")}
        layers = {name: {"shape": list(layer.weight.shape), "active": layer.active,
                         "sparsity": 1 - int(layer.mask.sum()) / layer.mask.numel(),
                         "exploration_degree": int((layer.active_count > 0).sum()) / layer.mask.numel()}
                  for name, layer in self.layers.items()}
        return {"settings": settings, "stop_step": self.stop_step, "max_steps": self.max_steps,
                "exploration_degree": self.exploration_degree(), "layers": layers, "history": self.history,
                "overhead_seconds": self.overhead_seconds}

    def save_report(self, output_dir: str) -> None:
        path = os.path.join(output_dir, REPORT_NAME)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.report(), fh, indent=2)
        logger.info("dst-ee: exploration degree %.3f after %d mask updates; report in %s",
                    self.exploration_degree(), len(self.history), path)

