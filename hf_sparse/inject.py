"""Target selection, atomic module replacement and plan recording.

``sparsify(model, config)`` converts a loaded model in place; ``apply_plan(model, config)`` rebuilds the
empty compressed modules a saved plan describes (the reload path, usually on the meta device).
Both build every new module first and swap them in only when all succeeded, so a failure leaves the model
exactly as it was.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig

from .calibration import model_max_positions, prepare_batches
from .config import ComposedSparsityConfig, SparsityConfig, as_sparsity_config, pattern_matches
from .dense import dense_kind
from .layers import PlanError, SparseLayer
from .registry import CONVERTERS, ELIGIBILITY, FINALIZERS, LAYER_CLASSES, UNDO_FINALIZERS

logger = logging.getLogger("hf_sparse")

#: module-path components that mark task heads in HF models
HEAD_NAMES = frozenset({"lm_head", "classifier", "score", "qa_outputs", "cls", "pre_classifier",
                        "seq_relationship", "output_projection"})


# --------------------------------------------------------------------------------------------- targets
def _own_weight(module: nn.Module) -> torch.Tensor | None:
    """The module's registered ``weight`` parameter, never a computed one (hf-sparse layers expose a
    ``weight`` property that materializes the dense product)."""
    return module._parameters.get("weight")


def head_module_names(model: nn.Module) -> set[str]:
    """Names of output heads (tied or not) and classifier heads, which default selection leaves dense.

    A head is: the model's output embeddings, a layer whose weight is shared with an ``nn.Embedding``,
    anything outside ``model.base_model`` in a ``PreTrainedModel`` with a task head, or a module under a
    path component in :data:`HEAD_NAMES`.
    """
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    output = None
    if hasattr(model, "get_output_embeddings"):
        try:
            output = model.get_output_embeddings()
        except (NotImplementedError, AttributeError):
            output = None
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    has_head_outside_base = isinstance(base, nn.Module) and base is not model
    heads = set()
    for name, module in model.named_modules():
        if not name:
            continue
        weight = _own_weight(module)
        if (module is output or (weight is not None and id(weight) in embedding_weights)
                or (has_head_outside_base and name != prefix and not name.startswith(prefix + "."))
                or any(part in HEAD_NAMES for part in name.split("."))):
            heads.add(name)
    return heads


def is_tied_to_embedding(model: nn.Module, module: nn.Module) -> bool:
    weight = _own_weight(module)
    return weight is not None and any(m.weight is weight for m in model.modules() if isinstance(m, nn.Embedding))


def eligible_modules(model: nn.Module, config: SparsityConfig) -> dict[str, nn.Module]:
    """Every module ``config``'s method can convert, heads included (``select_targets`` filters them)."""
    is_eligible = ELIGIBILITY[config.method]
    return {name: m for name, m in model.named_modules() if name and is_eligible(m, config)}


def _format_names(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def select_targets(model: nn.Module, config: SparsityConfig) -> list[str]:
    """Names of the modules ``config`` converts, in model order.

    Raises ``ValueError`` when a ``target_modules`` entry matches no eligible module (listing the eligible
    names) or targets a head tied to the input embeddings.
    """
    eligible = eligible_modules(model, config)
    heads = head_module_names(model)
    excluded = config.modules_to_not_convert or []
    if config.target_modules is None:
        chosen = [n for n in eligible if n not in heads]
    else:
        chosen = []
        for pattern in config.target_modules:
            hits = [n for n in eligible if pattern_matches(pattern, n)]
            if not hits:
                others = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
                          if n and pattern_matches(pattern, n)]
                why = (f"it matches only {_format_names(others)}, which {config.method} cannot convert; "
                       if others else "")
                raise ValueError(
                    f"target_modules entry {pattern!r} matches no eligible module of {type(model).__name__}: {why}"
                    f"eligible modules are: {_format_names([n for n in eligible if n not in heads]) or 'none'}")
            for name in hits:
                if is_tied_to_embedding(model, eligible[name]):
                    raise ValueError(f"target_modules entry {pattern!r} selects {name!r}, whose weight is tied "
                                     "to the input embeddings; untie it or drop it from target_modules")
            chosen.extend(hits)
        chosen = [n for n in eligible if n in set(chosen)]  # model order, no duplicates
    return [n for n in chosen if not any(pattern_matches(p, n) for p in excluded)]


