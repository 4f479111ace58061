"""Pixelfly glue: plan each selected layer's butterfly + low-rank split and build its PixelflyLinear."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ...dense import dense_kind, is_conv, weight_matrix
from ...registry import register_converter
from .butterfly import plan_shape
from .config import PixelflyConfig
from .linear import PixelflyLinear

logger = logging.getLogger("hf_sparse")


def is_eligible(module: nn.Module, config: PixelflyConfig) -> bool:
    kind = dense_kind(module)
    return kind is not None and not is_conv(kind)


def resolve_init(model: nn.Module, config: PixelflyConfig) -> str:
    """``"project"`` or ``"random"`` for ``init="auto"``: a model built by ``from_config`` (no checkpoint
    name) is trained from scratch; anything else keeps what its weights learned."""
    if config.init != "auto":
        return config.init
    model_config = getattr(model, "config", None)
    if model_config is not None and hasattr(model_config, "_name_or_path"):
        return "project" if model_config._name_or_path else "random"
    return "project"


@register_converter("pixelfly", is_eligible)
def convert(model: nn.Module, names: list[str], config: PixelflyConfig,
            batches: list[dict[str, Any]] | None) -> dict[str, PixelflyLinear]:
    """A PixelflyLinear for each selected layer whose plan saves parameters (the others stay dense, logged)."""
    init = resolve_init(model, config)
    layers = {}
    for name in names:
        module = model.get_submodule(name)
        out_features, in_features = weight_matrix(module).shape
        shape = plan_shape(out_features, in_features, config.density, config.block_size, config.lowrank_fraction,
                           config.n_factors, config.butterfly_size)
        if shape.density >= 1:
            logger.info("pixelfly: %s stays dense: its %dx%d weight is too small for block_size %d at density %.3f",
                        name, out_features, in_features, config.block_size, config.density)
            continue
        if init == "project":
            layers[name] = PixelflyLinear.from_dense(module, shape, config.gating)
        else:
            weight = weight_matrix(module)
            layer = PixelflyLinear(shape, module.bias is not None, config.gating, dense_kind(module),
                                   device=weight.device, dtype=weight.dtype)
            if module.bias is not None:
                layer.bias.data.copy_(module.bias.detach())
            layers[name] = layer.train(module.training)
    return layers
