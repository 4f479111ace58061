"""Greenformer glue: turn one dense layer into an LED / CED according to a ``GreenformerConfig``."""

from __future__ import annotations

import logging

from torch import nn

from ...dense import dense_kind, is_conv, weight_matrix
from ...registry import register_converter
from .config import GreenformerConfig
from .layers import CED, LED
from .solvers import factorize

logger = logging.getLogger("hf_sparse")


def is_eligible(module: nn.Module, config: GreenformerConfig) -> bool:
    kind = dense_kind(module)
    if kind is None:
        return False
    if is_conv(kind):
        return config.factorize_conv and module.groups == 1
    return True


def planned_rank(name: str, module: nn.Module, config: GreenformerConfig) -> int | None:
    """Rank this layer gets, or None (logged) when factorizing would not reduce its cost."""
    out_features, in_flat = weight_matrix(module).shape
    rank = config.resolve_rank(out_features, in_flat)
    r_max = out_features * in_flat / (out_features + in_flat)
    if rank >= r_max and config.skip_if_no_gain:
        logger.info("greenformer: %s stays dense: rank %d >= r_max %.1f of its %dx%d weight saves nothing",
                    name, rank, r_max, out_features, in_flat)
        return None
    return min(rank, out_features, in_flat)


@register_converter("greenformer", is_eligible)
def convert(name: str, module: nn.Module, config: GreenformerConfig) -> LED | CED | None:
    """LED / CED for ``module`` (Linear, Conv1D or ConvNd), or None if it stays dense."""
    rank = planned_rank(name, module, config)
    if rank is None:
        return None
    u, v = factorize(weight_matrix(module), rank, config.solver, config.iterations, config.svd_algorithm, config.seed)
    layer_cls = CED if is_conv(dense_kind(module)) else LED
    return layer_cls.from_factors(module, u, v)
