"""Pixelfly glue: plan each selected layer's butterfly + low-rank split and build its PixelflyLinear."""

from __future__ import annotations

import logging
import math
from typing import Any

from torch import nn
from transformers import PreTrainedModel

from ...dense import dense_kind, is_conv, weight_matrix
from ...registry import register_converter, register_finalizer
from . import attention as butterfly_attention
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


def attention_factors(model: nn.Module, config: PixelflyConfig) -> int:
    """``attention_n_factors``, or the number giving ``density`` at the model's maximum sequence length."""
    if config.attention_n_factors is not None:
        return config.attention_n_factors
    model_config = model.config
    max_len = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    image, patch = getattr(model_config, "image_size", None), getattr(model_config, "patch_size", None)
    if not max_len and isinstance(image, int) and isinstance(patch, int):
        max_len = (image // patch) ** 2 + 1  # ViT-style: patches + [CLS]
    if not max_len:
        raise ValueError("attention_n_factors=None needs the model config's max_position_embeddings (or n_positions) "
                         "to pick the attention density; set attention_n_factors explicitly")
    blocks = math.ceil(max_len / config.attention_block_size)
    return max(0, min(round(config.density * blocks) - 1, butterfly_attention.grid_factors(blocks)))


def check_attention_support(model: nn.Module) -> None:
    """``ValueError`` unless ``model`` is a transformers model whose attention goes through the interface."""
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if not isinstance(model, PreTrainedModel) or can_set is None or not can_set():
        raise ValueError(f"PixelflyConfig(attention=True) needs a transformers model that uses the attention "
                         f"interface (GPT-2, LLaMA-family, BERT, ViT, ...); {type(model).__name__} does not")


def restore_dense_attention(model: nn.Module, config: PixelflyConfig) -> None:
    """Undo :func:`finalize`: back to ``sdpa`` attention."""
    if config.attention and isinstance(model, PreTrainedModel):
        model.set_attn_implementation("sdpa")


@register_finalizer("pixelfly", undo=restore_dense_attention)
def finalize(model: nn.Module, config: PixelflyConfig) -> None:
    """Switch the model to butterfly attention when the config asks for it (also on reload)."""
    if config.attention:
        model.set_attn_implementation(butterfly_attention.register(config.attention_block_size,
                                                                   config.attention_n_factors,
                                                                   config.attention_global_blocks))


@register_converter("pixelfly", is_eligible)
def convert(model: nn.Module, names: list[str], config: PixelflyConfig,
            batches: list[dict[str, Any]] | None) -> dict[str, PixelflyLinear]:
    """A PixelflyLinear for each selected layer whose plan saves parameters (the others stay dense, logged).
    With ``attention=True`` it checks the model supports it and records the attention layout's factors."""
    if config.attention:
        check_attention_support(model)
        config.attention_n_factors = attention_factors(model, config)
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
