"""Base class of every layer hf-sparse puts into a model, and the plan-spec helpers they share.

A *spec* is the JSON-able dict a plan stores per module: ``{"class", "method", "source", "in_features",
"out_features", "bias", <conv geometry>, <method fields>}``. ``Layer.from_spec(spec)`` rebuilds an
empty layer of exactly that structure (used on reload, on the meta device), ``layer.to_spec()`` writes it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .dense import CONV_TYPES, dense_flops, dense_params


class PlanError(ValueError):
    """A plan entry is missing, damaged or describes a layer this version cannot build."""


def require(spec: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``spec[key]``, checked to be of ``kind``; a ``PlanError`` naming the key otherwise."""
    if key not in spec:
        raise PlanError(f"plan entry for {spec.get('class', '?')} lacks the field {key!r}: {spec}")
    value = spec[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    bool_as_number = isinstance(value, bool) and bool not in kinds and (int in kinds or float in kinds)
    if not isinstance(value, kinds) or bool_as_number:
        raise PlanError(f"plan field {key!r} must be {kind}, got {value!r}")
    return value


def require_positive_int(spec: dict[str, Any], key: str) -> int:
    value = require(spec, key, int)
    if value < 1:
        raise PlanError(f"plan field {key!r} must be a positive integer, got {value!r}")
    return value


#: plan fields describing the dense layer a sparse layer replaced (``describe_dense``), and the extra ones of convs
SOURCE_KEYS = ("source", "in_features", "out_features", "bias")
CONV_KEYS = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


def source_from_spec(spec: dict[str, Any], conv: bool) -> dict[str, Any]:
    """The replaced layer's description from a plan entry, every field type-checked (``PlanError`` if not)."""
    require(spec, "source", str)
    require_positive_int(spec, "in_features")
    require_positive_int(spec, "out_features")
    require(spec, "bias", bool)
    if conv:
        for key in ("kernel_size", "stride", "dilation"):
            require(spec, key, list)
        require(spec, "padding", (list, str))
        require_positive_int(spec, "groups")
        require(spec, "padding_mode", str)
    return {key: spec[key] for key in SOURCE_KEYS + (CONV_KEYS if conv else ())}


class SparseLayer(nn.Module):
    """A compressed replacement for one dense layer (Linear, GPT-2 ``Conv1D`` or ConvNd).

    Subclasses implement ``from_spec``, ``to_spec``, ``to_dense`` and ``params_and_flops``; ``source``
    (``describe_dense`` of the layer it replaced) is kept so the layer can be turned back.
    """

    method: ClassVar[str] = ""
    source: dict[str, Any]

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> SparseLayer:
        raise NotImplementedError

    def to_spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """Equivalent dense weight as an ``(out, in * prod(kernel))`` matrix."""
        raise NotImplementedError

    @classmethod
    def params_and_flops(cls, spec: dict[str, Any]) -> tuple[int, int]:
        """(parameter count, FLOPs per token or output position) of the layer ``spec`` describes."""
        raise NotImplementedError

    @classmethod
    def describe(cls, spec: dict[str, Any]) -> str:
        """Short text for summaries: ``"rank 32"``, ``"density 0.12"``, ..."""
        raise NotImplementedError

    @staticmethod
    def dense_cost(spec: dict[str, Any]) -> tuple[int, int]:
        return dense_params(spec), dense_flops(spec)

    def to_dense(self) -> torch.Tensor:
        """Exact equivalent dense weight in the layout of the layer it replaced.

        Shapes: ``(out, in)`` for Linear, ``(in, out)`` for GPT-2 ``Conv1D``, ``(out, in, *kernel)`` for ConvNd.
        """
        matrix = self.dense_weight()
        kind = self.source["source"]
        if kind == "Conv1D":
            return matrix.t().contiguous()
        if kind in ("Conv1d", "Conv2d", "Conv3d"):
            return matrix.reshape(self.source["out_features"], self.source["in_features"], *self.source["kernel_size"])
        return matrix

    @property
    def weight(self) -> torch.Tensor:
        """The equivalent dense weight (``to_dense()``), computed on each access.

        For code that inspects ``module.weight`` (its dtype, device or shape, as some HF models and
        ``_init_weights`` functions do). Writing into it changes nothing: train the layer's own parameters.
        """
        return self.to_dense()

    def bias_or_none(self) -> torch.Tensor | None:
        return getattr(self, "bias", None)

    @torch.no_grad()
    def to_dense_module(self) -> nn.Module:
        """A dense module of the original type computing the same function (for ``densify``)."""
        src = self.source
        weight = self.to_dense()
        kind = src["source"]
        factory = {"device": weight.device, "dtype": weight.dtype}
        if kind == "Linear":
            dense = nn.Linear(src["in_features"], src["out_features"], bias=src["bias"], **factory)
        elif kind == "Conv1D":
            dense = Conv1D(src["out_features"], src["in_features"]).to(**factory)
        else:
            conv_cls = {cls.__name__: cls for cls in CONV_TYPES}[kind]
            padding = src["padding"] if isinstance(src["padding"], str) else tuple(src["padding"])
            dense = conv_cls(src["in_features"], src["out_features"], tuple(src["kernel_size"]),
                             stride=tuple(src["stride"]), padding=padding, dilation=tuple(src["dilation"]),
                             groups=src["groups"], bias=src["bias"], padding_mode=src["padding_mode"], **factory)
        dense.weight.copy_(weight)
        bias = self.bias_or_none()
        if bias is not None:
            dense.bias.copy_(bias)
        return dense.train(self.training)
