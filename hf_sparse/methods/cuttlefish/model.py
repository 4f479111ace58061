"""Cuttlefish glue: the converter (which records the config and builds nothing: the structure is decided
during training) and the builders of the factorized layers used at the switch and when profiling."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...dense import dense_kind, describe_dense, is_conv, weight_matrix
from ...layers import SparseLayer
from ...registry import register_converter
from ..greenformer.layers import CED, LED, FactorizedLayer
from ..greenformer.solvers import svd_factors
from .config import CuttlefishConfig
from .layers import NormCED, NormLED


def is_eligible(module: nn.Module, config: CuttlefishConfig) -> bool:
    """Linear, GPT-2 ``Conv1D`` and ConvNd with ``groups == 1``."""
    kind = dense_kind(module)
    if kind is None:
        return False
    return not is_conv(kind) or module.groups == 1


@register_converter("cuttlefish", is_eligible)
def convert(model: nn.Module, names: list[str], config: CuttlefishConfig,
            batches: list[dict[str, Any]] | None) -> dict[str, SparseLayer]:
    """Nothing to build: the model trains full rank until ``SparseTrainer``'s Cuttlefish schedule switches.
    ``sparsify`` has already validated ``names`` (``select_targets``) and records the config."""
    return {}


def factorized_class(module: nn.Module, extra_norm: bool) -> type[FactorizedLayer]:
    """LED / CED (or their normalized variants) for a dense layer."""
    conv = is_conv(dense_kind(module))
    if extra_norm:
        return NormCED if conv else NormLED
    return CED if conv else LED


def empty_factorized(module: nn.Module, rank: int, extra_norm: bool, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> FactorizedLayer:
    """A freshly initialized factorized layer of ``rank`` with ``module``'s shapes (for profiling)."""
    desc = describe_dense(module)
    cls = factorized_class(module, extra_norm)
    if is_conv(desc["source"]):
        return cls(desc, rank, device=device, dtype=dtype)
    return cls(desc["in_features"], desc["out_features"], rank, desc["bias"], desc["source"], device=device,
               dtype=dtype)


@torch.no_grad()
def factorize_layer(module: nn.Module, rank: int, extra_norm: bool) -> FactorizedLayer:
    """The truncated SVD of ``module``'s weight at ``rank`` as a factorized layer: ``U_r sqrt(S_r)`` and
    ``sqrt(S_r) V_r^T``, on the weight's device and dtype. The dense bias *parameter* is reused (the same
    object), so its optimizer state carries over unchanged."""
    u, v = svd_factors(weight_matrix(module), rank)
    layer = factorized_class(module, extra_norm).from_factors(module, u, v)
    if module.bias is not None:
        layer.bias = module.bias
    return layer
