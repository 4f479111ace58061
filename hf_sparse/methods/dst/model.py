"""DST-EE glue: split the global sparsity over the selected layers and build their masked replacements."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from ...dense import dense_kind, is_conv
from ...registry import register_converter, register_finalizer
from .config import DSTEEConfig
from .distribution import active_counts
from .masked import MaskedConv, MaskedLayer, MaskedLinear

logger = logging.getLogger("hf_sparse")

#: the masked layers' buffers that DDP must not broadcast on every forward (the schedule keeps them identical)
_DDP_IGNORED = ("mask", "active_count")


def is_eligible(module: nn.Module, config: DSTEEConfig) -> bool:
    return dense_kind(module) is not None


def _candidates(names: list[str], config: DSTEEConfig) -> list[str]:
    kept = list(names)
    if config.dense_first_layer and kept:
        logger.info("dst-ee: %s stays dense (dense_first_layer=True)", kept[0])
        kept = kept[1:]
    if config.dense_last_layer and kept:
        logger.info("dst-ee: %s stays dense (dense_last_layer=True)", kept[-1])
        kept = kept[:-1]
    return kept


@register_converter("dst-ee", is_eligible)
def convert(model: nn.Module, names: list[str], config: DSTEEConfig,
            batches: list[dict[str, Any]] | None) -> dict[str, MaskedLayer]:
    """A masked layer per selected module, with per-layer active counts from ``config.distribution`` meeting
    ``config.sparsity`` over them; layers the ERK capacity check makes dense stay as they are (logged).
    Records ``config.distribution_report``."""
    names = _candidates(names, config)
    modules = {n: model.get_submodule(n) for n in names}
    shapes = [tuple(modules[n].weight.shape) for n in names]
    counts = active_counts(shapes, config.sparsity, config.distribution) if names else []
    generator = torch.Generator().manual_seed(config.seed)
    layers: dict[str, MaskedLayer] = {}
    report: dict[str, float] = {}
    for name, shape, active in zip(names, shapes, counts, strict=True):
        module, numel = modules[name], math.prod(shape)
        report[name] = active / numel
        if active >= numel:
            logger.info("dst-ee: %s stays dense (the ERK density would exceed 1)", name)
            continue
        cls = MaskedConv if is_conv(dense_kind(module)) else MaskedLinear
        layers[name] = cls.from_dense(module, active, config.mask_init, generator)
    total = sum(math.prod(s) for s in shapes)
    config.distribution_report = {
        "distribution": config.distribution, "target_sparsity": config.sparsity,
        "achieved_sparsity": 1 - sum(counts) / total if total else 0.0,
        "dense_layers": [n for n, s, a in zip(names, shapes, counts, strict=True) if a >= math.prod(s)],
        "layer_density": report,
    }
    return layers


def _ddp_ignored_names(config: DSTEEConfig) -> list[str]:
    return [f"{name}.{buffer}" for name in config.plan for buffer in _DDP_IGNORED]


def _restore_ddp_buffers(model: nn.Module, config: DSTEEConfig) -> None:
    ignored = set(_ddp_ignored_names(config))
    current = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    model._ddp_params_and_buffers_to_ignore = [n for n in current if n not in ignored]


@register_finalizer("dst-ee", undo=_restore_ddp_buffers)
def finalize(model: nn.Module, config: DSTEEConfig) -> None:
    """Keep DDP from broadcasting the masks and counts from rank 0 on every forward (3 bytes per weight each
    step): the schedule makes them identical on all ranks (broadcast once at train begin, then identical
    all-reduced scores)."""
    current = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    model._ddp_params_and_buffers_to_ignore = current + [n for n in _ddp_ignored_names(config) if n not in current]