# --------------------------------------------------------------------------------------------- config on the model
def get_sparsity_config(model: nn.Module) -> SparsityConfig | None:
    """The hf-sparse config recorded on ``model`` (``model.config.quantization_config`` for HF models)."""
    config = getattr(model, "config", None)
    if isinstance(config, PreTrainedConfig):
        quant = getattr(config, "quantization_config", None)
        if isinstance(quant, SparsityConfig):
            return quant
        if isinstance(quant, dict) and quant.get("quant_method") == "hf_sparse":
            return SparsityConfig.from_dict(quant)
    found = getattr(model, "sparsity_config", None)
    return found if isinstance(found, SparsityConfig) else None


def _merge(model: nn.Module, existing: SparsityConfig | None, new: SparsityConfig) -> SparsityConfig:
    """``new`` added to the configs already recorded on ``model``. A recorded config whose plan does not
    match the model's layers (a config object shared with another model, say) is stale and dropped."""
    if existing is None:
        return new
    layers = sparse_layers(model)
    kept = [cfg for cfg in existing.configs if all(name in layers for name in cfg.plan)]
    if len(kept) < len(existing.configs):
        logger.warning("sparsify: dropping a recorded sparsity config whose plan names modules this model does "
                       "not have converted (was the model config shared with another model?)")
    return ComposedSparsityConfig(kept + new.configs) if kept else new


def set_sparsity_config(model: nn.Module, config: SparsityConfig | None) -> None:
    """Record ``config`` on ``model`` so ``save_pretrained`` writes it and reloads rebuild the model."""
    model_config = getattr(model, "config", None)
    if isinstance(model_config, PreTrainedConfig):
        if config is None:
            if hasattr(model_config, "quantization_config"):
                del model_config.quantization_config
        else:
            model_config.quantization_config = config
    if config is None:
        if "sparsity_config" in model.__dict__:
            del model.__dict__["sparsity_config"]
    else:
        model.__dict__["sparsity_config"] = config


