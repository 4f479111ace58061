"""``CuttlefishSchedule``: the training schedule deciding when to switch to low rank (E), which stacks (K) and at
which ranks (R), and building the switch that ``SparseTrainer`` applies.

Timeline: ``on_train_begin`` measures every tracked layer's initial stable rank (``beta``) and installs hooks
recording the layers' input shapes; the first ``before_optimizer_step`` profiles the stacks with those shapes
(rank 0 decides, every rank gets its table); every ``rank_check_interval`` the stable ranks are measured (batched
``svdvals``) and tested for convergence; once every layer has settled, or at ``max_full_rank_fraction`` of the
run, the selected layers become LED / CED at their scaled stable ranks.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ...dense import weight_matrix
from ...inject import build_layer, get_sparsity_config, select_targets, set_sparsity_config
from ...layers import SparseLayer
from ...registry import register_schedule
from ...summary import count_parameters
from ...training.schedule import Restructure, StepContext, TrainingSchedule
from ..greenformer.layers import FactorizedLayer
from .config import CuttlefishConfig
from .model import factorize_layer
from .optim import project_state
from .profiling import decide_stack, group_stacks, profile_stacks, timed_forward_backward
from .rank import batched_stable_ranks, full_rank, has_converged, rank_scale, scaled_rank
from .report import write_report

logger = logging.getLogger("hf_sparse")

STATE_VERSION = 1


def broadcast_from_main(obj: Any) -> Any:
    """``obj`` as rank 0 holds it, on every rank (``obj`` itself outside a multi-process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]
    return obj


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _saves_parameters(rank: int, shape: list[int]) -> bool:
    out, flat = shape
    return rank * (out + flat) < out * flat


