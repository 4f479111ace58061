"""Helpers that read the dense layers hf-sparse can convert: ``nn.Linear``, transformers' GPT-2 style
``Conv1D`` (weight stored as ``(in, out)``) and ``nn.Conv1d/2d/3d``.

Every converter sees a dense layer through :func:`describe_dense` (a JSON-able description that goes into
the plan) and :func:`weight_matrix` (the weight as an ``(out, in_flat)`` matrix).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

CONV_TYPES: dict[type[nn.Module], int] = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def dense_kind(module: nn.Module) -> str | None:
    """``"Linear"``, ``"Conv1D"``, ``"Conv1d"``, ``"Conv2d"``, ``"Conv3d"``, or None for anything else.

    Exact type match on purpose: subclasses (``NonDynamicallyQuantizableLinear`` inside
    ``nn.MultiheadAttention``, PEFT-wrapped layers, ...) often read ``.weight`` from elsewhere and must
    not be swapped out.
    """
    kind = type(module)
    if kind is nn.Linear:
        return "Linear"
    if kind is Conv1D:
        return "Conv1D"
    if kind in CONV_TYPES:
        return kind.__name__
    return None


def is_conv(kind: str | None) -> bool:
    return kind in ("Conv1d", "Conv2d", "Conv3d")


def describe_dense(module: nn.Module) -> dict[str, Any]:
    """JSON-able description of a dense layer: kind, in/out features, bias and, for convs, geometry."""
    kind = dense_kind(module)
    if kind is None:
        raise TypeError(f"{type(module).__name__} is not a Linear, Conv1D or ConvNd layer")
    if kind == "Linear":
        return {"source": kind, "in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    if kind == "Conv1D":
        return {"source": kind, "in_features": module.nx, "out_features": module.nf, "bias": module.bias is not None}
    return {
        "source": kind,
        "in_features": module.in_channels,
        "out_features": module.out_channels,
        "bias": module.bias is not None,
        "kernel_size": list(module.kernel_size),
        "stride": list(module.stride),
        "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
        "dilation": list(module.dilation),
        "groups": module.groups,
        "padding_mode": module.padding_mode,
    }


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as an ``(out, in * prod(kernel))`` matrix (a view when possible; no copy of data)."""
    kind = dense_kind(module)
    if kind == "Linear":
        return module.weight
    if kind == "Conv1D":
        return module.weight.t()
    if is_conv(kind):
        return module.weight.reshape(module.weight.shape[0], -1)
    raise TypeError(f"{type(module).__name__} is not a Linear, Conv1D or ConvNd layer")


def dense_params(desc: dict[str, Any]) -> int:
    """Parameter count of the dense layer described by ``desc`` (weight + bias)."""
    kernel = math.prod(desc.get("kernel_size", [1]))
    groups = desc.get("groups", 1)
    bias = desc["out_features"] if desc["bias"] else 0
    return desc["out_features"] * (desc["in_features"] // groups) * kernel + bias


def dense_flops(desc: dict[str, Any]) -> int:
    """Multiply-add FLOPs (2 per MAC) per token / output position of the dense layer, bias excluded."""
    kernel = math.prod(desc.get("kernel_size", [1]))
    groups = desc.get("groups", 1)
    return 2 * desc["out_features"] * (desc["in_features"] // groups) * kernel