# --------------------------------------------------------------------------------------------- replacement
def _swap(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    for name, module in replacements.items():
        model.set_submodule(name, module)


def sparsify(model: nn.Module, config: SparsityConfig | dict | list | str | os.PathLike,
             calibration_data: Iterable[Any] | None = None, tokenizer: Any = None,
             max_length: int = 512) -> nn.Module:
    """Compress ``model`` in place with ``config`` (one method config, a list of them, a dict or JSON) and
    return it. The config recorded on the model (``get_sparsity_config(model)``) carries the ``plan``.

    ``calibration_data`` (needed by data-aware configs such as ``GreenformerConfig(solver="svd-llm")``): an
    iterable of model-input dicts, or a list of strings together with ``tokenizer`` (truncated to
    ``max_length`` tokens). It is only read, never stored.

    Raises before modifying anything: ``ValueError`` for targets that match nothing, overlapping targets of
    several methods, or missing calibration data; any error while converting leaves the model as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(config, list) and all(isinstance(c, SparsityConfig) for c in config):
        config = ComposedSparsityConfig([c.without_plan() for c in config])
    else:
        config = as_sparsity_config(config).without_plan()

    targets: dict[str, str] = {}
    per_config: list[tuple[SparsityConfig, list[str]]] = []
    for cfg in config.configs:
        names = select_targets(model, cfg)
        for name in names:
            if name in targets:
                raise ValueError(f"module {name!r} is targeted by both {targets[name]} and {cfg.method}; "
                                 "give each method disjoint target_modules")
            targets[name] = cfg.method
        per_config.append((cfg, names))
    max_length = min(max_length, model_max_positions(model) or max_length)
    batches = prepare_batches(calibration_data, tokenizer, max_length) if config.needs_calibration else None

    replacements: dict[str, SparseLayer] = {}
    for cfg, names in per_config:
        built = CONVERTERS[cfg.method](model, names, cfg, batches if cfg.needs_calibration else None)
        for name in names:  # model order
            if name in built:
                replacements[name] = built[name]
                cfg.plan[name] = built[name].to_spec()
    if not replacements and not all(cfg.structure_set_in_training for cfg in config.configs):
        logger.warning("sparsify: no module of %s was converted (every target was skipped); the model is unchanged",
                       type(model).__name__)
    merged = _merge(model, get_sparsity_config(model), config)  # before the swap: judges the old layers
    _swap(model, replacements)
    _finalize(model, config)
    set_sparsity_config(model, merged)
    return model


def _finalize(model: nn.Module, config: SparsityConfig) -> None:
    for cfg in config.configs:
        if cfg.method in FINALIZERS:
            FINALIZERS[cfg.method](model, cfg)


def build_layer(name: str, spec: Any, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> SparseLayer:
    """Empty layer for one plan entry; ``PlanError`` (a ``ValueError``) if the entry is damaged or unknown."""
    if not isinstance(spec, dict):
        raise PlanError(f"plan entry for {name!r} must be a dict, got {type(spec).__name__}")
    cls_name = spec.get("class")
    if cls_name not in LAYER_CLASSES:
        raise PlanError(f"plan entry for {name!r} names layer class {cls_name!r}, which this hf-sparse does not "
                        f"know (known: {sorted(LAYER_CLASSES)}); upgrade hf-sparse or fix the plan")
    try:
        return LAYER_CLASSES[cls_name].from_spec(spec, device=device, dtype=dtype)
    except PlanError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise PlanError(f"plan entry for {name!r} is damaged: {err}") from err


def apply_plan(model: nn.Module, config: SparsityConfig, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every module named in ``config``'s plan by an empty layer of the planned structure.

    Used when loading a compressed checkpoint (the weights are loaded afterwards). Each planned module must
    exist and match the plan's shapes; otherwise ``PlanError`` and the model is untouched.
    """
    plan = config.plan
    if not plan and all(cfg.structure_set_in_training for cfg in config.configs):
        set_sparsity_config(model, config)  # saved before its training schedule changed anything
        return model
    if not plan:
        raise PlanError("the sparsity config carries an empty plan: nothing describes how this checkpoint was "
                        "compressed; re-save it with hf-sparse or load it without quantization_config")
    modules = dict(model.named_modules())
    replacements: dict[str, SparseLayer] = {}
    for name, spec in plan.items():
        if name not in modules:
            raise PlanError(f"plan names module {name!r}, which {type(model).__name__} does not have")
        original = modules[name]
        layer_device = device
        if layer_device is None:
            first = next(original.parameters(), None)
            layer_device = first.device if first is not None else None
        layer = build_layer(name, spec, device=layer_device, dtype=dtype)
        if dense_kind(original) is not None:
            _check_shapes(name, original, layer)
        replacements[name] = layer
    _swap(model, replacements)
    _finalize(model, config)
    set_sparsity_config(model, config)
    return model


def _check_shapes(name: str, original: nn.Module, layer: SparseLayer) -> None:
    from .dense import describe_dense

    want = describe_dense(original)
    have = layer.source
    for key in ("source", "in_features", "out_features"):
        if want[key] != have[key]:
            raise PlanError(f"plan entry for {name!r} says {key}={have[key]!r} but the model's module has "
                            f"{key}={want[key]!r}: the plan does not belong to this model")


@torch.no_grad()
def densify(model: nn.Module) -> nn.Module:
    """Turn every hf-sparse layer back into the dense module it replaced (exact same function), undo
    model-level changes (sparse attention goes back to ``sdpa``) and remove the recorded config. Returns
    ``model``. Input-gated Pixelfly layers have no single dense equivalent and raise ``ValueError``."""
    replacements = {name: m.to_dense_module() for name, m in model.named_modules() if isinstance(m, SparseLayer)}
    _swap(model, replacements)
    config = get_sparsity_config(model)
    for cfg in config.configs if config is not None else []:
        if cfg.method in UNDO_FINALIZERS:
            UNDO_FINALIZERS[cfg.method](model, cfg)
    set_sparsity_config(model, None)
    return model


def sparse_layers(model: nn.Module) -> dict[str, SparseLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseLayer)}