@register_schedule("cuttlefish")
class CuttlefishSchedule(TrainingSchedule):
    """Runs a ``CuttlefishConfig`` during training (see the module docstring). State (rank history, profiling
    table, switch) is in ``state_dict()``; ``report()`` / ``save_report()`` describe the run."""

    config: CuttlefishConfig
    restructures = True

    def __init__(self, model: nn.Module, config: CuttlefishConfig) -> None:
        super().__init__(model, config)
        #: tracked layer -> {"shape": [out, in_flat], "full_rank", "initial_stable_rank", "beta"}
        self.layers: dict[str, dict[str, Any]] = {}
        #: one entry per measurement: {"step", "epoch", "stable_ranks": {name: float}, "ranks": {name: int}}
        self.history: list[dict[str, Any]] = []
        self.input_shapes: dict[str, list[int]] = {}
        #: autocast dtype ("bfloat16", "float16") the layers ran under when their shapes were recorded, or None:
        #: profiling times the candidates the same way (mixed-precision speedups differ from float32 ones)
        self.autocast_dtype: str | None = None
        #: stacks with their timings (``profiling.profile_stacks``); None until profiled
        self.profile: list[dict[str, Any]] | None = None
        #: per-stack decisions taken at the switch (``profiling.decide_stack``)
        self.decisions: list[dict[str, Any]] = []
        #: {"step", "epoch", "reason", "ranks", "plan", "params_before", "params_after"} once switched
        self.switch: dict[str, Any] | None = None
        self.tracking_seconds = 0.0
        self.profiling_seconds = 0.0
        self.switch_seconds = 0.0
        self._hooks: list[Any] = []
        if config.plan:  # a model saved after its switch and reloaded: the factorized layers are in place
            self.switch = {"step": None, "epoch": None, "reason": "loaded factorized",
                           "ranks": {n: s["rank"] for n, s in config.plan.items()}, "plan": copy.deepcopy(config.plan),
                           "params_before": None, "params_after": None}

    # ------------------------------------------------------------------------------------------ state
    @property
    def switched(self) -> bool:
        return self.switch is not None

    def factorized_names(self) -> list[str]:
        return list(self.switch["plan"]) if self.switch else []

    def _modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {name: model.get_submodule(name) for name in self.layers}

    def forced_step(self, max_steps: int) -> int | None:
        """Optimizer step at which the switch is forced, or None (``max_full_rank_fraction == 1``: never)."""
        step = max(1, math.ceil(self.config.max_full_rank_fraction * max_steps - 1e-9))
        return step if step < max_steps else None

    # ------------------------------------------------------------------------------------------ hooks
    def on_train_begin(self, ctx: StepContext) -> None:
        if self.switched:
            return
        model = _unwrap(ctx.model)
        if not self.layers:
            names = select_targets(model, self.config)
            modules = {n: model.get_submodule(n) for n in names}
            start = time.perf_counter()
            stable = broadcast_from_main(batched_stable_ranks(modules) if _is_main() else None)
            for name, module in modules.items():
                full = full_rank(module)
                self.layers[name] = {"shape": list(weight_matrix(module).shape), "full_rank": full,
                                     "initial_stable_rank": stable[name], "beta": rank_scale(full, stable[name])}
            self._record(ctx, stable)
            self.tracking_seconds += time.perf_counter() - start
            if self.config.tau == 0:  # no timing needed: every eligible stack is factorized
                self.profile = group_stacks(modules, {})
        if self.profile is None and self.layers:
            self._install_shape_hooks(model)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        if self.switched or self.profile is not None or not self.layers:
            return
        self._run_profiling(_unwrap(ctx.model))

    def after_optimizer_step(self, ctx: StepContext) -> Restructure | None:
        if self.switched or not self.layers:
            return None
        forced = self.forced_step(ctx.max_steps) if ctx.max_steps else None
        is_forced = forced is not None and ctx.step >= forced
        interval = self.config.rank_check_interval
        if not (is_forced or (isinstance(interval, int) and ctx.step % interval == 0)):
            return None
        self._check(ctx)
        if self._converged():
            return self._switch(ctx, "converged")
        if is_forced:
            return self._switch(ctx, f"forced at max_full_rank_fraction={self.config.max_full_rank_fraction:g}")
        return None

    def on_epoch_end(self, ctx: StepContext) -> Restructure | None:
        if self.switched or not self.layers or self.config.rank_check_interval != "epoch":
            return None
        if self.history and self.history[-1]["step"] == ctx.step:
            return None  # already measured at this step
        self._check(ctx)
        if self._converged() and (not ctx.max_steps or ctx.step < ctx.max_steps):
            return self._switch(ctx, "converged")
        return None

    def regularization_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Frobenius decay ``lambda/2 sum ||U V||_F^2`` over the factorized layers, each computed once as
        ``sum((U^T U) * (V V^T))`` (``r x r`` products, no ``m x n`` matrix)."""
        if self.config.frobenius_decay == 0 or not self.switched:
            return None
        model = _unwrap(model)
        total = None
        for name in self.factorized_names():
            layer = model.get_submodule(name)
            if not isinstance(layer, FactorizedLayer):
                continue
            u = layer.u_weight.reshape(layer.u_weight.shape[0], layer.rank)
            v = layer.v_weight.reshape(layer.rank, -1)
            term = ((u.t() @ u) * (v @ v.t())).sum()
            total = term if total is None else total + term
        return None if total is None else 0.5 * self.config.frobenius_decay * total

    def no_weight_decay_names(self, model: nn.Module) -> set[str]:
        """The factors of every factorized layer when Frobenius decay replaces weight decay on them."""
        if self.config.frobenius_decay == 0 or not self.switched:
            return set()
        model = _unwrap(model)
        names = set()
        for name in self.factorized_names():
            if isinstance(model.get_submodule(name), FactorizedLayer):
                names.update({f"{name}.u_weight", f"{name}.v_weight"})
        return names

    def log_metrics(self) -> dict[str, float]:
        metrics = {"cuttlefish/switched": float(self.switched)}
        if self.history:
            last = self.history[-1]["ranks"]
            metrics["cuttlefish/mean_rank_ratio"] = sum(
                last[n] / self.layers[n]["full_rank"] for n in last) / max(1, len(last))
        if self.switch and self.switch["step"] is not None:
            metrics["cuttlefish/switch_step"] = float(self.switch["step"])
            metrics["cuttlefish/factorized_layers"] = float(len(self.switch["plan"]))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({"version": STATE_VERSION, "layers": self.layers, "history": self.history,
                              "input_shapes": self.input_shapes, "autocast_dtype": self.autocast_dtype,
                              "profile": self.profile, "decisions": self.decisions, "switch": self.switch,
                              "tracking_seconds": self.tracking_seconds, "profiling_seconds": self.profiling_seconds,
                              "switch_seconds": self.switch_seconds})

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """Restore the schedule; if the saved run had switched, rebuild its factorized layers (empty, from the
        plan, on each dense layer's device and dtype) so the checkpoint's weights load into them."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"cuttlefish schedule state version {state.get('version')!r} is not supported "
                             f"(expected {STATE_VERSION})")
        state = copy.deepcopy(state)
        self._remove_hooks()
        self.layers, self.history = state["layers"], state["history"]
        self.input_shapes, self.profile = state["input_shapes"], state["profile"]
        self.autocast_dtype = state.get("autocast_dtype")  # absent in states written before it was recorded
        self.decisions, self.switch = state["decisions"], state["switch"]
        self.tracking_seconds = state["tracking_seconds"]
        self.profiling_seconds = state["profiling_seconds"]
        self.switch_seconds = state["switch_seconds"]
        if self.switch and self.switch["plan"]:
            model = _unwrap(model)
            for name, spec in self.switch["plan"].items():
                current = model.get_submodule(name)
                if isinstance(current, SparseLayer) and current.to_spec() == spec:
                    continue
                first = next(current.parameters())
                model.set_submodule(name, build_layer(name, spec, device=first.device, dtype=first.dtype)
                                    .train(current.training))
            self._record_plan(model, self.switch["plan"])

    def report(self) -> dict[str, Any]:
        """Everything about the run: settings, tracked layers, rank history, profiling, decisions, (E, K, R)."""
        decided = {d["stack"]: d for d in self.decisions}
        stacks = [{**s, "factorize": decided[s["stack"]]["factorize"] if s["stack"] in decided else None}
                  for s in (self.profile or [])]
        switch = copy.deepcopy(self.switch)
        summary = None
        if switch is not None:
            summary = {"E_step": switch["step"], "E_epoch": switch["epoch"],
                       "K_factorized_stacks": [d["stack"] for d in self.decisions if d["factorize"]],
                       "R_ranks": switch["ranks"]}
        return {"config": self.config.without_plan().to_dict(), "layers": self.layers, "history": self.history,
                "stacks": stacks, "profiled_autocast": self.autocast_dtype, "decisions": self.decisions,
                "switch": switch, "chosen": summary,
                "seconds": {"rank_tracking": self.tracking_seconds, "profiling": self.profiling_seconds,
                            "switch": self.switch_seconds}}

    def save_report(self, output_dir: str) -> None:
        """``cuttlefish_report.json`` and ``cuttlefish_ranks.png`` in ``output_dir``."""
        write_report(self.report(), output_dir)

    # ------------------------------------------------------------------------------------------ internals
    def _install_shape_hooks(self, model: nn.Module) -> None:
        self._remove_hooks()
        for name in self.layers:
            if name in self.input_shapes:
                continue

            def record(module, args, kwargs, name=name):
                x = args[0] if args else next((v for v in kwargs.values() if torch.is_tensor(v)), None)
                if x is not None and name not in self.input_shapes:
                    self.input_shapes[name] = list(x.shape)
                    if torch.is_autocast_enabled(x.device.type):
                        self.autocast_dtype = str(torch.get_autocast_dtype(x.device.type)).removeprefix("torch.")

            self._hooks.append(model.get_submodule(name).register_forward_pre_hook(record, with_kwargs=True))

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _run_profiling(self, model: nn.Module) -> None:
        self._remove_hooks()
        start = time.perf_counter()
        table = None
        if _is_main():
            modules = self._modules(model)
            stacks = group_stacks(modules, self.input_shapes)
            device_type = next(model.parameters()).device.type
            with (torch.autocast(device_type, dtype=getattr(torch, self.autocast_dtype)) if self.autocast_dtype
                  else contextlib.nullcontext()):
                table = profile_stacks(stacks, modules, self.config.candidate_rank_ratios, self.config.extra_norm,
                                       timed_forward_backward(), repeats=self.config.profile_repeats)
        self.profile = broadcast_from_main(table)
        self.profiling_seconds += time.perf_counter() - start
        for entry in self.profile:
            timings = ", ".join(f"r={c['rank']}: {c['seconds'] * 1e3:.2f} ms" for c in entry["candidates"])
            logger.info("cuttlefish profile: %s (%d layers, %s, input %s): dense %s; factorized %s", entry["stack"],
                        len(entry["layers"]), "x".join(map(str, entry["shape"])), entry["input_shape"],
                        "n/a" if entry["dense_seconds"] is None else f"{entry['dense_seconds'] * 1e3:.2f} ms",
                        timings or "n/a")

    def _record(self, ctx: StepContext, stable: dict[str, float]) -> None:
        ranks = {n: scaled_rank(s, self.layers[n]["beta"], self.layers[n]["full_rank"]) for n, s in stable.items()}
        self.history.append({"step": ctx.step, "epoch": float(ctx.epoch), "stable_ranks": stable, "ranks": ranks})

    def _check(self, ctx: StepContext) -> None:
        start = time.perf_counter()
        modules = self._modules(_unwrap(ctx.model))
        stable = broadcast_from_main(batched_stable_ranks(modules) if _is_main() else None)
        self._record(ctx, stable)
        self.tracking_seconds += time.perf_counter() - start

    def _converged(self) -> bool:
        cfg = self.config
        return all(has_converged([h["stable_ranks"][n] for h in self.history], cfg.epsilon, cfg.smoothing_window,
                                 cfg.min_checks) for n in self.layers)

    def _switch(self, ctx: StepContext, reason: str) -> Restructure | None:
        start = time.perf_counter()
        model = _unwrap(ctx.model)
        ranks = self.history[-1]["ranks"]
        saving = {n: r for n, r in ranks.items() if _saves_parameters(r, self.layers[n]["shape"])}
        stacks = self.profile if self.profile is not None else group_stacks(self._modules(model), {})
        self.decisions = [decide_stack(e, {n: saving[n] for n in e["layers"] if n in saving}, self.config.tau)
                          for e in stacks]
        chosen = {n: ranks[n] for d in self.decisions if d["factorize"] for n in d["layers"]}
        chosen = {n: chosen[n] for n in self.layers if n in chosen}  # model order
        params_before = count_parameters(model)
        replacements: dict[str, nn.Module] = {}
        optimizer_state: dict[nn.Parameter, dict[str, Any]] = {}
        no_decay: set[str] = set()
        delta = 0
        for name, rank in chosen.items():
            dense = model.get_submodule(name)
            layer = factorize_layer(dense, rank, self.config.extra_norm)
            _broadcast_tensors([layer.u_weight, layer.v_weight])
            replacements[name] = layer
            delta += layer.u_weight.numel() + layer.v_weight.numel() - dense.weight.numel()
            delta += sum(p.numel() for p in layer.norm.parameters()) if hasattr(layer, "norm") else 0
            optimizer_state.update(self._initial_state(ctx.optimizer, dense, layer))
            if self.config.frobenius_decay > 0:
                no_decay.update({f"{name}.u_weight", f"{name}.v_weight"})
        plan = {name: layer.to_spec() for name, layer in replacements.items()}
        self.switch = {"step": ctx.step, "epoch": float(ctx.epoch), "reason": reason, "ranks": chosen, "plan": plan,
                       "params_before": params_before, "params_after": params_before + delta}
        if plan:
            self._record_plan(model, plan)
        self.switch_seconds += time.perf_counter() - start
        logger.info("cuttlefish: switch at step %d (epoch %.2f, %s): E=%d, K=%s, R=%s; parameters %d -> %d",
                    ctx.step, ctx.epoch, reason, ctx.step, [d["stack"] for d in self.decisions if d["factorize"]],
                    chosen, params_before, params_before + delta)
        if not replacements:
            logger.info("cuttlefish: no stack is worth factorizing; training continues full rank")
            return None
        lr_scale = 1.0 if self.config.factorized_lr_decay is None else self.config.factorized_lr_decay
        return Restructure(replacements=replacements, optimizer_state=optimizer_state, no_weight_decay=no_decay,
                           lr_scale=lr_scale)

    def _initial_state(self, optimizer: torch.optim.Optimizer | None, dense: nn.Module,
                       layer: FactorizedLayer) -> dict[nn.Parameter, dict[str, Any]]:
        """Optimizer state for the new layer's parameters: the bias keeps its own (same object), the factors
        get the projected dense moments when the config asks for it."""
        if optimizer is None:
            return {}
        out: dict[nn.Parameter, dict[str, Any]] = {}
        bias = getattr(dense, "bias", None)
        if bias is not None and optimizer.state.get(bias):
            out[layer.bias] = {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[bias].items()}
        dense_state = optimizer.state.get(dense.weight)
        if self.config.project_optimizer_state and dense_state:
            u = layer.u_weight.detach().reshape(layer.u_weight.shape[0], layer.rank)
            v = layer.v_weight.detach().reshape(layer.rank, -1)
            projected = project_state(dense_state, dense, u, v)
            if projected is not None:
                for param, state in zip((layer.u_weight, layer.v_weight), projected, strict=True):
                    shaped = {k: t.reshape(param.shape) if torch.is_tensor(t) and t.dim() > 0 else t
                              for k, t in state.items()}
                    _broadcast_tensors([t for t in shaped.values() if torch.is_tensor(t) and t.dim() > 0])
                    out[param] = shaped
        return out

    def _record_plan(self, model: nn.Module, plan: dict[str, dict[str, Any]]) -> None:
        """Put ``plan`` into this config and into the config recorded on ``model`` (so ``save_pretrained`` writes
        it and a plain ``from_pretrained`` rebuilds the factorized layers)."""
        self.config.plan = {**self.config.plan, **copy.deepcopy(plan)}
        recorded = get_sparsity_config(model)
        if recorded is None:
            set_sparsity_config(model, self.config)
            return
        configs = recorded.configs
        target = next((c for c in configs if c is self.config), None)
        if target is None:
            settings = self.config.without_plan().to_dict()
            target = next((c for c in configs if c.method == self.config.method
                           and c.without_plan().to_dict() == settings), None)
        if target is None:
            raise ValueError("the model's recorded sparsity config has no Cuttlefish config matching this schedule's; "
                             "was the model's config replaced during training?")
        if target is not self.config:
            target.plan = {**target.plan, **copy.deepcopy(plan)}
        set_sparsity_config(model, recorded)
